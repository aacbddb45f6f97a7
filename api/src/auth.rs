//! Authentication (JWT) and the caller it yields.
//!
//! A token is accepted only with a valid signature by the configured key and
//! algorithm (HS256, RS256 or ES256 — never `none`), an `exp` in the future,
//! an `nbf` (when present) in the past, both give or take the configured
//! leeway, and the configured `iss` and `aud` when they are set (`aud` may be
//! one string or an array that contains the configured one). Its `sub` is the
//! actor recorded with every event, its `org` the tenant, its `roles` what the
//! caller may do. Tokens are never logged; a rejection says why in general
//! terms only.
//!
//! Machines present an API key (`Bearer thk_…`) instead: it is hashed and
//! looked up, and it yields a caller whose `sub` is `apikey:<id>`, in the
//! key's tenant, with the key's role, until the key expires or is revoked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use toolhub_domain::{Role, TenantId};

use crate::config::{JwtConfig, JwtKey};
use crate::error::ApiError;
use toolhub_eventstore::api_keys::{key_hash, looks_like_key, ApiKeyRecord};
use toolhub_eventstore::ApiKeys;

/// The claims Toolhub reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The caller: recorded as the actor of every event.
    pub sub: String,
    /// The caller's organisation: the tenant.
    pub org: String,
    /// The caller's roles (`viewer`, `editor`, `admin`); unknown names are
    /// ignored.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch. Required.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the epoch: the token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The issuer, checked when `TOOLHUB_JWT_ISSUER` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience, checked when `TOOLHUB_JWT_AUDIENCE` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A token's `aud`: RFC 7519 allows one string or an array of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several; the token is for each of them.
    Many(Vec<String>),
}

/// Who is calling, once the token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The JWT `sub`.
    pub sub: String,
    /// The tenant (JWT `org`).
    pub tenant: TenantId,
    /// The roles named in the token, known ones only.
    pub roles: Vec<Role>,
    /// When the token stops being accepted (its `exp` plus the leeway),
    /// seconds since the epoch: a subscription socket is closed then.
    pub expires_at: u64,
}

impl Caller {
    /// The highest role, if any. Roles are ordered, so it includes the others.
    pub fn role(&self) -> Option<Role> {
        self.roles.iter().copied().max()
    }

    /// Succeeds when the caller has at least `role`; otherwise `FORBIDDEN`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        match self.role() {
            Some(have) if have >= role => Ok(()),
            _ => Err(ApiError::Forbidden {
                required: role.as_str(),
            }),
        }
    }
}

/// Verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    /// The key every token's signature is checked against.
    key: DecodingKey,
    /// The algorithm, `exp`, `nbf`, `iss` and `aud` rules every token must
    /// pass.
    validation: Validation,
}

impl Verifier {
    /// A verifier for the configured key, issuer and audience.
    pub fn new(config: &JwtConfig) -> Result<Self, jsonwebtoken::errors::Error> {
        let (key, algorithm) = match &config.key {
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::Rs256Pem(pem) => (DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
            JwtKey::Es256Pem(pem) => (DecodingKey::from_ec_pem(pem)?, Algorithm::ES256),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    /// Verifies an `Authorization` header value (`Bearer …`) holding a JWT.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        self.verify(bearer(header)?)
    }

    /// Verifies a bare token.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                let (reason, message) = match e.kind() {
                    ErrorKind::ExpiredSignature => ("TOKEN_EXPIRED", "the token has expired"),
                    ErrorKind::ImmatureSignature => (
                        "TOKEN_NOT_YET_VALID",
                        "the token is not valid yet (its nbf is in the future)",
                    ),
                    ErrorKind::InvalidAudience => {
                        ("INVALID_AUDIENCE", "the token is for another audience")
                    }
                    ErrorKind::InvalidIssuer => {
                        ("INVALID_ISSUER", "the token is from another issuer")
                    }
                    ErrorKind::InvalidSignature => {
                        ("INVALID_SIGNATURE", "the token's signature is invalid")
                    }
                    ErrorKind::InvalidAlgorithm => {
                        ("INVALID_ALGORITHM", "the token's algorithm is not accepted")
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        ("MISSING_CLAIM", "the token lacks a required claim")
                    }
                    _ => ("MALFORMED_TOKEN", "the token is malformed"),
                };
                ApiError::TokenRejected { reason, message }
            })?;
        let claims = data.claims;
        let tenant = TenantId::parse(claims.org)
            .map_err(|_| ApiError::Unauthenticated("the token's org is not a valid tenant"))?;
        if claims.sub.trim().is_empty() {
            return Err(ApiError::Unauthenticated("the token's sub is empty"));
        }
        Ok(Caller {
            sub: claims.sub,
            tenant,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            expires_at: claims.exp.saturating_add(self.validation.leeway),
        })
    }
}

