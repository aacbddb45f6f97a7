//! The benchmarks' JWT secret and tokens.

use std::time::Duration;

use toolhub_domain::{Role, TenantId};

/// The HS256 secret every benchmark server is started with.
pub const SECRET: &[u8] = b"a-benchmark-secret-that-is-longer-than-32-bytes";

/// A token of `tenant` with `role`, valid for an hour.
pub fn token(tenant: &str, role: Role) -> String {
    let config = toolhub_api::config::JwtConfig {
        key: toolhub_api::config::JwtKey::Hs256(zeroize::Zeroizing::new(SECRET.to_vec())),
        issuer: None,
        audience: None,
        leeway: toolhub_api::config::DEFAULT_JWT_LEEWAY,
    };
    toolhub_api::auth::mint(
        &config,
        "bench",
        &TenantId::parse(tenant).expect("a valid tenant"),
        &[role],
        Duration::from_secs(3600),
    )
    .expect("a token")
}
