//! Registry authentication: `WWW-Authenticate` challenges (Basic, Bearer token servers), where a
//! token realm may send us, and ECR authorization tokens. The parsing here is pure; the client
//! does the I/O.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Url;
use serde::Deserialize;

use super::address::{authority, without_query};
use super::credentials::{AuthHost, Credential, HostCredentials};

/// How the client authenticates to registries. `Debug` never shows a password.
#[derive(Clone, Default)]
pub enum RegistryAuth {
    /// No credentials; Bearer token servers are still asked for anonymous tokens.
    #[default]
    Anonymous,
    /// Usernames and passwords (or tokens), each sent only for the registry host it is bound to:
    /// as Basic auth to that host, or to that host's token server to obtain Bearer tokens. Other
    /// hosts are talked to anonymously.
    Basic(HostCredentials),
    /// ECR: `GetAuthorizationToken`, sent as Basic `AWS:<password>` to ECR hosts only, refreshed
    /// before its 12 h expiry and after a 401. Other hosts are talked to anonymously.
    Ecr(aws_sdk_ecr::Client),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic(credentials) => f.debug_tuple("Basic").field(credentials).finish(),
            RegistryAuth::Ecr(_) => f.write_str("Ecr"),
        }
    }
}

impl RegistryAuth {
    /// Basic credentials for one registry host (`host[:port]`).
    pub fn basic(host: &str, username: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Basic(HostCredentials::bind(host, username, password))
    }

    /// The username and password bound to `host` (`host[:port]` as the client talks to it).
    pub(crate) fn credential_for(&self, host: &str) -> Option<&Credential> {
        match self {
            RegistryAuth::Basic(c) => c.get(host),
            RegistryAuth::Anonymous | RegistryAuth::Ecr(_) => None,
        }
    }
}

/// Token servers of well-known registries on another host than the registry's: Docker Hub
/// (`docker.io` → `index.docker.io`) sends clients to `auth.docker.io`.
const KNOWN_AUTH_HOSTS: &[(&str, &str)] = &[("index.docker.io", "auth.docker.io")];

/// The realm of a Bearer challenge from the registry at `registry` (its `/v2/` base URL), if it
/// may be followed: https, or http to a `plain_http_hosts` entry (`host:port` as written); no user
/// info; on the registry's own host name (any port) or on an auth host listed for the registry in
/// `auth_hosts` (or [`KNOWN_AUTH_HOSTS`]). Otherwise why not; nothing is sent to a refused realm.
/// Which addresses may be contacted is checked apart (`address`).
pub(crate) fn check_realm(
    realm: &str,
    registry: &Url,
    plain_http_hosts: &[String],
    auth_hosts: &[AuthHost],
) -> Result<Url, String> {
    let url = Url::parse(realm).map_err(|e| format!("its token realm {realm:?} is not a URL: {e}"))?;
    let shown = without_query(&url);
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "its token realm {shown} carries user info, which is never followed"
        ));
    }
    let realm_authority = authority(&url);
    match url.scheme() {
        "https" => {}
        "http"
            if plain_http_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&realm_authority)) => {}
        "http" => {
            return Err(format!(
                "its token realm {shown} is plain http: only https is followed (plain http only to a \
                 --registry-plain-http host)"
            ));
        }
        other => return Err(format!("its token realm {shown} is {other}, not https")),
    }
    let (Some(realm_host), Some(realm_port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(format!("its token realm {shown} has no host"));
    };
    let registry_host = registry.host_str().unwrap_or_default();
    let registry_port = registry.port_or_known_default().unwrap_or(443);
    if realm_host.eq_ignore_ascii_case(registry_host) {
        return Ok(url);
    }
    let listed = auth_hosts
        .iter()
        .any(|a| a.registry.matches(registry_host, registry_port) && a.auth_host.matches(realm_host, realm_port));
    let known = KNOWN_AUTH_HOSTS
        .iter()
        .any(|(r, a)| registry_host.eq_ignore_ascii_case(r) && realm_host.eq_ignore_ascii_case(a));
    if listed || known {
        return Ok(url);
    }
    Err(format!(
        "its token realm {shown} is on another host ({realm_host}), not listed for {} with --registry-auth-host",
        authority(registry)
    ))
}