/// The token of an `Authorization` header value (`Bearer …`).
fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthenticated(
            "the authorization must be `Bearer <token>`",
        ))?;
    Ok(token.trim())
}

/// How long a replica trusts what it read about a key: a revocation made
/// on another replica is honoured here within this.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// How often a key's last use is written, at most, per replica.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The most keys a replica remembers.
const KEY_CACHE_ENTRIES: usize = 10_000;

/// What a replica remembers of a key it has seen.
struct SeenKey {
    /// The key as the table held it.
    record: ApiKeyRecord,
    /// When it was read.
    fetched: Instant,
    /// When this replica last wrote its last use.
    touched: Option<Instant>,
}

/// Verifies the bearer of a request: a JWT, or an API key. Cheap to share.
pub struct Authenticator {
    /// Verifies JWTs.
    verifier: Verifier,
    /// Looks keys up, and records their use.
    keys: Arc<ApiKeys>,
    /// Keys seen lately, by hash.
    seen: parking_lot::Mutex<lru::LruCache<Vec<u8>, SeenKey>>,
}

impl Authenticator {
    /// An authenticator for JWTs checked by `verifier` and keys in `keys`.
    pub fn new(verifier: Verifier, keys: Arc<ApiKeys>) -> Self {
        let capacity =
            std::num::NonZeroUsize::new(KEY_CACHE_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            verifier,
            keys,
            seen: parking_lot::Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The JWT verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Verifies an `Authorization` header value: `Bearer <JWT>` or
    /// `Bearer thk_…`.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let token = bearer(header)?;
        if looks_like_key(token) {
            self.verify_key(token).await
        } else {
            self.verifier.verify(token)
        }
    }

    /// Forgets every key seen: after a revocation on this replica, so that
    /// it is honoured here at once.
    pub fn forget_keys(&self) {
        self.seen.lock().clear();
    }

    async fn verify_key(&self, key: &str) -> Result<Caller, ApiError> {
        let hash = key_hash(key);
        let remembered = {
            let mut seen = self.seen.lock();
            seen.get(&hash)
                .filter(|s| s.fetched.elapsed() < KEY_CACHE_TTL)
                .map(|s| s.record.clone())
        };
        let record = match remembered {
            Some(record) => record,
            None => {
                let record = self.keys.find(key).await?.ok_or(ApiError::TokenRejected {
                    reason: "UNKNOWN_API_KEY",
                    message: "the API key is unknown",
                })?;
                let mut seen = self.seen.lock();
                let touched = seen.peek(&hash).and_then(|s| s.touched);
                seen.put(
                    hash.clone(),
                    SeenKey {
                        record: record.clone(),
                        fetched: Instant::now(),
                        touched,
                    },
                );
                record
            }
        };
        let now = chrono::Utc::now();
        if record.revoked_at.is_some() {
            return Err(ApiError::TokenRejected {
                reason: "API_KEY_REVOKED",
                message: "the API key was revoked",
            });
        }
        if !record.is_valid_at(now) {
            return Err(ApiError::TokenRejected {
                reason: "API_KEY_EXPIRED",
                message: "the API key has expired",
            });
        }
        self.touch(&hash, &record, now).await;
        Ok(Caller {
            sub: format!("apikey:{}", record.id),
            tenant: record.tenant,
            roles: vec![record.role],
            expires_at: record
                .expires_at
                .map_or(u64::MAX, |at| at.timestamp().max(0) as u64),
        })
    }

    /// Writes the key's last use, at most once a minute per replica. A
    /// failure to write it is logged and does not refuse the request.
    async fn touch(&self, hash: &[u8], record: &ApiKeyRecord, now: chrono::DateTime<chrono::Utc>) {
        {
            let mut seen = self.seen.lock();
            let Some(entry) = seen.get_mut(hash) else {
                return;
            };
            if entry.touched.is_some_and(|t| t.elapsed() < TOUCH_EVERY) {
                return;
            }
            entry.touched = Some(Instant::now());
        }
        if let Err(error) = self.keys.touch(record.id, now).await {
            tracing::warn!(%error, key = %record.id, "could not record an API key's use");
        }
    }
}

/// Mints an HS256 token, as `toolhub token` does.
pub fn mint(
    config: &JwtConfig,
    sub: &str,
    org: &TenantId,
    roles: &[Role],
    ttl: Duration,
) -> Result<String, MintError> {
    let JwtKey::Hs256(secret) = &config.key else {
        return Err(MintError::NotHs256);
    };
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: sub.to_string(),
        org: org.to_string(),
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        iss: config.issuer.clone(),
        aud: config.audience.clone().map(Audience::One),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Encode(e.to_string()))
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Tokens can only be minted with a shared secret.
    #[error("toolhub token mints HS256 tokens only, but TOOLHUB_JWT_PUBLIC_KEY_FILE is set: use your identity provider")]
    NotHs256,
    /// Encoding failed.
    #[error("could not encode the token: {0}")]
    Encode(String),
}

