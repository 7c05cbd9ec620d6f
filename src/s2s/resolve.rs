//! Where a remote domain accepts s2s connections (RFC 6120 §3.2, XEP-0368):
//! `s2s.static_hosts`, else `_xmpps-server._tcp` and `_xmpp-server._tcp` SRV records merged
//! by priority/weight (RFC 2782), else the domain's A/AAAA on 5269.
//!
//! Host names are resolved to addresses when connecting (`TcpStream::connect`), so a target
//! keeps the SRV host name: TLS still uses the remote *domain* as SNI and for the
//! certificate check (RFC 6125 §6.2.1: the source domain, not the SRV target).

use hickory_resolver::TokioResolver;
use tokio::sync::OnceCell;

use super::S2sConfig;

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// XEP-0368: TLS from the first byte instead of STARTTLS.
    pub direct_tls: bool,
}

/// RFC 6120 §3.2.2 fallback port.
pub const DEFAULT_PORT: u16 = 5269;

/// One SRV record, as the ordering needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub target: Target,
}

/// The DNS resolver, built on first use from the system configuration (a server whose
/// peers are all in `static_hosts` never reads /etc/resolv.conf).
#[derive(Default)]
pub struct Resolver {
    dns: OnceCell<Option<TokioResolver>>,
}

