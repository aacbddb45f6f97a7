//! The egress policy: which addresses the engine's outgoing HTTP may reach.
//!
//! Workflows are written by tenants, and an `http` node or a Streamable-HTTP
//! MCP server sends requests to URLs they choose. Without a policy, a tenant
//! could make the service call its own neighbours: a database's admin port,
//! another service on the private network, or the cloud metadata endpoint
//! (`169.254.169.254`) that hands out the host's credentials. This is
//! server-side request forgery (SSRF).
//!
//! [`EgressPolicy`] refuses every internal address (see [`is_internal`])
//! unless the operator allow-lists it (`TOOLHUB_HTTP_ALLOW`, parsed by
//! [`EgressPolicy::parse`]), and [`EgressPolicy::client`] builds the one
//! `reqwest::Client` that enforces it:
//!
//! - Host names are resolved by the policy's own resolver, which hands
//!   reqwest only the allowed addresses. The address reqwest connects to is
//!   therefore the address that was checked: there is no second lookup that
//!   a rebinding DNS server could answer differently.
//! - URLs with a literal IP address skip any resolver, so the client checks
//!   them itself: every redirect hop in its redirect policy (which also
//!   bounds the number of hops), and every new connection, the first URL's
//!   included, in a connector layer that refuses before the connection is
//!   attempted. Whoever holds the client (an `http` node, an MCP transport)
//!   is protected without checking anything itself.
//!   [`EgressPolicy::check_url`] is the same check, for callers that want to
//!   refuse a URL before building a request (validating an MCP server's URL
//!   when it is registered, say).
//! - Proxies from the environment (`HTTP_PROXY`, …) are ignored, since a
//!   proxy would connect on the engine's behalf to addresses never checked.
//!
//! This module must never let a connection reach an internal address that is
//! not allow-listed, and never report which addresses an internal host name
//! resolved to (that would map the private network for the tenant).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{redirect, Url};
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The environment variable that holds the operator's allow-list, read by
/// the service's configuration and handed to [`EgressPolicy::parse`].
pub const ALLOW_LIST_ENV: &str = "TOOLHUB_HTTP_ALLOW";

/// IPv4 ranges that are refused unless allow-listed: they reach this host,
/// its private network, or nothing routable, never the public internet.
const INTERNAL_V4: [Ipv4Net; 16] = [
    // "This network" (0.0.0.0/8), which includes the unspecified address.
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    // Private networks (RFC 1918).
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    // Carrier-grade NAT (RFC 6598), which `Ipv4Addr::is_private` misses.
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    // Loopback.
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    // Link-local, including the cloud metadata endpoint 169.254.169.254.
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    // IETF protocol assignments (RFC 6890).
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    // Documentation (TEST-NET-1, -2, -3, RFC 5737).
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    // The deprecated 6to4 relay anycast prefix (RFC 7526).
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24),
    // Benchmarking (RFC 2544), used inside labs and data centres.
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    // Multicast.
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved (240.0.0.0/4), which includes the broadcast address.
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
    // The broadcast address on its own, named so that no edit of the range
    // above can silently drop it.
    Ipv4Net::new_assert(Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// IPv6 ranges that are refused unless allow-listed. IPv4-mapped addresses
/// (`::ffff:a.b.c.d`) are first turned into IPv4 and checked as such.
const INTERNAL_V6: [Ipv6Net; 14] = [
    // The unspecified address, loopback (::1) and the deprecated
    // IPv4-compatible addresses (::a.b.c.d), which embed any IPv4 address.
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),
    // IPv4-mapped addresses that `to_canonical` did not unwrap (none should
    // remain, but a refusal costs nothing).
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    // NAT64 (RFC 6052, RFC 8215): they translate to any IPv4 address,
    // internal ones included.
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    // Discard-only (RFC 6666).
    Ipv6Net::new_assert(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // Teredo, which embeds an IPv4 address.
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    // Documentation (RFC 3849, RFC 9637).
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    Ipv6Net::new_assert(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    // 6to4 (RFC 3056), which embeds an IPv4 address.
    Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    // Unique local addresses (the IPv6 private networks).
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // Link-local.
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // Site-local, deprecated but still routed inside some networks.
    Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // Multicast.
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    // Loopback on its own, named so that no edit of the ranges above can
    // silently drop it.
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),
];

/// True when `address` is internal: loopback, unspecified, private,
/// link-local (cloud metadata included), carrier-grade NAT, multicast,
/// broadcast, reserved, documentation, or an IPv6 prefix that embeds or
/// translates to an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible).
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are judged as the IPv4
/// address they carry, so that writing loopback in IPv6 does not get round
/// the check.
pub fn is_internal(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => INTERNAL_V4.iter().any(|net| net.contains(&v4)),
        IpAddr::V6(v6) => INTERNAL_V6.iter().any(|net| net.contains(&v6)),
    }
}

