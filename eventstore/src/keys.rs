//! The secret key store: envelope encryption of secret values.
//!
//! Each secret has its own 256-bit data key. Values are sealed with
//! AES-256-GCM under that key; the key itself is stored wrapped (AES-256-GCM
//! again) by the master key, in the `secret_keys` table, outside the event
//! log. Deleting the row destroys the key, and with it every value of that
//! secret ever recorded in the log, which stays immutable (crypto-shredding).
//!
//! Both encryptions bind the secret's id as associated data, so a sealed value
//! or a wrapped key copied to another secret does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use toolhub_domain::secret::SealedValue;
use toolhub_domain::{SecretId, TenantId};
use zeroize::{Zeroize, Zeroizing};

use crate::bus::Companion;
use crate::error::StoreError;
use crate::sql::{exec, fetch};
use crate::store::Db;

/// The key that wraps every data key. Wiped from memory when dropped.
#[derive(Clone)]
pub struct MasterKey {
    /// The key bytes, wiped when dropped.
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

/// A master key that is not 32 bytes of standard base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the master key must be 32 bytes, base64-encoded (44 characters)")]
pub struct InvalidMasterKey;

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self { key }
    }

    /// Parses a base64-encoded 32-byte key (as in `TOOLHUB_MASTER_KEY`).
    pub fn from_base64(encoded: &str) -> Result<Self, InvalidMasterKey> {
        let mut bytes = Zeroizing::new(B64.decode(encoded.trim()).map_err(|_| InvalidMasterKey)?);
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(InvalidMasterKey);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(Self { key })
    }

    /// The key in base64, for writing a generated key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.key.as_ref()))
    }

    /// A short, non-secret identifier of the key (the first 8 bytes of its
    /// SHA-256, in hex), recorded with each wrapped data key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.key.as_ref());
        hex::encode(&digest[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_ref()))
    }
}

/// Why a value could not be sealed or unsealed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The secret has no data key: it never existed, or it was deleted and
    /// its key destroyed.
    #[error("the secret's key does not exist or was destroyed")]
    NoKey,
    /// The data key belongs to another tenant.
    #[error("the secret's key belongs to another tenant")]
    WrongTenant,
    /// The data key was wrapped by another master key.
    #[error("the secret's key was wrapped by another master key")]
    WrongMasterKey,
    /// Decryption failed: the stored data was altered or does not belong to
    /// this secret. Deliberately says nothing more.
    #[error("the sealed value could not be opened")]
    Crypto,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for KeyError {
    fn from(value: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(value))
    }
}

/// A value sealed directly under the master key (AES-256-GCM), bound to the
/// context it was sealed for: what [`KeyStore::seal_bound`] returns and
/// [`KeyStore::open_bound`] takes. Holds no plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct BoundSeal {
    /// The fingerprint of the master key that sealed it.
    pub master_key: String,
    /// The 12-byte nonce.
    pub nonce: Vec<u8>,
    /// The ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for BoundSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BoundSeal({}, {} bytes)",
            self.master_key,
            self.ciphertext.len()
        )
    }
}

/// Seals and unseals secret values. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    /// Where the wrapped data keys live (`secret_keys`).
    db: Db,
    /// Wraps and unwraps every data key.
    master: MasterKey,
}

fn data_key_aad(secret: SecretId) -> Vec<u8> {
    format!("toolhub:data-key:{secret}").into_bytes()
}

fn value_aad(secret: SecretId) -> Vec<u8> {
    format!("toolhub:secret-value:{secret}").into_bytes()
}

/// Seals `plaintext` under a secret's data key.
fn seal_under(key: &[u8], secret: SecretId, plaintext: &[u8]) -> Result<SealedValue, KeyError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let nonce = random_nonce();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &value_aad(secret),
            },
        )
        .map_err(|_| KeyError::Crypto)?;
    Ok(SealedValue::new(B64.encode(nonce), B64.encode(ciphertext)))
}

/// A new secret's data key, not stored yet: see [`KeyStore::new_key`].
pub struct NewKey {
    /// The secret it is for.
    secret: SecretId,
    /// The key bytes, wiped when dropped.
    key: Zeroizing<[u8; 32]>,
    /// The write that stores it, wrapped.
    companion: Companion,
}

