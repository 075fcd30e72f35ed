//! Which proxy a download goes through, decided per URL from the environment the way
//! curl and wget read it, so that a machine set up for them downloads bases the same way.
//!
//! - `http://` URLs use `http_proxy` or `HTTP_PROXY`, `https://` URLs `https_proxy` or
//!   `HTTPS_PROXY`; either falls back to `all_proxy` or `ALL_PROXY`. The lowercase name
//!   wins when both are set, and an empty value counts as unset.
//! - `no_proxy` or `NO_PROXY` lists hosts reached directly, separated by commas: `*` (every
//!   host), a domain (`example.org`, `.example.org` and `*.example.org` all mean the domain
//!   and every host under it), an IP address, an IP range (`10.0.0.0/8`), and any of
//!   these but `*` and a range with `:PORT` to bypass only that port (`[::1]:8080` for
//!   IPv6). Names are matched as written: nothing is resolved.
//!
//! ureq reads these variables itself, but it prefers `ALL_PROXY` and `HTTPS_PROXY` for
//! every scheme, and its NO_PROXY knows neither ports, nor ranges, nor that
//! `.example.org` covers `example.org`; so the choice is made here and ureq is given
//! the proxy, or none.

use std::net::IpAddr;

/// What `mesobake build --help` says about downloads; the module docs say it at length.
pub const HELP: &str = "\
Downloads (a named base, a URL --base and its SHA256SUMS):
  https URLs go through https_proxy or HTTPS_PROXY, http URLs through http_proxy or
  HTTP_PROXY, either else through all_proxy or ALL_PROXY (lowercase wins).
  no_proxy or NO_PROXY lists hosts reached directly, comma-separated: * (all),
  example.org or .example.org (the domain and its hosts), an IP address, a range
  like 10.0.0.0/8, and a name or address with :PORT for that port only.
  Verified downloads are cached in $MESOBAKE_CACHE_DIR, else $XDG_CACHE_HOME/mesobake
  (default ~/.cache/mesobake).";

/// The proxy variables, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    http: Option<Setting>,
    https: Option<Setting>,
    all: Option<Setting>,
    no_proxy: Vec<Bypass>,
}

/// One proxy variable that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    var: &'static str,
    value: String,
}

/// How one URL is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server: no proxy variable applies to the URL's scheme.
    Direct,
    /// Straight to the server because a NO_PROXY entry (given) matches its host.
    Bypassed(String),
    /// Through a proxy.
    Proxy {
        /// The variable that named it (`HTTPS_PROXY`, ...), for messages.
        var: &'static str,
        /// The proxy URL as given (it may hold credentials: show [`Route::describe`]).
        url: String,
    },
}

impl Route {
    /// The route for messages, with any password in the proxy URL hidden.
    pub fn describe(&self) -> String {
        match self {
            Route::Direct => "directly".into(),
            Route::Bypassed(entry) => format!("directly (NO_PROXY entry {entry:?})"),
            Route::Proxy { var, url } => format!("through {} (from {var})", redact(url)),
        }
    }
}

/// One NO_PROXY entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bypass {
    /// The entry as written, for messages.
    text: String,
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`.
    All,
    /// A domain and everything under it, lowercase, without leading or trailing dots.
    Domain { name: String, port: Option<u16> },
    /// One address.
    Ip { addr: IpAddr, port: Option<u16> },
    /// An address range.
    Range { net: IpAddr, prefix: u8 },
}

impl ProxyEnv {
    /// Reads the variables from this process's environment.
    pub fn from_env() -> ProxyEnv {
        ProxyEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (a test's own environment, say).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ProxyEnv {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|var| {
                get(var)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(|value| Setting { var, value })
            })
        };
        let no_proxy = first(["no_proxy", "NO_PROXY"])
            .map(|s| parse_no_proxy(&s.value))
            .unwrap_or_default();
        ProxyEnv {
            http: first(["http_proxy", "HTTP_PROXY"]),
            https: first(["https_proxy", "HTTPS_PROXY"]),
            all: first(["all_proxy", "ALL_PROXY"]),
            no_proxy,
        }
    }

    /// How `url` is to be fetched. A URL whose host cannot be told goes direct (the
    /// request itself then reports the bad URL).
    pub fn route(&self, url: &str) -> Route {
        let Some(target) = Target::parse(url) else {
            return Route::Direct;
        };
        let setting = match target.scheme.as_str() {
            "http" => self.http.as_ref(),
            "https" => self.https.as_ref(),
            _ => None,
        }
        .or(self.all.as_ref());
        let Some(setting) = setting else {
            return Route::Direct;
        };
        if let Some(b) = self.no_proxy.iter().find(|b| b.rule.matches(&target)) {
            return Route::Bypassed(b.text.clone());
        }
        Route::Proxy {
            var: setting.var,
            url: setting.value.clone(),
        }
    }
}

/// The parts of a URL that NO_PROXY looks at.
struct Target {
    scheme: String,
    /// Lowercase, without brackets or a trailing dot.
    host: String,
    port: u16,
    ip: Option<IpAddr>,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            Some(p) => p,
            None => match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => return None,
            },
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Target {
            ip: host.parse().ok(),
            scheme,
            host,
            port,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` into the host (brackets removed) and the