/// Which internal destinations the operator lets outgoing HTTP reach; every
/// public address is always allowed.
///
/// The default allows no internal address at all, which is what a service
/// running tenants' workflows should do unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Internal networks that are allowed anyway (an IP address is kept as a
    /// `/32` or `/128`), so that a workflow can call a service the operator
    /// runs next to Toolhub.
    allowed_networks: Vec<IpNet>,
    /// Host names (lowercase, without a trailing dot) allowed whatever they
    /// resolve to, for internal services whose addresses change.
    allowed_hosts: BTreeSet<String>,
}

/// Why an allow-list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressConfigError {
    /// An entry is neither a CIDR, an IP address nor a host name.
    #[error("`{entry}` in the egress allow-list ({ALLOW_LIST_ENV}) is not a CIDR (10.0.0.0/8), an IP address (127.0.0.1, ::1) or a host name (internal.example)")]
    InvalidEntry {
        /// The entry as written, so that the operator can find it.
        entry: String,
    },
}

/// Why the policy refused a request, or stopped following its redirects.
///
/// Executors find it in the source chain of a `reqwest::Error` to tell a
/// refusal (permanent) from a network fault (worth retrying).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The URL names an internal IP address that is not allow-listed.
    #[error("{address} is refused by the egress policy: it is an internal address (an operator may allow it with {ALLOW_LIST_ENV})")]
    InternalAddress {
        /// The address as written in the URL (the tenant wrote it, so
        /// repeating it reveals nothing).
        address: IpAddr,
    },
    /// Every address a host name resolved to is internal and not
    /// allow-listed. The addresses are deliberately not named.
    #[error("`{host}` is refused by the egress policy: it resolves only to internal addresses (an operator may allow it with {ALLOW_LIST_ENV})")]
    OnlyInternalAddresses {
        /// The host name as written in the URL.
        host: String,
    },
    /// The URL's scheme is not `http` or `https`.
    #[error("`{scheme}:` URLs are refused by the egress policy: only http and https are allowed")]
    UnsupportedScheme {
        /// The scheme as parsed.
        scheme: String,
    },
    /// The URL has no host to check.
    #[error("a URL without a host is refused by the egress policy")]
    MissingHost,
    /// The connector could not read where a new connection would go, so it
    /// refused it rather than connect unchecked. This happens only if
    /// reqwest changes how it describes a destination to connector layers;
    /// the tests would say so first.
    #[error("a connection whose destination could not be checked is refused by the egress policy")]
    UncheckedDestination,
    /// A chain of redirects went on past the limit.
    #[error("stopped after {limit} redirects")]
    TooManyRedirects {
        /// The configured limit ([`HttpLimits::max_redirects`]).
        limit: usize,
    },
}