/// An authentication challenge from a 401 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Parse a `WWW-Authenticate` value: `Basic realm="…"` or
/// `Bearer realm="…",service="…",scope="…"`. Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm").filter(|r| r.starts_with("https://") || r.starts_with("http://"))?;
    Some(Challenge::Bearer {
        realm,
        service: get("service"),
    })
}

/// `k1="v1", k2=v2` → pairs, honouring quotes and backslash escapes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// `Basic base64(user:password)`.
pub fn basic_header(username: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
}

/// The answer of a Bearer token server.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token and how long to use it, from a token server body. Tokens without `expires_in` live 60 s
/// (the distribution spec's default); we stop using them 10 s early.
pub fn parse_token_response(body: &[u8]) -> Option<(String, Duration)> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let token = r.token.or(r.access_token).filter(|t| !t.is_empty())?;
    let ttl = r.expires_in.unwrap_or(60).clamp(10, 24 * 3600);
    Some((token, Duration::from_secs(ttl - 5)))
}

/// Whether `host` is an ECR registry endpoint (`<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`
/// or the dual-stack `<account>.dkr-ecr[-fips].<region>.on.aws`). ECR credentials are sent to these
/// hosts only, never to a registry they do not belong to.
pub fn is_ecr_host(host: &str) -> bool {
    crate::tenancy::EcrHost::parse(host).is_some()
}

/// An ECR authorization token, ready to send.
#[derive(Clone, Debug)]
pub struct EcrToken {
    /// `Basic <token>`: the token already is base64 of `AWS:<password>`.
    pub header: String,
    /// When to fetch a new one: 30 minutes before it expires, and not within the next minute.
    pub refresh_at: SystemTime,
}

/// How long before expiry an ECR token is replaced.
pub const ECR_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);

/// The shortest time an ECR token is used before it is fetched again.
pub const ECR_MIN_CACHE: Duration = Duration::from_secs(60);

