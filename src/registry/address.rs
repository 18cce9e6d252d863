//! Where the registry client may connect. A repository, a token realm or a redirect named by
//! someone else must not make the controller reach its own node: link-local addresses
//! (169.254.0.0/16 and fe80::/10, where instance metadata and credential endpoints answer), the
//! EC2 IPv6 service range (fd00:ec2::/64: metadata at fd00:ec2::254) and "this host" (0.0.0.0,
//! ::) are never contacted; loopback (127.0.0.0/8, ::1) only with `--registry-allow-loopback`.
//!
//! Three checks, because reqwest resolves names only when they are not IP literals:
//! - [`check_url`]: an IP-literal host, before a request or a token request is sent;
//! - [`GuardedResolver`]: every name the client resolves (registry, realm, redirect target), so a
//!   name that resolves to such an address is refused too (addresses that are allowed are kept);
//! - [`redirect_policy`]: each redirect target, before it is followed.
//!
//! A refusal is a [`Refused`] error somewhere in reqwest's error chain ([`refusal_in`] finds it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};
use tracing::debug;

/// Redirects followed for one request at most (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// Why an address is never contacted, or `None` when it may be.
pub(crate) fn forbidden(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4, allow_loopback),
        IpAddr::V6(v6) => forbidden_v6(v6, allow_loopback),
    }
}

const LINK_LOCAL: &str = "a link-local address (169.254.0.0/16, where instance metadata and credentials are served): \
                          never contacted";
const LOOPBACK: &str = "a loopback address: contacted only with --registry-allow-loopback";
const THIS_HOST: &str = "an unspecified address (it reaches this host): never contacted";

fn forbidden_v4(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    if ip.is_link_local() {
        Some(LINK_LOCAL)
    } else if ip.is_loopback() {
        (!allow_loopback).then_some(LOOPBACK)
    } else if ip.octets()[0] == 0 {
        Some(THIS_HOST)
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr, allow_loopback: bool) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        return (!allow_loopback).then_some(LOOPBACK);
    }
    if ip.is_unspecified() {
        return Some(THIS_HOST);
    }
    // An IPv4 address inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d) or NAT64
    // (64:ff9b::a.b.c.d). Judged as that IPv4 address.
    let embedded = match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
        }
        _ => None,
    };
    if let Some(v4) = embedded {
        return forbidden_v4(v4, allow_loopback);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some("an IPv6 link-local address (fe80::/10): never contacted");
    }
    if s[..4] == [0xfd00, 0x0ec2, 0, 0] {
        return Some(
            "in the EC2 IPv6 service range (fd00:ec2::/64, instance metadata at fd00:ec2::254): never contacted",
        );
    }
    None
}

/// A connection the client refused to make. Its message names the host and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refused {
    /// The host that was not contacted (a name or an IP address).
    pub host: String,
    /// The status of the redirect that named it, when a redirect did.
    pub redirect_status: Option<u16>,
    pub message: String,
}

/// The IP address of a URL whose host is an IP literal (the url crate has already turned forms
/// like `2852039166` or `0xa9.0xfe.0xa9.0xfe` into dotted IPv4).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Refuse a URL whose host is a forbidden IP literal; names are left to [`GuardedResolver`].
pub(crate) fn check_url(url: &Url, allow_loopback: bool) -> Result<(), Refused> {
    let Some(ip) = literal_ip(url) else {
        return Ok(());
    };
    match forbidden(ip, allow_loopback) {
        None => Ok(()),
        Some(why) => Err(Refused {
            host: ip.to_string(),
            redirect_status: None,
            message: format!("{ip} is {why}"),
        }),
    }
}

