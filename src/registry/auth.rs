//! Registry authentication: `WWW-Authenticate` challenges (Basic, Bearer token servers) and ECR
//! authorization tokens. The parsing here is pure; the client does the I/O.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

/// How the client authenticates to registries. `Debug` never shows the password.
#[derive(Clone, Default)]
pub enum RegistryAuth {
    /// No credentials; Bearer token servers are still asked for anonymous tokens.
    #[default]
    Anonymous,
    /// A username and password (or token) for Basic auth, or to obtain Bearer tokens.
    Basic { username: String, password: String },
    /// ECR: `GetAuthorizationToken`, sent as Basic `AWS:<password>` to ECR hosts only, refreshed
    /// before its 12 h expiry and after a 401. Other hosts are talked to anonymously.
    Ecr(aws_sdk_ecr::Client),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RegistryAuth::Ecr(_) => f.write_str("Ecr"),
        }
    }
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
    let host = host.to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    let account_ok = labels
        .first()
        .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
    let region_ok = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    account_ok
        && match labels.as_slice() {
            [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"]
            | [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"]
            | [_, "dkr-ecr" | "dkr-ecr-fips", region, "on", "aws"] => region_ok(region),
            _ => false,
        }
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
        let a = RegistryAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
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