impl NewKey {
    /// The write that stores the wrapped key: pass it to
    /// [`CommandBus::execute_with`](crate::CommandBus::execute_with) with
    /// the command that creates the secret.
    pub fn companion(&self) -> &Companion {
        &self.companion
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey({})", self.secret)
    }
}

fn random_nonce() -> [u8; 12] {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

impl KeyStore {
    /// A key store over `db`, wrapping data keys with `master`.
    pub fn new(db: Db, master: MasterKey) -> Self {
        Self { db, master }
    }

    /// A new secret's data key, made in memory and wrapped by the master
    /// key. Its value is sealed under it with [`KeyStore::seal_new`] before
    /// anything is stored, and the key is stored by [`NewKey::companion`],
    /// the write that commits with the secret's creation or not at all: a
    /// created secret always has its key, and a failed creation leaves none.
    pub fn new_key(&self, tenant: &TenantId, secret: SecretId) -> Result<NewKey, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let nonce = random_nonce();
        let wrapped = self
            .master
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.as_ref(),
                    aad: &data_key_aad(secret),
                },
            )
            .map_err(|_| KeyError::Crypto)?;
        // A row already there can only be an orphan (a key stored by a
        // creation that never committed, in versions that stored keys apart
        // from the creation): the creation commits only while the secret has
        // no event, so replacing it takes nobody's key.
        let companion = Companion {
            sql: "INSERT INTO secret_keys (secret_id, tenant, master_key, nonce, wrapped_key) \
                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (secret_id) DO UPDATE SET \
                  tenant = excluded.tenant, master_key = excluded.master_key, \
                  nonce = excluded.nonce, wrapped_key = excluded.wrapped_key"
                .into(),
            args: vec![
                secret.to_string().into(),
                tenant.as_str().into(),
                self.master.fingerprint().into(),
                nonce.to_vec().into(),
                wrapped.into(),
            ],
        };
        Ok(NewKey {
            secret,
            key,
            companion,
        })
    }

    /// Seals `plaintext` under a new secret's key, before the key is stored.
    pub fn seal_new(&self, key: &NewKey, plaintext: &[u8]) -> Result<SealedValue, KeyError> {
        seal_under(key.key.as_ref(), key.secret, plaintext)
    }

    /// The write that destroys the secret's data key, to commit with the
    /// secret's deletion: the deletion is recorded exactly when the key is
    /// gone.
    pub fn destroy_companion(secret: SecretId) -> Companion {
        Companion {
            sql: "DELETE FROM secret_keys WHERE secret_id = $1".into(),
            args: vec![secret.to_string().into()],
        }
    }

    /// Destroys what no key may outlive, for logs written before keys were
    /// stored and destroyed in the same commit as their secret's creation
    /// and deletion (a process that died between the two writes): the key
    /// of every deleted secret, and keys without any secret event that are
    /// older than `orphan_age` (a creation that never committed). Run at
    /// start; returns how many keys were destroyed.
    pub async fn sweep(&self, orphan_age: std::time::Duration) -> Result<u64, KeyError> {
        let deleted = exec(
            &self.db,
            "DELETE FROM secret_keys WHERE secret_id IN (SELECT aggregate_id FROM events \
             WHERE aggregate_type = 'secret' AND event_type = 'SecretDeleted')",
            &[],
        )
        .await?;
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(orphan_age).unwrap_or(chrono::Duration::MAX);
        let orphans = exec(
            &self.db,
            "DELETE FROM secret_keys WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM events \
             WHERE aggregate_type = 'secret' AND aggregate_id = secret_keys.secret_id)",
            &[cutoff.into()],
        )
        .await?;
        Ok(deleted + orphans)
    }

    async fn data_key(
        &self,
        tenant: &TenantId,
        secret: SecretId,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let rows = fetch(
            &self.db,
            "SELECT tenant, master_key, nonce, wrapped_key FROM secret_keys WHERE secret_id = $1",
            &[secret.to_string().into()],
        )
        .await?;
        let row = rows
            .first()
            .map(|r| -> Result<_, StoreError> {
                Ok((
                    r.text("tenant")?,
                    r.text("master_key")?,
                    r.bytes("nonce")?,
                    r.bytes("wrapped_key")?,
                ))
            })
            .transpose()?;
        let (owner, fingerprint, nonce, wrapped) = row.ok_or(KeyError::NoKey)?;
        if owner != tenant.as_str() {
            return Err(KeyError::WrongTenant);
        }
        if fingerprint != self.master.fingerprint() {
            return Err(KeyError::WrongMasterKey);
        }
        if nonce.len() != 12 {
            return Err(KeyError::Crypto);
        }
        let key = self
            .master
            .cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &wrapped,
                    aad: &data_key_aad(secret),
                },
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(Zeroizing::new(key))
    }

    /// Seals `plaintext` under the secret's data key.
    pub async fn seal(
        &self,
        tenant: &TenantId,
        secret: SecretId,
        plaintext: &[u8],
    ) -> Result<SealedValue, KeyError> {
        let key = self.data_key(tenant, secret).await?;
        seal_under(&key, secret, plaintext)
    }

    /// Opens a sealed value of the secret. Only the engine calls this, at the
    /// moment a value is used.
    pub async fn unseal(
        &self,
        tenant: &TenantId,
        secret: SecretId,
        sealed: &SealedValue,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = self.data_key(tenant, secret).await?;
        let nonce = B64.decode(sealed.nonce()).map_err(|_| KeyError::Crypto)?;
        let ciphertext = B64
            .decode(sealed.ciphertext())
            .map_err(|_| KeyError::Crypto)?;
        if nonce.len() != 12 {
            return Err(KeyError::Crypto);
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &value_aad(secret),
                },
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(Zeroizing::new(plaintext))
    }

    /// Seals a small value that is not a [`Secret`](toolhub_domain::secret::Secret)'s
    /// (a webhook's signing secret) directly under the master key, bound to
    /// `context` (associated data): it opens only for the same context.
    /// Destroying such a value means deleting where it is stored.
    pub fn seal_bound(&self, context: &str, plaintext: &[u8]) -> Result<BoundSeal, KeyError> {
        let nonce = random_nonce();
        let ciphertext = self
            .master
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: format!("toolhub:bound:{context}").as_bytes(),
                },
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(BoundSeal {
            master_key: self.master.fingerprint(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens what [`KeyStore::seal_bound`] sealed for `context`.
    pub fn open_bound(
        &self,
        context: &str,
        sealed: &BoundSeal,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.master_key != self.master.fingerprint() {
            return Err(KeyError::WrongMasterKey);
        }
        if sealed.nonce.len() != 12 {
            return Err(KeyError::Crypto);
        }
        let plaintext = self
            .master
            .cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: format!("toolhub:bound:{context}").as_bytes(),
                },
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(Zeroizing::new(plaintext))
    }

    /// Destroys the secret's data key. Every value sealed under it becomes
    /// unrecoverable. Returns whether a key was there.
    pub async fn destroy(&self, secret: SecretId) -> Result<bool, KeyError> {
        let deleted = exec(
            &self.db,
            "DELETE FROM secret_keys WHERE secret_id = $1",
            &[secret.to_string().into()],
        )
        .await?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(master: MasterKey) -> KeyStore {
        // Bound seals never touch the database; the pool is never used.
        let db = Db::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .connect_lazy("sqlite::memory:")
                .expect("a lazy pool"),
        );
        KeyStore::new(db, master)
    }

    #[tokio::test]
    async fn a_bound_seal_opens_only_for_its_context_and_master_key() {
        let keys = store(MasterKey::generate());
        let sealed = keys.seal_bound("webhook:a:1", b"whsec_x").expect("seals");
        assert!(!sealed
            .ciphertext
            .windows(b"whsec_x".len())
            .any(|w| w == b"whsec_x"));
        assert_eq!(
            keys.open_bound("webhook:a:1", &sealed)
                .expect("opens")
                .as_slice(),
            b"whsec_x"
        );
        assert!(matches!(
            keys.open_bound("webhook:a:2", &sealed),
            Err(KeyError::Crypto)
        ));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open_bound("webhook:a:1", &altered),
            Err(KeyError::Crypto)
        ));
        let other = store(MasterKey::generate());
        assert!(matches!(
            other.open_bound("webhook:a:1", &sealed),
            Err(KeyError::WrongMasterKey)
        ));
        assert!(!format!("{sealed:?}").contains("whsec"));
    }
}
