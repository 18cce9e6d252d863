//! Registry credentials bound to hosts: each username/password is sent to the one registry host
//! it is listed under, and nowhere else. They come from a Docker `config.json` (what a Secret of
//! type `kubernetes.io/dockerconfigjson` holds, and what `docker login` writes).
//!
//! Also the `REGISTRY=AUTHHOST` pairs naming the token servers a registry may send us to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::Value;

/// Auth files larger than this are refused (a real one is a few hundred bytes).
const MAX_AUTH_FILE: u64 = 1024 * 1024;

/// A username and password (or token). `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials by the registry host (`host[:port]`, lowercase) each is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCredentials {
    by_host: BTreeMap<String, Credential>,
}

impl HostCredentials {
    /// One credential for `host` (`host[:port]`, or a Docker config key such as
    /// `https://index.docker.io/v1/`).
    pub fn bind(host: &str, username: &str, password: &str) -> HostCredentials {
        let mut c = HostCredentials::default();
        c.by_host.insert(
            registry_key(host).unwrap_or_else(|_| host.to_ascii_lowercase()),
            Credential {
                username: username.into(),
                password: password.into(),
            },
        );
        c
    }

    /// The credential bound to exactly this registry host (`host[:port]` as the client talks to
    /// it: `index.docker.io` for Docker Hub).
    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    /// The hosts that have a credential.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// Parse a Docker `config.json`: `{"auths": {"HOST": {"auth": "base64(user:password)"}}}`, or
    /// `username` and `password` in place of `auth`. Entries kept by a credential helper
    /// (`credsStore`, `credHelpers`, empty entries) are skipped: the operator cannot run helpers,
    /// so a file with nothing else is an error. Messages never quote a secret.
    pub fn from_docker_config(bytes: &[u8]) -> Result<HostCredentials, String> {
        // Into a Value first: serde_json's syntax errors give a position, never the text, and
        // every later message is ours.
        let config: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let Value::Object(config) = config else {
            return Err("not a JSON object".into());
        };
        let helpers = helper_names(&config);
        let auths = match config.get("auths") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => return Err("\"auths\" is not an object".into()),
        };
        let mut out = HostCredentials::default();
        for (key, entry) in &auths {
            let host = registry_key(key).map_err(|e| format!("\"auths\" key {key:?}: {e}"))?;
            let Value::Object(entry) = entry else {
                return Err(format!("the \"auths\" entry for {key:?} is not an object"));
            };
            let Some(credential) = credential(entry).map_err(|e| format!("the \"auths\" entry for {key:?}: {e}"))?
            else {
                if helpers.is_empty() {
                    return Err(format!(
                        "the \"auths\" entry for {key:?} has no \"auth\" and no \"username\"/\"password\""
                    ));
                }
                continue; // kept by a credential helper
            };
            match out.by_host.get(&host) {
                Some(existing) if *existing != credential => {
                    return Err(format!("two \"auths\" entries for {host} with different credentials"));
                }
                _ => {
                    out.by_host.insert(host, credential);
                }
            }
        }
        if out.is_empty() {
            return Err(if helpers.is_empty() {
                "no credentials in \"auths\"".into()
            } else {
                format!(
                    "the credentials are kept by a credential helper ({}), which the operator cannot run: put them \
                     in \"auths\" as \"auth\": base64(user:password) (kubectl create secret docker-registry does)",
                    helpers.join(", ")
                )
            });
        }
        Ok(out)
    }

    /// Read and parse a Docker `config.json`; errors name the file.
    pub fn load(path: &Path) -> Result<HostCredentials, String> {
        let fail = |what: String| format!("registry auth file {}: {what}", path.display());
        let len = std::fs::metadata(path)
            .map_err(|e| fail(format!("cannot read it: {e}")))?
            .len();
        if len > MAX_AUTH_FILE {
            return Err(fail(format!("{len} bytes, more than the {MAX_AUTH_FILE} accepted")));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        Self::from_docker_config(&bytes).map_err(fail)
    }
}

/// `credsStore "x"` and `credHelpers for h1, h2`, for messages.
fn helper_names(config: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::String(store)) = config.get("credsStore")
        && !store.is_empty()
    {
        out.push(format!("credsStore {store:?}"));
    }
    if let Some(Value::Object(helpers)) = config.get("credHelpers")
        && !helpers.is_empty()
    {
        let hosts: Vec<&str> = helpers.keys().map(String::as_str).collect();
        out.push(format!("credHelpers for {}", hosts.join(", ")));
    }
    out
}