/// Parses a duration such as `90s`, `15m`, `1h`, `7d` or a bare number of
/// seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration such as 90s, 30m, 1h or 7d");
    // A bare number is seconds; anything else is humantime's syntax, which
    // checks for overflow.
    let ttl = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|_| invalid())?,
    };
    if ttl.is_zero() {
        return Err("the duration must be positive".into());
    }
    // A token lives at most this long; jsonwebtoken's `exp` is a number of
    // seconds since 1970, and far-future values only hide mistakes.
    if ttl > MAX_TTL {
        return Err(format!(
            "{text:?} is longer than the longest token lifetime, {}",
            humantime::format_duration(MAX_TTL)
        ));
    }
    Ok(ttl)
}

/// The longest lifetime a minted token may have.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn config() -> JwtConfig {
        JwtConfig {
            key: JwtKey::Hs256(Zeroizing::new(b"0123456789abcdef0123456789abcdef".to_vec())),
            issuer: None,
            audience: Some("toolhub".into()),
            leeway: Duration::from_secs(30),
        }
    }

    fn sign(config: &JwtConfig, claims: serde_json::Value) -> String {
        let JwtKey::Hs256(secret) = &config.key else {
            unreachable!("the test configuration is HS256")
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn reason(result: Result<Caller, ApiError>) -> &'static str {
        match result {
            Err(ApiError::TokenRejected { reason, .. }) => reason,
            other => panic!("expected a rejected token, got {other:?}"),
        }
    }

    #[test]
    fn the_audience_may_be_a_string_or_an_array() {
        let config = config();
        let verifier = Verifier::new(&config).unwrap();
        let exp = chrono::Utc::now().timestamp() + 600;
        for aud in [
            serde_json::json!("toolhub"),
            serde_json::json!(["billing", "toolhub"]),
        ] {
            let token = sign(
                &config,
                serde_json::json!({"sub": "ada", "org": "acme", "exp": exp, "aud": aud}),
            );
            assert!(verifier.verify(&token).is_ok(), "{aud}");
        }
        let token = sign(
            &config,
            serde_json::json!({"sub": "ada", "org": "acme", "exp": exp, "aud": ["billing"]}),
        );
        assert_eq!(reason(verifier.verify(&token)), "INVALID_AUDIENCE");
    }

    #[test]
    fn nbf_and_exp_are_checked_with_the_configured_leeway() {
        let mut config = config();
        config.leeway = Duration::from_secs(60);
        let verifier = Verifier::new(&config).unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = |exp: i64, nbf: i64| serde_json::json!({"sub": "ada", "org": "acme", "aud": "toolhub", "exp": exp, "nbf": nbf});
        // Within the leeway on both sides.
        let token = sign(&config, claims(now - 30, now + 30));
        let caller = verifier.verify(&token).expect("within the leeway");
        assert_eq!(caller.expires_at, (now - 30 + 60) as u64);
        // Beyond it.
        let token = sign(&config, claims(now + 600, now + 300));
        assert_eq!(reason(verifier.verify(&token)), "TOKEN_NOT_YET_VALID");
        let token = sign(&config, claims(now - 300, now - 600));
        assert_eq!(reason(verifier.verify(&token)), "TOKEN_EXPIRED");
        // Without leeway, a token that expired a second ago is refused.
        config.leeway = Duration::ZERO;
        let strict = Verifier::new(&config).unwrap();
        let token = sign(&config, claims(now - 2, now - 600));
        assert_eq!(reason(strict.verify(&token)), "TOKEN_EXPIRED");
    }

    #[test]
    fn a_minted_token_is_accepted() {
        let config = config();
        let tenant = TenantId::parse("acme").unwrap();
        let token = mint(
            &config,
            "ada",
            &tenant,
            &[Role::Editor],
            Duration::from_secs(60),
        )
        .expect("minted");
        let caller = Verifier::new(&config)
            .unwrap()
            .verify(&token)
            .expect("valid");
        assert_eq!(caller.sub, "ada");
        assert_eq!(caller.tenant, tenant);
        assert_eq!(caller.role(), Some(Role::Editor));
        assert!(caller.require(Role::Viewer).is_ok());
        assert!(caller.require(Role::Admin).is_err());
    }

    #[test]
    fn durations_are_parsed_with_units() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("1 fortnight").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("2y").is_err(), "longer than a token may live");
        // Would overflow a hand-written multiplication.
        assert!(parse_ttl("213503982334601d").is_err());
        assert!(parse_ttl("18446744073709551615d").is_err());
    }
}