/// The system resolver (`getaddrinfo`, as reqwest's default), without the forbidden addresses; a
/// name left with none fails with a [`Refused`] naming them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuardedResolver {
    pub allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|a| forbidden(a.ip(), allow_loopback).is_none());
            if allowed.is_empty()
                && let Some(first) = refused.first()
            {
                let ip = first.ip();
                let why = forbidden(ip, allow_loopback).unwrap_or_default();
                let mut all: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                all.dedup();
                return Err(Box::new(Refused {
                    message: format!("{host} resolves only to {}, and {ip} is {why}", all.join(", ")),
                    host,
                    redirect_status: None,
                }) as Box<dyn std::error::Error + Send + Sync>);
            }
            if !refused.is_empty() {
                debug!(%host, ?refused, "dropped forbidden addresses from the answer");
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Follow redirects (ECR sends blob GETs to S3) only to allowed addresses and only over https, or
/// plain http to a `plain_http_hosts` entry. reqwest itself drops `Authorization` when a redirect
/// leaves the origin (scheme, host or port), so credentials never follow one.
pub(crate) fn redirect_policy(allow_loopback: bool, plain_http_hosts: Vec<String>) -> Policy {
    Policy::custom(move |attempt: Attempt<'_>| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let status = attempt.status().as_u16();
        let url = attempt.url();
        let shown = without_query(url);
        let refuse = |host: String, why: String| Refused {
            host,
            redirect_status: Some(status),
            message: format!("redirect to {shown} not followed: {why}"),
        };
        if let Err(r) = check_url(url, allow_loopback) {
            let e = refuse(r.host, r.message);
            return attempt.error(e);
        }
        let authority = authority(url);
        let allowed_scheme = match url.scheme() {
            "https" => true,
            "http" => plain_http_hosts.iter().any(|h| h.eq_ignore_ascii_case(&authority)),
            _ => false,
        };
        if !allowed_scheme {
            let e = refuse(
                authority,
                "only https is followed (plain http only to a --registry-plain-http host)".into(),
            );
            return attempt.error(e);
        }
        attempt.follow()
    })
}

/// `host[:port]` of a URL, the port only when it is not the scheme's default.
pub(crate) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// A URL for messages: no query (a presigned S3 URL carries its signature there) and no user info.
pub(crate) fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The [`Refused`] in an error's source chain, if the error is one.
pub(crate) fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_link_local_and_this_host_are_never_allowed() {
        for a in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "::",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            for allow_loopback in [false, true] {
                assert!(forbidden(ip(a), allow_loopback).is_some(), "{a} {allow_loopback}");
            }
        }
    }

    #[test]
    fn loopback_only_when_allowed() {
        for a in ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(forbidden(ip(a), false), Some(LOOPBACK), "{a}");
            assert_eq!(forbidden(ip(a), true), None, "{a}");
        }
    }

    #[test]
    fn ordinary_addresses_are_allowed() {
        for a in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "52.94.1.1",
            "169.253.255.255",
            "169.255.0.0",
            "2600:1f18::1",
            "fd00:ec3::254",
            "fd00:ec2:0:1::254",
            "fec0::1",
        ] {
            assert_eq!(forbidden(ip(a), false), None, "{a}");
        }
    }

    #[test]
    fn literal_hosts_in_every_spelling_are_checked() {
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "https://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://0251.0376.0251.0376/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://127.1:5000/v2/",
            "http://0/",
        ] {
            let url = Url::parse(u).unwrap();
            let e = check_url(&url, false).unwrap_err();
            assert!(
                e.message.contains("never contacted") || e.message.contains("loopback"),
                "{u}: {e}"
            );
        }
        let e = check_url(&Url::parse("https://2852039166/").unwrap(), true).unwrap_err();
        assert_eq!(e.host, "169.254.169.254");
        assert!(
            e.to_string().starts_with("169.254.169.254 is a link-local address"),
            "{e}"
        );
        for u in [
            "https://registry.example.com/v2/",
            "http://127.0.0.1:5000/v2/",
            "https://[::1]/",
        ] {
            assert!(check_url(&Url::parse(u).unwrap(), true).is_ok(), "{u}");
        }
        assert!(
            check_url(&Url::parse("https://localhost/").unwrap(), false).is_ok(),
            "names are resolved later"
        );
    }

    #[test]
    fn messages_hide_queries_and_user_info() {
        let url = Url::parse("https://u:p@bucket.s3.amazonaws.com/blob?X-Amz-Signature=secret#x").unwrap();
        assert_eq!(without_query(&url), "https://bucket.s3.amazonaws.com/blob");
        assert_eq!(
            authority(&Url::parse("https://Host.Example:443/x").unwrap()),
            "host.example"
        );
        assert_eq!(authority(&Url::parse("http://h:5000/x").unwrap()), "h:5000");
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_answers() {
        let name = |s: &str| s.parse::<Name>().unwrap();
        let strict = GuardedResolver { allow_loopback: false };
        let e = match strict.resolve(name("localhost")).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refused = refusal_in(e.as_ref()).expect("a Refused");
        assert_eq!(refused.host, "localhost");
        assert!(refused.message.starts_with("localhost resolves only to "), "{refused}");
        assert!(refused.message.contains("loopback"), "{refused}");
        let loose = GuardedResolver { allow_loopback: true };
        let addrs: Vec<SocketAddr> = loose.resolve(name("localhost")).await.unwrap().collect();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
    }
}