/// The credential of one `auths` entry; `None` when it has none (kept by a helper).
fn credential(entry: &serde_json::Map<String, Value>) -> Result<Option<Credential>, String> {
    let text = |name: &str| match entry.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("{name:?} is not a string")),
    };
    if let Some(auth) = text("auth")? {
        let decoded = STANDARD
            .decode(auth.trim())
            .or_else(|_| STANDARD_NO_PAD.decode(auth.trim()))
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or("\"auth\" is not base64 of user:password")?;
        return match decoded.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Some(Credential {
                username: user.into(),
                password: password.into(),
            })),
            _ => Err("\"auth\" is not base64 of user:password".into()),
        };
    }
    match (text("username")?, text("password")?) {
        (Some(username), Some(password)) => Ok(Some(Credential {
            username: username.into(),
            password: password.into(),
        })),
        (Some(_), None) => Err("\"username\" without \"password\"".into()),
        (None, Some(_)) => Err("\"password\" without \"username\"".into()),
        (None, None) if text("identitytoken")?.is_some() || text("registrytoken")?.is_some() => Err(
            "only an \"identitytoken\"/\"registrytoken\", which is not supported: give \"auth\" or \
                 \"username\"/\"password\""
                .into(),
        ),
        (None, None) => Ok(None),
    }
}

/// A registry host as written in a Docker config key or a flag, normalised: `https://` or
/// `http://` and any path dropped, lowercase, `docker.io` → `index.docker.io` (the host the
/// client talks to for Docker Hub, where `https://index.docker.io/v1/` keys point).
pub(crate) fn registry_key(key: &str) -> Result<String, String> {
    let rest = key.trim();
    let rest = rest
        .strip_prefix("https://")
        .or_else(|| rest.strip_prefix("http://"))
        .unwrap_or(rest);
    let host = rest.split('/').next().unwrap_or_default().to_ascii_lowercase();
    HostPattern::parse(&host)?;
    Ok(if host == "docker.io" {
        "index.docker.io".into()
    } else {
        host
    })
}

/// `host` or `host:port` (`[v6]:port`); without a port it matches any port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase, IPv6 without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        let bad = |why: &str| Err(format!("{s:?} is not host[:port]: {why}"));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.contains("://") || s.contains('/') || s.contains('@') || s.contains(char::is_whitespace) {
            return bad("give the host alone, without scheme, path or user");
        }
        let (host, port) = if let Some(v6) = s.strip_prefix('[') {
            let Some((host, rest)) = v6.split_once(']') else {
                return bad("unclosed [");
            };
            match rest.strip_prefix(':') {
                Some(p) => (host.to_string(), Some(p)),
                None if rest.is_empty() => (host.to_string(), None),
                None => return bad("unexpected text after ]"),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return bad("write an IPv6 address in brackets"),
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.clone(), None),
            }
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return bad("the port is not a number from 1 to 65535"),
            },
            None => None,
        };
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !name_ok {
            return bad("the host has characters a host name cannot have");
        }
        Ok(HostPattern { host, port })
    }

    /// Whether `host` with its (explicit or default) `port` is this.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host
            .eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'))
            && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

/// `REGISTRY=AUTHHOST`: a Bearer token server (`realm`) host the registry may send us to besides
/// its own host. Either side may carry a port; without one it matches any port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthHost {
    pub registry: HostPattern,
    pub auth_host: HostPattern,
}

impl AuthHost {
    /// Parse `REGISTRY=AUTHHOST` (the clap value parser of `--registry-auth-host`).
    pub fn parse(s: &str) -> Result<AuthHost, String> {
        let Some((registry, auth_host)) = s.split_once('=') else {
            return Err(format!("{s:?} is not REGISTRY=AUTHHOST"));
        };
        let registry = HostPattern::parse(&registry_key(registry)?)?;
        let auth_host = HostPattern::parse(auth_host)?;
        Ok(AuthHost { registry, auth_host })
    }
}

/// A Docker `config.json` read at start (the clap value of `--registry-auth-file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFile {
    pub path: PathBuf,
    pub credentials: HostCredentials,
}