impl Resolver {
    async fn dns(&self, config: &S2sConfig) -> Option<&TokioResolver> {
        self.dns
            .get_or_init(|| async {
                if let Ok(server) = config.resolver.parse::<std::net::SocketAddr>() {
                    // `s2s.resolver`: this name server only (split-horizon intranets, tests).
                    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
                    use hickory_resolver::name_server::TokioConnectionProvider;
                    let servers =
                        NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                    let rc = ResolverConfig::from_parts(None, vec![], servers);
                    return Some(
                        TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
                            .build(),
                    );
                }
                match TokioResolver::builder_tokio() {
                    Ok(b) => Some(b.build()),
                    Err(e) => {
                        tracing::warn!(error = %e, "s2s: no DNS resolver configuration");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    /// The addresses to try for `domain`, in order. Empty: the domain offers no s2s service
    /// (SRV target "." per RFC 2782) or DNS is unusable.
    pub async fn targets(&self, config: &S2sConfig, domain: &str) -> Vec<Target> {
        if let Some(t) = config.static_hosts.get(domain) {
            return static_target(t).into_iter().collect();
        }
        let Some(dns) = self.dns(config).await else {
            return fallback(domain);
        };
        let mut answers = [Vec::new(), Vec::new()];
        for (slot, (service, direct_tls)) in answers
            .iter_mut()
            .zip([("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)])
        {
            let name = format!("{service}.{domain}.");
            let Ok(found) = dns.srv_lookup(name.as_str()).await else {
                continue; // NXDOMAIN / no records / failure: as if absent
            };
            slot.extend(found.iter().map(|s| Srv {
                priority: s.priority(),
                weight: s.weight(),
                target: Target {
                    // The root name "." becomes "": no service.
                    host: s.target().to_ascii().trim_end_matches('.').to_owned(),
                    port: s.port(),
                    direct_tls,
                },
            }));
        }
        let [xmpps, xmpp] = answers;
        plan(domain, xmpps, xmpp, &mut |n| {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=n)
        })
    }
}

/// The targets from what the two SRV lookups answered (empty: no records). RFC 6120
/// §3.2.1 / RFC 2782: a lone "." (host "") for `_xmpp-server` means the domain decidedly
/// offers no s2s service; for `_xmpps-server` only that there is no direct TLS
/// (XEP-0368). No usable record at all: the domain itself on 5269.
pub fn plan(
    domain: &str,
    xmpps: Vec<Srv>,
    xmpp: Vec<Srv>,
    pick: &mut dyn FnMut(u32) -> u32,
) -> Vec<Target> {
    let refused = xmpp.len() == 1 && xmpp[0].target.host.is_empty();
    let records: Vec<Srv> = xmpps
        .into_iter()
        .chain(xmpp)
        .filter(|r| !r.target.host.is_empty())
        .collect();
    if records.is_empty() {
        return if refused {
            Vec::new()
        } else {
            fallback(domain)
        };
    }
    order(records, pick)
}

fn fallback(domain: &str) -> Vec<Target> {
    vec![Target {
        host: domain.to_owned(),
        port: DEFAULT_PORT,
        direct_tls: false,
    }]
}

/// A `static_hosts` value: "host:port" (STARTTLS) or "tls://host:port" (direct TLS).
pub fn static_target(value: &str) -> Option<Target> {
    let (direct_tls, addr) = match value.strip_prefix("tls://") {
        Some(a) => (true, a),
        None => (false, value),
    };
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Target {
        host: host.to_owned(),
        port: port.parse().ok()?,
        direct_tls,
    })
}

/// RFC 2782 order: ascending priority; within one priority, direct-TLS records first
/// (XEP-0368 §3: prefer them when equally preferred), each group in weighted-random order.
/// `pick(n)` returns a uniform random number in `0..=n` (injected for tests).
pub fn order(mut records: Vec<Srv>, pick: &mut dyn FnMut(u32) -> u32) -> Vec<Target> {
    records.sort_by_key(|r| (r.priority, !r.target.direct_tls));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let key = (first.priority, first.target.direct_tls);
        let len = rest
            .iter()
            .take_while(|r| (r.priority, r.target.direct_tls) == key)
            .count();
        let (group, tail) = rest.split_at(len);
        weighted(group.to_vec(), pick, &mut out);
        rest = tail;
    }
    out
}

/// RFC 2782's selection: zero-weight records first, then repeatedly pick the first record
/// whose running weight sum reaches a random number in 0..=total.
fn weighted(mut group: Vec<Srv>, pick: &mut dyn FnMut(u32) -> u32, out: &mut Vec<Target>) {
    group.sort_by_key(|r| r.weight != 0);
    while !group.is_empty() {
        let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
        let n = pick(total);
        let mut sum = 0u32;
        let idx = group
            .iter()
            .position(|r| {
                sum += u32::from(r.weight);
                sum >= n
            })
            .unwrap_or(group.len() - 1);
        out.push(group.remove(idx).target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, host: &str, direct_tls: bool) -> Srv {
        Srv {
            priority,
            weight,
            target: Target {
                host: host.into(),
                port: 5269,
                direct_tls,
            },
        }
    }

    fn hosts(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.host.as_str()).collect()
    }

    #[test]
    fn priority_then_direct_tls_first() {
        let records = vec![
            srv(20, 0, "backup", false),
            srv(10, 0, "starttls", false),
            srv(10, 0, "direct", true),
            srv(5, 0, "best-starttls", false),
        ];
        let t = order(records, &mut |_| 0);
        assert_eq!(hosts(&t), ["best-starttls", "direct", "starttls", "backup"]);
        assert!(t[1].direct_tls && !t[2].direct_tls);
    }

    #[test]
    fn weights_select_by_running_sum() {
        let records = vec![
            srv(10, 10, "a", false),
            srv(10, 30, "b", false),
            srv(10, 0, "zero", false),
        ];
        // Running sums after the zero-weight record first: zero=0, a=10, b=40.
        // pick 0 → "zero"; then sums a=10, b=40: pick 11 → "b"; then "a".
        let mut picks = vec![0, 11, 5].into_iter();
        let t = order(records.clone(), &mut |_| picks.next().unwrap_or(0));
        assert_eq!(hosts(&t), ["zero", "b", "a"]);
        // A random number of exactly the total picks the last record.
        let mut max = |n| n;
        assert_eq!(hosts(&order(records, &mut max)), ["b", "a", "zero"]);
    }

    #[test]
    fn static_hosts_values() {
        assert_eq!(
            static_target("tls://127.0.0.1:5270"),
            Some(Target {
                host: "127.0.0.1".into(),
                port: 5270,
                direct_tls: true
            })
        );
        assert_eq!(
            static_target("[::1]:5269").map(|t| t.host),
            Some("::1".into())
        );
        assert_eq!(static_target("nope"), None);
    }

    #[test]
    fn dot_targets_and_fallback() {
        let dot = |direct_tls| vec![srv(0, 0, "", direct_tls)];
        let fallback = plan("d.test", vec![], vec![], &mut |_| 0);
        assert_eq!(
            fallback,
            vec![Target {
                host: "d.test".into(),
                port: DEFAULT_PORT,
                direct_tls: false
            }]
        );
        assert!(plan("d.test", vec![], dot(false), &mut |_| 0).is_empty());
        // "." for direct TLS only: STARTTLS as usual.
        assert_eq!(plan("d.test", dot(true), vec![], &mut |_| 0), fallback);
        let only_tls = plan("d.test", vec![srv(5, 0, "x", true)], dot(false), &mut |_| 0);
        assert_eq!(hosts(&only_tls), ["x"]);
    }

    #[tokio::test]
    async fn static_hosts_win_over_dns() {
        let mut config = S2sConfig::default();
        config
            .static_hosts
            .insert("remote.test".into(), "127.0.0.1:15269".into());
        let t = Resolver::default().targets(&config, "remote.test").await;
        assert_eq!(hosts(&t), ["127.0.0.1"]);
        assert_eq!(t[0].port, 15269);
    }
}
