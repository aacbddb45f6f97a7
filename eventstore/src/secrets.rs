//! Secret commands that involve key material: creating, rotating and
//! deleting a secret seal or destroy keys around the command itself, so that
//! the plaintext never reaches the command bus, the aggregate or the log.

use toolhub_domain::secret::{Secret, SecretCommand, SecretError};
use toolhub_domain::{AggregateRoot, SecretId};
use zeroize::Zeroizing;

use crate::bus::{CommandBus, Committed};
use crate::error::CommandError;
use crate::keys::{KeyError, KeyStore};
use crate::metadata::CommandContext;

/// What went wrong with a secret command.
#[derive(Debug, thiserror::Error)]
pub enum SecretCommandError {
    /// The command itself failed (rejected, not found, conflict, storage).
    #[error(transparent)]
    Command(#[from] CommandError<SecretError>),
    /// The key store failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Secret commands with their key handling. Cheap to share behind an `Arc`.
pub struct SecretVault {
    /// The secret commands.
    bus: CommandBus<Secret>,
    /// Seals values before a command exists, destroys keys after a deletion.
    keys: KeyStore,
}

impl SecretVault {
    /// A vault over a secret command bus and a key store on the same database.
    pub fn new(bus: CommandBus<Secret>, keys: KeyStore) -> Self {
        Self { bus, keys }
    }

    /// The command bus, for commands that carry no value (`Describe`).
    pub fn bus(&self) -> &CommandBus<Secret> {
        &self.bus
    }

    /// The key store (the engine unseals through it).
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Creates a secret: a new data key made in memory, the value sealed
    /// under it, then the `Create` command, which stores the wrapped key in
    /// its own commit. A secret is recorded exactly when its key is stored,
    /// so no failure, not even one whose commit is uncertain, can leave a
    /// created secret without its key or a key without its secret.
    pub async fn create(
        &self,
        ctx: &CommandContext,
        id: SecretId,
        name: String,
        description: String,
        value: Zeroizing<String>,
    ) -> Result<Committed, SecretCommandError> {
        let key = self.keys.new_key(&ctx.tenant, id)?;
        let sealed = self.keys.seal_new(&key, value.as_bytes())?;
        let command = create_command(ctx, name, description, sealed);
        Ok(self
            .bus
            .execute_with(&id.to_string(), command, ctx, key.companion())
            .await?)
    }

    /// Rotates a secret's value: the new value is sealed under the secret's
    /// data key, then recorded.
    pub async fn rotate(
        &self,
        ctx: &CommandContext,
        id: SecretId,
        value: Zeroizing<String>,
        expected_version: Option<u64>,
    ) -> Result<Committed, SecretCommandError> {
        let sealed = match self.keys.seal(&ctx.tenant, id, value.as_bytes()).await {
            Ok(sealed) => sealed,
            // Another tenant's secret, or none at all: both are "not found",
            // and a destroyed key means the secret was deleted, which the
            // aggregate reports precisely.
            Err(KeyError::WrongTenant) => return Err(CommandError::NotFound.into()),
            Err(KeyError::NoKey) => return Err(self.missing_key(ctx, id).await.into()),
            Err(error) => return Err(error.into()),
        };
        Ok(self
            .bus
            .execute_expecting(
                &id.to_string(),
                SecretCommand::Rotate { value: sealed },
                ctx,
                expected_version,
            )
            .await?)
    }

    /// Explains why a secret has no key: it never existed (or is another
    /// tenant's), or it was deleted.
    async fn missing_key(&self, ctx: &CommandContext, id: SecretId) -> CommandError<SecretError> {
        match self.bus.load(&id.to_string()).await {
            Err(error) => CommandError::Store(error),
            Ok((state, _)) => match state.tenant() {
                None => CommandError::Domain(SecretError::NotFound),
                Some(owner) if owner != &ctx.tenant => CommandError::NotFound,
                Some(_) => CommandError::Domain(SecretError::Deleted),
            },
        }
    }

    /// Deletes a secret: the deletion is recorded in the same commit that
    /// destroys its data key, so a recorded deletion always means the key
    /// is gone, whatever happens to the process.
    pub async fn delete(
        &self,
        ctx: &CommandContext,
        id: SecretId,
        expected_version: Option<u64>,
    ) -> Result<Committed, SecretCommandError> {
        Ok(self
            .bus
            .execute_expecting_with(
                &id.to_string(),
                SecretCommand::Delete,
                ctx,
                expected_version,
                &KeyStore::destroy_companion(id),
            )
            .await?)
    }
}

fn create_command(
    ctx: &CommandContext,
    name: String,
    description: String,
    value: toolhub_domain::secret::SealedValue,
) -> SecretCommand {
    SecretCommand::Create {
        tenant: ctx.tenant.clone(),
        name,
        description,
        value,
    }
}