impl AuthFile {
    /// Read and check the file now, so a bad one stops the program at start with one line.
    pub fn parse(path: &str) -> Result<AuthFile, String> {
        let path = PathBuf::from(path);
        let credentials = HostCredentials::load(&path)?;
        Ok(AuthFile { path, credentials })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn docker_config_entries_are_bound_to_their_hosts() {
        let json = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:hubpass")},
                "Registry.Example.com:5000": {"auth": b64("u:p:with:colons")},
                "http://127.0.0.2:5000/v2/": {"username": "local", "password": "pw", "email": "x@y"},
                "ghcr.io": {},
            },
            "credsStore": "desktop",
        });
        let c = HostCredentials::from_docker_config(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            c.hosts().collect::<Vec<_>>(),
            ["127.0.0.2:5000", "index.docker.io", "registry.example.com:5000"]
        );
        assert_eq!(c.get("index.docker.io").unwrap().username, "hub");
        assert_eq!(c.get("registry.example.com:5000").unwrap().password, "p:with:colons");
        assert_eq!(c.get("127.0.0.2:5000").unwrap().username, "local");
        assert!(c.get("registry.example.com").is_none(), "bound to the port too");
        assert!(c.get("127.0.0.3:5000").is_none());
        assert!(c.get("ghcr.io").is_none(), "kept by the helper");
        assert!(!format!("{c:?}").contains("hubpass"));
    }

    #[test]
    fn bad_files_say_what_is_wrong_without_secrets() {
        let secret = b64("user:TOPSECRET");
        for (json, expected) in [
            ("{", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"auths": "TOPSECRET"}"#, "\"auths\" is not an object"),
            (r#"{"auths": {"h": "TOPSECRET"}}"#, "entry for \"h\" is not an object"),
            (
                r#"{"auths": {"h": {"auth": "TOPSECRET!!"}}}"#,
                "not base64 of user:password",
            ),
            (
                &format!(r#"{{"auths": {{"h": {{"auth": "{}"}}}}}}"#, b64("TOPSECRET")),
                "not base64 of user:password",
            ),
            (
                r#"{"auths": {"h": {"username": "u"}}}"#,
                "\"username\" without \"password\"",
            ),
            (
                r#"{"auths": {"h": {"password": "TOPSECRET"}}}"#,
                "\"password\" without \"username\"",
            ),
            (r#"{"auths": {"h": {"auth": 12345}}}"#, "\"auth\" is not a string"),
            (r#"{"auths": {"h": {"identitytoken": "TOPSECRET"}}}"#, "not supported"),
            (r#"{"auths": {"h": {}}}"#, "has no \"auth\""),
            (r#"{"auths": {}}"#, "no credentials in \"auths\""),
            (
                r#"{"credsStore": "desktop", "auths": {"h": {}}}"#,
                "credential helper (credsStore \"desktop\")",
            ),
            (r#"{"credHelpers": {"gcr.io": "gcloud"}}"#, "credHelpers for gcr.io"),
            (
                &format!(
                    r#"{{"auths": {{"h/x": {{"auth": "{secret}"}}, "https://h/": {{"auth": "{}"}}}}}}"#,
                    b64("o:p")
                ),
                "two \"auths\" entries for h",
            ),
            (
                &format!(r#"{{"auths": {{"user@h": {{"auth": "{secret}"}}}}}}"#),
                "is not host[:port]",
            ),
        ] {
            let e = HostCredentials::from_docker_config(json.as_bytes()).unwrap_err();
            assert!(e.contains(expected), "{json}: {e}");
            assert!(!e.contains("TOPSECRET") && !e.contains(&secret), "{json}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let e = HostCredentials::load(&path).unwrap_err();
        assert!(
            e.starts_with(&format!("registry auth file {}: cannot read it", path.display())),
            "{e}"
        );
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "!"}}}"#).unwrap();
        let e = AuthFile::parse(path.to_str().unwrap()).unwrap_err();
        assert!(
            e.starts_with(&format!("registry auth file {}: ", path.display())),
            "{e}"
        );
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"h:1": {{"auth": "{}"}}}}}}"#, b64("a:b")),
        )
        .unwrap();
        let f = AuthFile::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(f.credentials, HostCredentials::bind("h:1", "a", "b"));
    }

    #[test]
    fn host_patterns_and_auth_hosts() {
        let p = HostPattern::parse("Auth.Example.com").unwrap();
        assert!(p.matches("auth.example.com", 443) && p.matches("AUTH.example.com", 8443));
        let p = HostPattern::parse("auth.example.com:8443").unwrap();
        assert!(p.matches("auth.example.com", 8443) && !p.matches("auth.example.com", 443));
        let p = HostPattern::parse("[::1]:5000").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", Some(5000)));
        assert!(p.matches("[::1]", 5000));
        assert_eq!(p.to_string(), "[::1]:5000");
        for bad in [
            "",
            "https://x",
            "x/y",
            "u@x",
            "x:0",
            "x:99999",
            "x:y",
            "[::1",
            "::1",
            "a b",
            "x;y",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        let a = AuthHost::parse("docker.io=auth.docker.io").unwrap();
        assert_eq!(a.registry.host, "index.docker.io");
        assert_eq!(a.auth_host.host, "auth.docker.io");
        let a = AuthHost::parse("registry.gitlab.com=gitlab.com:443").unwrap();
        assert_eq!(a.auth_host.port, Some(443));
        for bad in ["x", "=y", "x=", "x=https://y/token"] {
            assert!(AuthHost::parse(bad).is_err(), "{bad:?}");
        }
    }
}