/// Why [`EgressPolicy::client`] could not build a client (the TLS backend
/// failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("the HTTP client could not be built: {0}")]
pub struct ClientBuildError(#[source] reqwest::Error);

/// Bounds on one outgoing HTTP request, so that a slow or hostile server
/// cannot hold a worker or fill its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The whole request, from connecting until the last byte of the body.
    pub timeout: Duration,
    /// Establishing the connection (TCP and TLS), kept shorter than the
    /// whole so that an unreachable host fails fast and can be retried.
    pub connect_timeout: Duration,
    /// The largest response body accepted, in bytes; a larger one is
    /// refused while it is read, never buffered whole first.
    pub max_response_bytes: usize,
    /// How many redirects are followed before giving up.
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    /// 30 s per request, 10 s to connect, 10 MiB of body, 5 redirects.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
        }
    }
}

impl EgressPolicy {
    /// Reads an allow-list: comma-separated CIDRs (`10.0.0.0/8`), IP
    /// addresses (`127.0.0.1`, `::1`) or host names (`internal.example`).
    ///
    /// Whitespace around entries and empty entries are ignored, so an empty
    /// string is the default policy. Host names are compared without regard
    /// to case and a trailing dot; there are no wildcards, so that allowing
    /// one service never allows its neighbours. The first invalid entry is
    /// named in the error.
    pub fn parse(list: &str) -> Result<Self, EgressConfigError> {
        let mut policy = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let invalid = || EgressConfigError::InvalidEntry {
                entry: entry.to_string(),
            };
            if entry.contains('/') {
                let net: IpNet = entry.parse().map_err(|_| invalid())?;
                policy.allowed_networks.push(canonical_net(net.trunc()));
            } else if let Ok(address) = entry.parse::<IpAddr>() {
                policy
                    .allowed_networks
                    .push(IpNet::from(address.to_canonical()));
            } else {
                let host = normalise_host(entry);
                if !is_host_name(&host) {
                    return Err(invalid());
                }
                policy.allowed_hosts.insert(host);
            }
        }
        Ok(policy)
    }

    /// True when a connection to `address` is allowed: it is public, or it
    /// is in an allow-listed network.
    pub fn allows_address(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        !is_internal(address) || self.allowed_networks.iter().any(|n| n.contains(&address))
    }

    /// True when `host` is an allow-listed host name, which is allowed
    /// whatever it resolves to.
    pub fn allows_host_name(&self, host: &str) -> bool {
        !self.allowed_hosts.is_empty() && self.allowed_hosts.contains(&normalise_host(host))
    }

    /// Checks what can be checked of a URL before any connection: the scheme
    /// is `http` or `https`, it has a host, and a literal IP address is
    /// allowed. Host names pass here; the client's resolver checks the
    /// addresses they resolve to.
    ///
    /// The client from [`EgressPolicy::client`] runs this on every redirect
    /// hop and every new connection; callers use it to refuse a URL early,
    /// with a clear error, before anything is sent.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::UnsupportedScheme {
                scheme: url.scheme().to_string(),
            });
        }
        let address = match url.host() {
            None => return Err(EgressError::MissingHost),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        if self.allows_address(address) {
            Ok(())
        } else {
            Err(EgressError::InternalAddress { address })
        }
    }

    /// Builds the client that enforces this policy: a resolver that returns
    /// only allowed addresses, a connector layer that refuses a new
    /// connection to a literal address the policy refuses, a redirect policy
    /// that checks every hop and stops after [`HttpLimits::max_redirects`],
    /// no proxy, and the limits' timeouts. Build it once and share it: it
    /// pools connections.
    pub fn client(&self, limits: HttpLimits) -> Result<reqwest::Client, ClientBuildError> {
        let policy = Arc::new(self.clone());
        let redirects = Arc::clone(&policy);
        let connections = Arc::clone(&policy);
        let max_redirects = limits.max_redirects;
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(CheckedResolver { policy })
            .connector_layer(tower::layer::layer_fn(move |inner| CheckedConnector {
                inner,
                policy: Arc::clone(&connections),
            }))
            .redirect(redirect::Policy::custom(move |attempt| {
                // `previous` holds every URL already requested, the first
                // one included, as in reqwest's own `Policy::limited`.
                if attempt.previous().len() > max_redirects {
                    return attempt.error(EgressError::TooManyRedirects {
                        limit: max_redirects,
                    });
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            }))
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .user_agent(concat!("toolhub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientBuildError)
    }
}

/// Wraps reqwest's connector: every new connection's destination is checked
/// before the inner connector is called, so a refused literal address is
/// never connected to, not even for a TCP handshake.
#[derive(Clone)]
struct CheckedConnector<S> {
    /// reqwest's own connector (resolution, TCP, TLS).
    inner: S,
    /// The policy destinations are checked against.
    policy: Arc<EgressPolicy>,
}

/// The future of a connection: reqwest's, or an immediate refusal.
type Connecting<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

// reqwest hands its connector layers a destination of a type it does not
// export, so the service is generic over the request; the only thing known
// about it is its `Debug` form, which `destination_url` reads.
impl<S, Request> tower::Service<Request> for CheckedConnector<S>
where
    S: tower::Service<Request>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<EgressError> + Send + 'static,
    Request: fmt::Debug,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Connecting<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, destination: Request) -> Self::Future {
        let checked = destination_url(&format!("{destination:?}"))
            .ok_or(EgressError::UncheckedDestination)
            .and_then(|url| self.policy.check_url(&url));
        match checked {
            Ok(()) => Box::pin(self.inner.call(destination)),
            Err(refusal) => Box::pin(std::future::ready(Err(S::Error::from(refusal)))),
        }
    }
}

