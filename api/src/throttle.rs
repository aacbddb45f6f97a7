//! Rate limits per caller and per client address, and the count of
//! subscriptions each caller runs.
//!
//! Each kind of operation — queries, mutations, subscriptions — has its own
//! keyed GCRA limiter (`governor`) per caller (tenant and `sub`) and per
//! client address, so a flood of queries never eats the budget of
//! mutations. A refusal is `RATE_LIMITED` with the time after which the same
//! operation would be allowed (`Retry-After`). Every replica counts on its
//! own: behind a load balancer of `n` replicas a caller gets up to `n` times
//! the configured rate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use parking_lot::Mutex;

use crate::auth::Caller;
use crate::config::{Limits, OperationRates, Rate};
use crate::error::ApiError;

/// What a request does, for its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A GraphQL query.
    Query,
    /// A GraphQL mutation.
    Mutation,
    /// A subscription started on a socket, or a socket opened.
    Subscription,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Self::Query => 0,
            Self::Mutation => 1,
            Self::Subscription => 2,
        }
    }
}

/// One limiter per kind of operation, keyed by `K`.
struct PerKind<K: std::hash::Hash + Eq + Clone> {
    /// Queries, mutations, subscriptions; `None` when that limit is off.
    limiters: [Option<DefaultKeyedRateLimiter<K>>; 3],
}

impl<K: std::hash::Hash + Eq + Clone> PerKind<K> {
    fn new(rates: &OperationRates) -> Self {
        let limiter = |rate: Option<Rate>| rate.map(|r| DefaultKeyedRateLimiter::keyed(quota(r)));
        Self {
            limiters: [
                limiter(rates.queries),
                limiter(rates.mutations),
                limiter(rates.subscriptions),
            ],
        }
    }

    /// `Ok` when `key` may do one more `kind`, else how long to wait.
    fn check(&self, kind: Kind, key: &K, clock: &DefaultClock) -> Result<(), Duration> {
        match &self.limiters[kind.index()] {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(clock.now())),
        }
    }

    /// Forgets keys whose budget is full again, so that the maps stay as
    /// small as the set of recent callers.
    fn sweep(&self) {
        for limiter in self.limiters.iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// A GCRA quota for `rate`: bursts up to `count`, refilled evenly over `per`.
fn quota(rate: Rate) -> Quota {
    let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let period = (rate.per / count.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(count))
        .allow_burst(count)
}

/// The rate limiters and the subscription counts of one server.
pub struct Throttle {
    /// Per caller.
    subjects: PerKind<String>,
    /// Per client address.
    addresses: PerKind<IpAddr>,
    /// The header that carries the client's address behind a proxy.
    address_header: Option<String>,
    /// The limiters' clock.
    clock: DefaultClock,
    /// How many subscriptions each caller runs now, on this replica.
    running: Arc<Mutex<HashMap<String, usize>>>,
    /// The most a caller may run at once.
    per_caller: usize,
    /// Deliveries per webhook; `None` when that limit is off.
    hooks: Option<DefaultKeyedRateLimiter<String>>,
}

impl Throttle {
    /// The limiters for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            subjects: PerKind::new(&limits.rate.per_subject),
            addresses: PerKind::new(&limits.rate.per_address),
            address_header: limits.rate.client_address_header.clone(),
            clock: DefaultClock::default(),
            running: Arc::default(),
            per_caller: limits.ws_subscriptions_per_caller,
            hooks: limits
                .webhook_rate
                .map(|rate| DefaultKeyedRateLimiter::keyed(quota(rate))),
        }
    }

    /// The client's address: the first address of the configured header
    /// when there is one, else the TCP peer's.
    pub fn client_address(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        if let Some(name) = &self.address_header {
            let forwarded = headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        peer.map(|p| p.ip())
    }

    /// Counts one `kind` from `address`; `RATE_LIMITED` when over its rate.
    pub fn check_address(&self, kind: Kind, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(address) = address else {
            return Ok(());
        };
        self.addresses
            .check(kind, &address, &self.clock)
            .map_err(|wait| limited("ADDRESS_RATE", wait))
    }

    /// Counts one `kind` by `caller`; `RATE_LIMITED` when over its rate.
    pub fn check_subject(&self, kind: Kind, caller: &Caller) -> Result<(), ApiError> {
        self.subjects
            .check(kind, &caller_key(caller), &self.clock)
            .map_err(|wait| limited("SUBJECT_RATE", wait))
    }

    /// Counts one delivery to webhook `id`; `RATE_LIMITED` when over its
    /// rate. Counted before the webhook is looked up, so that a flood of
    /// requests to one URL costs no database reads.
    pub fn check_hook(&self, id: &str) -> Result<(), ApiError> {
        match &self.hooks {
            None => Ok(()),
            Some(limiter) => limiter.check_key(&id.to_string()).map_err(|not_until| {
                limited("WEBHOOK_RATE", not_until.wait_time_from(self.clock.now()))
            }),
        }
    }

    /// Takes one of `caller`'s subscription slots, given back when the
    /// returned guard is dropped; `RATE_LIMITED` when they run as many as
    /// they may.
    pub fn subscription_slot(&self, caller: &Caller) -> Result<SubscriptionSlot, ApiError> {
        let key = caller_key(caller);
        let mut running = self.running.lock();
        let count = running.entry(key.clone()).or_insert(0);
        if *count >= self.per_caller {
            return Err(ApiError::RateLimited {
                reason: "SUBSCRIPTIONS_PER_CALLER",
                retry_after: None,
            });
        }
        *count += 1;
        Ok(SubscriptionSlot {
            running: self.running.clone(),
            key,
        })
    }

    /// Forgets idle keys; called periodically.
    pub fn sweep(&self) {
        self.subjects.sweep();
        self.addresses.sweep();
        if let Some(hooks) = &self.hooks {
            hooks.retain_recent();
            hooks.shrink_to_fit();
        }
    }
}