/// port; `None` if the port is not a number.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((host, _)) if host.contains(':') => Some((s, None)),
        Some((host, p)) => Some((host, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn parse_no_proxy(value: &str) -> Vec<Bypass> {
    value
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            Some(Bypass {
                text: e.to_string(),
                rule: parse_rule(e)?,
            })
        })
        .collect()
}

/// One entry; `None` for one that cannot match anything (a malformed range or port),
/// which is skipped as curl skips it.
fn parse_rule(entry: &str) -> Option<Rule> {
    if entry == "*" {
        return Some(Rule::All);
    }
    if let Some((net, bits)) = entry.split_once('/') {
        let net: IpAddr = net.parse().ok()?;
        let prefix: u8 = bits.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        return (prefix <= max).then_some(Rule::Range { net, prefix });
    }
    let (host, port) = split_host_port(entry)?;
    if let Ok(addr) = host.parse::<IpAddr>() {
        return Some(Rule::Ip { addr, port });
    }
    let name = host
        .strip_prefix("*.")
        .or_else(|| host.strip_prefix('.'))
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    (!name.is_empty()).then_some(Rule::Domain { name, port })
}

impl Rule {
    fn matches(&self, t: &Target) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == t.port);
        match self {
            Rule::All => true,
            Rule::Domain { name, port } => {
                port_ok(port)
                    && (t.host == *name
                        || t.host
                            .strip_suffix(name.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
            Rule::Ip { addr, port } => port_ok(port) && t.ip == Some(*addr),
            Rule::Range { net, prefix } => t.ip.is_some_and(|ip| in_range(ip, *net, *prefix)),
        }
    }
}

fn in_range(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let shift = width - u32::from(prefix);
    shift >= width || ip >> shift == net >> shift
}

/// A proxy URL with its password (if any) replaced, for messages.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}{user}:***@{host}{}", &rest[end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(|k| m.get(k).cloned())
    }

    fn via(e: &ProxyEnv, url: &str) -> Option<String> {
        match e.route(url) {
            Route::Proxy { url, .. } => Some(url),
            _ => None,
        }
    }

    #[test]
    fn each_scheme_uses_its_own_variable_then_all_proxy() {
        let e = env(&[("HTTP_PROXY", "http://h:1"), ("HTTPS_PROXY", "http://s:2")]);
        assert_eq!(via(&e, "http://x/a").as_deref(), Some("http://h:1"));
        assert_eq!(via(&e, "https://x/a").as_deref(), Some("http://s:2"));
        let e = env(&[("HTTPS_PROXY", "http://s:2")]);
        assert_eq!(e.route("http://x/a"), Route::Direct);
        let e = env(&[
            ("ALL_PROXY", "socks5h://a:3"),
            ("https_proxy", "http://s:2"),
        ]);
        assert_eq!(via(&e, "http://x/a").as_deref(), Some("socks5h://a:3"));
        assert_eq!(via(&e, "HTTPS://X/a").as_deref(), Some("http://s:2"));
        assert_eq!(env(&[]).route("https://x/a"), Route::Direct);
    }

    #[test]
    fn lowercase_wins_and_empty_is_unset() {
        let e = env(&[
            ("http_proxy", "http://lower:1"),
            ("HTTP_PROXY", "http://upper:1"),
        ]);
        assert_eq!(via(&e, "http://x/").as_deref(), Some("http://lower:1"));
        let e = env(&[("http_proxy", ""), ("HTTP_PROXY", "http://upper:1")]);
        assert_eq!(via(&e, "http://x/").as_deref(), Some("http://upper:1"));
        assert_eq!(
            env(&[
                ("http_proxy", "http://p:1"),
                ("no_proxy", ""),
                ("NO_PROXY", "*")
            ])
            .route("http://x/"),
            Route::Bypassed("*".into())
        );
        let e = env(&[("HTTP_PROXY", "  ")]);
        assert_eq!(e.route("http://x/"), Route::Direct);
    }

    #[test]
    fn no_proxy_domains_cover_the_domain_and_its_hosts() {
        for entry in [
            "example.org",
            ".example.org",
            "*.example.org",
            "EXAMPLE.org.",
        ] {
            let e = env(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", entry)]);
            for url in [
                "https://example.org/x",
                "https://mirror.Example.org/x",
                "https://a.b.example.org./x",
                "https://user:pw@example.org:8443/x",
            ] {
                assert!(via(&e, url).is_none(), "{entry} should cover {url}");
            }
            for url in ["https://badexample.org/x", "https://example.org.evil/x"] {
                assert!(via(&e, url).is_some(), "{entry} should not cover {url}");
            }
        }
    }

    #[test]
    fn no_proxy_lists_ports_addresses_and_ranges() {
        let e = env(&[
            ("http_proxy", "http://p:1"),
            (
                "no_proxy",
                " localhost:8080 , 192.168.1.5,10.0.0.0/8 [::1]:9000,fd00::/8, bad/99",
            ),
        ]);
        assert!(via(&e, "http://localhost:8080/").is_none());
        assert!(
            via(&e, "http://localhost/").is_some(),
            "only port 8080 bypasses"
        );
        assert!(via(&e, "http://192.168.1.5:3142/").is_none());
        assert!(via(&e, "http://192.168.1.6/").is_some());
        assert!(via(&e, "http://10.200.3.4/").is_none());
        assert!(via(&e, "http://11.0.0.1/").is_some());
        assert!(via(&e, "http://[::1]:9000/").is_none());
        assert!(via(&e, "http://[::1]:9001/").is_some());
        assert!(via(&e, "http://[fd12::1]/").is_none());
        // Names are not resolved: an address entry does not cover a name for it.
        assert!(via(&e, "http://host.local/").is_some());
        assert_eq!(
            e.route("http://10.1.1.1/"),
            Route::Bypassed("10.0.0.0/8".into())
        );
        let port = env(&[("https_proxy", "http://p:1"), ("no_proxy", "mirror:443")]);
        assert!(
            via(&port, "https://mirror/x").is_none(),
            "443 is https's port"
        );
        let all = env(&[("https_proxy", "http://p:1"), ("no_proxy", "a.b,*")]);
        assert!(via(&all, "https://anything/").is_none());
    }

    #[test]
    fn addresses_and_ranges_match_exactly() {
        assert!(in_range(
            "10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(!in_range(
            "10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            16
        ));
        assert!(in_range(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
        assert!(in_range(
            "1.2.3.4".parse().unwrap(),
            "1.2.3.4".parse().unwrap(),
            32
        ));
        assert!(!in_range(
            "::1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
        assert_eq!(parse_rule("1.2.3.4/33"), None);
        assert_eq!(parse_rule("host:port"), None);
        assert_eq!(
            parse_rule("::1"),
            Some(Rule::Ip {
                addr: "::1".parse().unwrap(),
                port: None
            })
        );
    }

    #[test]
    fn routes_are_described_without_passwords() {
        let e = env(&[("HTTPS_PROXY", "http://me:secret@proxy:3128/")]);
        let d = e.route("https://x/").describe();
        assert_eq!(d, "through http://me:***@proxy:3128/ (from HTTPS_PROXY)");
        assert_eq!(redact("proxy:3128"), "proxy:3128");
        assert_eq!(Route::Direct.describe(), "directly");
    }
}