/// The URL inside the `Debug` form of reqwest's connector request,
/// `Unnameable(http://10.0.0.1:8080/path)` in reqwest 0.13. Anything else
/// is `None`, and the connection is refused: an unreadable destination is
/// never taken for an allowed one.
fn destination_url(debug: &str) -> Option<Url> {
    let inner = debug.strip_prefix("Unnameable(")?.strip_suffix(')')?;
    Url::parse(inner).ok()
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) written by an
/// operator means the IPv4 network it maps, which is how addresses are
/// compared after `to_canonical`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (IpAddr::V4(v4), Some(prefix)) = (
            IpAddr::V6(v6.network()).to_canonical(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(mapped) = Ipv4Net::new(v4, prefix) {
                return IpNet::V4(mapped);
            }
        }
    }
    net
}

/// Host names compare lowercase and without the trailing dot of a fully
/// qualified name.
fn normalise_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// True for a DNS host name: dot-separated labels of 1 to 63 letters,
/// digits, `-` or `_`, not starting or ending with `-`, at most 253
/// characters in all.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The resolver the client uses: it resolves with the system resolver and
/// returns only the addresses the policy allows, so that reqwest connects
/// to a checked address and never looks the name up again.
struct CheckedResolver {
    /// The policy the addresses are checked against.
    policy: Arc<EgressPolicy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addresses = allowed_addresses(&policy, &host, resolved)?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `host` that a connection may use, or the refusal when
/// none may.
fn allowed_addresses(
    policy: &EgressPolicy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, EgressError> {
    if policy.allows_host_name(host) {
        return Ok(resolved);
    }
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|address| policy.allows_address(address.ip()))
        .collect();
    if allowed.is_empty() {
        Err(EgressError::OnlyInternalAddresses {
            host: host.to_string(),
        })
    } else {
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn every_internal_range_is_refused_by_default() {
        let internal = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "169.254.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ];
        let policy = EgressPolicy::default();
        for address in internal {
            assert!(is_internal(ip(address)), "{address} should be internal");
            assert!(
                !policy.allows_address(ip(address)),
                "{address} should be refused"
            );
        }
    }

    #[test]
    fn public_addresses_are_allowed_by_default() {
        let policy = EgressPolicy::default();
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip(address)), "{address} should be public");
            assert!(policy.allows_address(ip(address)), "{address}");
        }
    }

    #[test]
    fn an_allow_list_opens_exactly_its_networks_addresses_and_names() {
        let policy =
            EgressPolicy::parse(" 127.0.0.1/32, 10.0.0.0/8 ,::1, fd00::/8, Internal.Example., ,")
                .unwrap();
        assert!(policy.allows_address(ip("127.0.0.1")));
        assert!(!policy.allows_address(ip("127.0.0.2")));
        assert!(policy.allows_address(ip("10.20.30.40")));
        assert!(policy.allows_address(ip("::ffff:10.20.30.40")));
        assert!(policy.allows_address(ip("::1")));
        assert!(policy.allows_address(ip("fd12::1")));
        assert!(!policy.allows_address(ip("fc00::1")));
        assert!(!policy.allows_address(ip("169.254.169.254")));
        assert!(!policy.allows_address(ip("192.168.0.1")));
        assert!(policy.allows_host_name("internal.example"));
        assert!(policy.allows_host_name("INTERNAL.example."));
        assert!(!policy.allows_host_name("other.internal.example"));
        assert!(!policy.allows_host_name("example"));
    }

    #[test]
    fn a_network_with_host_bits_set_is_read_as_its_whole_network() {
        let policy = EgressPolicy::parse("10.1.2.3/8").unwrap();
        assert!(policy.allows_address(ip("10.200.0.1")));
    }

    #[test]
    fn an_ipv4_mapped_network_allows_the_ipv4_addresses_it_maps() {
        let policy = EgressPolicy::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(policy.allows_address(ip("10.9.8.7")));
        assert!(!policy.allows_address(ip("192.168.0.1")));
    }

    #[test]
    fn an_empty_allow_list_is_the_default_policy() {
        assert_eq!(EgressPolicy::parse("").unwrap(), EgressPolicy::default());
        assert_eq!(EgressPolicy::parse(" , ").unwrap(), EgressPolicy::default());
    }

    #[test]
    fn a_bad_allow_list_entry_is_named_in_the_error() {
        for entry in [
            "10.0.0.0/33",
            "300.1.1.1/8",
            "10.0.0.0/x",
            "http://internal.example",
            "internal example",
            "-bad.example",
            "*.example",
            "host:8080",
        ] {
            let error = EgressPolicy::parse(&format!("127.0.0.1, {entry}")).unwrap_err();
            assert_eq!(
                error,
                EgressConfigError::InvalidEntry {
                    entry: entry.to_string()
                }
            );
            assert!(error.to_string().contains(entry), "{error}");
        }
    }

    #[test]
    fn literal_internal_addresses_in_urls_are_refused() {
        let policy = EgressPolicy::default();
        for (text, address) in [
            ("http://127.0.0.1:8080/x", "127.0.0.1"),
            ("http://10.0.0.1/", "10.0.0.1"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://[::1]:9000/", "::1"),
            ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
            // The URL parser reads these spellings of 127.0.0.1 as the
            // address itself, so they cannot slip past as host names.
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://0/", "0.0.0.0"),
        ] {
            let error = policy.check_url(&url(text)).unwrap_err();
            assert_eq!(
                error,
                EgressError::InternalAddress {
                    address: ip(address)
                },
                "{text}"
            );
            assert!(error.to_string().contains("refused by the egress policy"));
        }
    }

    #[test]
    fn public_literal_addresses_and_host_names_pass_the_url_check() {
        let policy = EgressPolicy::default();
        assert_eq!(policy.check_url(&url("https://93.184.216.34/")), Ok(()));
        assert_eq!(policy.check_url(&url("https://[2606:4700::1111]/")), Ok(()));
        // Names are checked when they are resolved, not here.
        assert_eq!(policy.check_url(&url("http://localhost/")), Ok(()));
    }

    #[test]
    fn an_allow_listed_literal_address_passes_the_url_check() {
        let policy = EgressPolicy::parse("127.0.0.1").unwrap();
        assert_eq!(policy.check_url(&url("http://127.0.0.1:3000/")), Ok(()));
        assert!(policy.check_url(&url("http://127.0.0.2:3000/")).is_err());
    }

    #[test]
    fn schemes_other_than_http_and_https_are_refused() {
        let policy = EgressPolicy::default();
        for (text, scheme) in [
            ("file:///etc/passwd", "file"),
            ("ftp://example.com/", "ftp"),
            ("gopher://example.com/", "gopher"),
        ] {
            assert_eq!(
                policy.check_url(&url(text)),
                Err(EgressError::UnsupportedScheme {
                    scheme: scheme.into()
                })
            );
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_to_the_allowed_ones() {
        let policy = EgressPolicy::default();
        let resolved = vec![
            SocketAddr::new(ip("10.0.0.5"), 0),
            SocketAddr::new(ip("93.184.216.34"), 0),
            SocketAddr::new(ip("::1"), 0),
        ];
        assert_eq!(
            allowed_addresses(&policy, "mixed.example", resolved),
            Ok(vec![SocketAddr::new(ip("93.184.216.34"), 0)])
        );
    }

    #[test]
    fn a_name_resolving_only_to_internal_addresses_is_refused_without_naming_them() {
        let policy = EgressPolicy::default();
        let resolved = vec![SocketAddr::new(ip("10.0.0.5"), 0)];
        let error = allowed_addresses(&policy, "db.internal", resolved).unwrap_err();
        assert_eq!(
            error,
            EgressError::OnlyInternalAddresses {
                host: "db.internal".into()
            }
        );
        assert!(!error.to_string().contains("10.0.0.5"), "{error}");
    }

    #[test]
    fn an_allow_listed_name_keeps_whatever_it_resolves_to() {
        let policy = EgressPolicy::parse("db.internal").unwrap();
        let resolved = vec![SocketAddr::new(ip("10.0.0.5"), 0)];
        assert_eq!(
            allowed_addresses(&policy, "DB.internal", resolved.clone()),
            Ok(resolved)
        );
    }

    async fn resolve(policy: EgressPolicy, name: &str) -> Result<Vec<SocketAddr>, String> {
        let resolver = CheckedResolver {
            policy: Arc::new(policy),
        };
        let name = Name::from_str(name).map_err(|e| e.to_string())?;
        match resolver.resolve(name).await {
            Ok(addresses) => Ok(addresses.collect()),
            Err(error) => Err(error.to_string()),
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_by_default() {
        let error = resolve(EgressPolicy::default(), "localhost")
            .await
            .unwrap_err();
        assert!(error.contains("refused by the egress policy"), "{error}");
    }

    #[tokio::test]
    async fn the_resolver_returns_loopback_when_it_is_allow_listed() {
        let policy = EgressPolicy::parse("127.0.0.0/8").unwrap();
        let addresses = resolve(policy, "localhost").await.unwrap();
        assert!(!addresses.is_empty());
        assert!(addresses
            .iter()
            .all(|a| a.ip().to_canonical().is_loopback() && a.ip().is_ipv4()));
    }

    #[tokio::test]
    async fn the_resolver_returns_an_allow_listed_name_unfiltered() {
        let policy = EgressPolicy::parse("localhost").unwrap();
        let addresses = resolve(policy, "localhost").await.unwrap();
        assert!(addresses.iter().any(|a| a.ip() == ip("127.0.0.1")));
    }

    #[test]
    fn a_connector_destination_is_read_from_its_debug_form() {
        assert_eq!(
            destination_url("Unnameable(http://10.0.0.1:8080/path?q=1)"),
            Some(url("http://10.0.0.1:8080/path?q=1"))
        );
        assert_eq!(
            destination_url("Unnameable(https://[::1]/)"),
            Some(url("https://[::1]/"))
        );
        assert_eq!(destination_url("Unnameable { .. }"), None);
        assert_eq!(destination_url("http://10.0.0.1/"), None);
    }

    #[test]
    fn the_default_limits_are_the_documented_ones() {
        let limits = HttpLimits::default();
        assert_eq!(limits.timeout, Duration::from_secs(30));
        assert_eq!(limits.connect_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_response_bytes, 10 * 1024 * 1024);
        assert_eq!(limits.max_redirects, 5);
    }

    #[test]
    fn a_client_can_be_built_for_any_policy() {
        assert!(EgressPolicy::default()
            .client(HttpLimits::default())
            .is_ok());
    }
}