/// One running subscription of a caller.
pub struct SubscriptionSlot {
    /// The counts it belongs to.
    running: Arc<Mutex<HashMap<String, usize>>>,
    /// Whose.
    key: String,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock();
        if let Some(count) = running.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

/// A caller's key: `sub` alone is not unique across tenants.
fn caller_key(caller: &Caller) -> String {
    format!("{}\u{1f}{}", caller.tenant, caller.sub)
}

fn limited(reason: &'static str, wait: Duration) -> ApiError {
    // Whole seconds, rounded up, and never 0: `Retry-After: 0` invites a
    // retry that is refused again.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::RateLimited {
        reason,
        retry_after: Some(seconds.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolhub_domain::{Role, TenantId};

    fn caller(sub: &str) -> Caller {
        Caller {
            sub: sub.into(),
            tenant: TenantId::parse("acme").unwrap(),
            roles: vec![Role::Viewer],
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn a_caller_gets_its_burst_then_is_told_when_to_come_back() {
        let mut limits = Limits::default();
        limits.rate.per_subject.queries = Some(Rate::per_minute(3));
        let throttle = Throttle::new(&limits);
        let ada = caller("ada");
        for _ in 0..3 {
            throttle
                .check_subject(Kind::Query, &ada)
                .expect("within the burst");
        }
        match throttle.check_subject(Kind::Query, &ada) {
            Err(ApiError::RateLimited {
                reason: "SUBJECT_RATE",
                retry_after: Some(seconds),
            }) => assert!((1..=20).contains(&seconds), "{seconds}"),
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        // Another caller, and another kind of operation, have their own.
        throttle
            .check_subject(Kind::Query, &caller("bob"))
            .expect("bob's own budget");
        throttle
            .check_subject(Kind::Mutation, &ada)
            .expect("mutations have their own budget");
    }

    #[test]
    fn subscription_slots_are_given_back_when_dropped() {
        let limits = Limits {
            ws_subscriptions_per_caller: 2,
            ..Limits::default()
        };
        let throttle = Throttle::new(&limits);
        let ada = caller("ada");
        let first = throttle.subscription_slot(&ada).expect("one");
        let _second = throttle.subscription_slot(&ada).expect("two");
        assert!(throttle.subscription_slot(&ada).is_err());
        drop(first);
        throttle.subscription_slot(&ada).expect("a slot again");
    }

    #[test]
    fn rates_are_parsed_with_their_period() {
        assert_eq!(Rate::parse("600/min"), Ok(Rate::per_minute(600)));
        assert_eq!(
            Rate::parse("10/s"),
            Ok(Rate {
                count: 10,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            Rate::parse("5/30s"),
            Ok(Rate {
                count: 5,
                per: Duration::from_secs(30)
            })
        );
        assert!(Rate::parse("0/min").is_err());
        assert!(Rate::parse("ten/min").is_err());
        let defaults = OperationRates {
            queries: Some(Rate::per_minute(1)),
            mutations: Some(Rate::per_minute(2)),
            subscriptions: Some(Rate::per_minute(3)),
        };
        let parsed = OperationRates::parse("queries=5/s, subscriptions=off", &defaults).unwrap();
        assert_eq!(parsed.mutations, Some(Rate::per_minute(2)));
        assert_eq!(parsed.subscriptions, None);
        assert_eq!(
            OperationRates::parse("off", &defaults).unwrap(),
            OperationRates::default()
        );
        assert!(OperationRates::parse("reads=5/s", &defaults).is_err());
    }
}