/// Check and wrap a `GetAuthorizationToken` answer. The token must be base64 of `AWS:<password>`.
/// Without `expiresAt` the documented 12 h validity is assumed.
pub fn ecr_token(token: &str, expires_at: Option<SystemTime>, now: SystemTime) -> Result<EcrToken, String> {
    let decoded = BASE64
        .decode(token.trim())
        .map_err(|_| "the authorization token is not base64".to_string())?;
    let decoded = String::from_utf8(decoded).map_err(|_| "the authorization token is not UTF-8".to_string())?;
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
        _ => return Err("the authorization token is not of the form user:password".into()),
    }
    let expires_at = expires_at.unwrap_or(now + Duration::from_secs(12 * 3600));
    // Never sooner than a minute from now, even for a token that claims to expire sooner (clock
    // skew, fakes): a 401 drops the token anyway, and GetAuthorizationToken is not called per request.
    let refresh_at = expires_at
        .checked_sub(ECR_REFRESH_MARGIN)
        .unwrap_or(now)
        .max(now + ECR_MIN_CACHE);
    Ok(EcrToken {
        header: format!("Basic {}", token.trim()),
        refresh_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let a = RegistryAuth::basic("registry.example.com", "u", "hunter2");
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(format!("{a:?}").contains("registry.example.com"));
    }

    #[test]
    fn credentials_are_for_their_host_only() {
        let a = RegistryAuth::basic("127.0.0.2:5000", "u", "p");
        assert_eq!(
            a.credential_for("127.0.0.2:5000").map(|c| c.username.as_str()),
            Some("u")
        );
        for other in ["127.0.0.3:5000", "127.0.0.2:5001", "127.0.0.2", "auth.example.com"] {
            assert!(a.credential_for(other).is_none(), "{other}");
        }
        assert!(RegistryAuth::Anonymous.credential_for("127.0.0.2:5000").is_none());
    }

    #[test]
    fn realms_on_the_registry_host_over_https_are_followed() {
        let reg = Url::parse("https://registry.example.com/v2/app").unwrap();
        let plain = Url::parse("http://127.0.0.2:5000/v2/app").unwrap();
        let hub = Url::parse("https://index.docker.io/v2/library/ubuntu").unwrap();
        let hosts = vec!["127.0.0.2:5000".to_string(), "127.0.0.3:5001".to_string()];
        let listed = vec![
            AuthHost::parse("registry.example.com=auth.example.com").unwrap(),
            AuthHost::parse("127.0.0.2:5000=127.0.0.3:5001").unwrap(),
        ];
        let ok = |realm: &str, registry: &Url| check_realm(realm, registry, &hosts, &listed);
        assert!(ok("https://registry.example.com/token", &reg).is_ok());
        assert!(
            ok("https://REGISTRY.example.com:8443/token?x=1", &reg).is_ok(),
            "own host, any port"
        );
        assert!(ok("https://auth.example.com/token", &reg).is_ok(), "listed");
        assert!(ok("http://127.0.0.2:5000/token", &plain).is_ok(), "plain http host");
        assert!(
            ok("http://127.0.0.3:5001/token", &plain).is_ok(),
            "listed, plain http host"
        );
        assert!(ok("https://auth.docker.io/token", &hub).is_ok(), "Docker Hub's");
        for (realm, registry, why) in [
            ("https://evil.example/token", &reg, "on another host (evil.example)"),
            ("https://auth.example.com/token", &plain, "on another host"),
            ("https://auth.docker.io/token", &reg, "on another host"),
            ("http://registry.example.com/token", &reg, "plain http"),
            ("http://127.0.0.2:5001/token", &plain, "plain http"),
            ("http://127.0.0.3:5000/token", &plain, "plain http"),
            ("https://127.0.0.3:5002/token", &plain, "on another host"),
            ("https://u:secret@registry.example.com/token", &reg, "user info"),
            ("ftp://registry.example.com/token", &reg, "not https"),
            ("not a url", &reg, "not a URL"),
        ] {
            let e = ok(realm, registry).unwrap_err();
            assert!(e.contains(why), "{realm}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let e = ok("https://evil.example/token?account=x", &reg).unwrap_err();
        assert_eq!(
            e,
            "its token realm https://evil.example/token is on another host (evil.example), not listed for \
             registry.example.com with --registry-auth-host"
        );
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, service="a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("a\"b".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge(r#"Bearer realm="file:///etc/passwd""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn token_responses() {
        let (t, ttl) = parse_token_response(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("abc", Duration::from_secs(295)));
        let (t, _) = parse_token_response(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t, "xyz");
        assert!(parse_token_response(br#"{"token":""}"#).is_none());
        assert!(parse_token_response(b"nope").is_none());
    }

    #[test]
    fn ecr_hosts() {
        for h in [
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "123456789012.dkr-ecr.us-east-1.on.aws",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
        ] {
            assert!(is_ecr_host(h), "{h}");
        }
        for h in [
            "127.0.0.1:5000",
            "ghcr.io",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
            "evil.example/123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert!(!is_ecr_host(h), "{h}");
        }
    }

    #[test]
    fn ecr_tokens_are_checked_and_refreshed_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = BASE64.encode("AWS:secret");
        let t = ecr_token(&token, Some(now + Duration::from_secs(12 * 3600)), now).unwrap();
        assert_eq!(t.header, format!("Basic {token}"));
        assert_eq!(t.refresh_at, now + Duration::from_secs(12 * 3600) - ECR_REFRESH_MARGIN);
        let soon = ecr_token(&token, Some(now + Duration::from_secs(60)), now).unwrap();
        assert_eq!(soon.refresh_at, now + ECR_MIN_CACHE);
        let past = ecr_token(&token, Some(SystemTime::UNIX_EPOCH), now).unwrap();
        assert_eq!(past.refresh_at, now + ECR_MIN_CACHE, "moto answers expiresAt 2015");
        let default = ecr_token(&token, None, now).unwrap();
        assert!(default.refresh_at > now + Duration::from_secs(11 * 3600));
        assert!(ecr_token("!!!", None, now).is_err());
        assert!(ecr_token(&BASE64.encode("nocolon"), None, now).is_err());
        assert_eq!(basic_header("AWS", "secret"), format!("Basic {token}"));
    }
}
