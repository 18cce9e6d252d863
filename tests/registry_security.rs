//! Where the registry client sends credentials and what it connects to, shown with recording
//! listeners: small HTTP servers on loopback addresses (127.0.0.2, 127.0.0.3, … are distinct
//! "hosts": Linux routes all of 127.0.0.0/8 to `lo`) that record every connection and request
//! and answer what each test scripts, or pass requests on to a real Debian `docker-registry`.
//!
//! - credentials bound to one host never reach another host;
//! - a token realm on another host, over plain http, or on a metadata address is refused, and
//!   its listener gets nothing (a loopback realm without `--registry-allow-loopback` is the unit
//!   test `a_loopback_realm_is_refused_without_allow_loopback`: here the registries are on
//!   loopback, so loopback must be allowed);
//! - a redirect to a metadata address, or to plain http, is refused; a cross-host redirect (ECR's
//!   blobs on S3) is followed without the credentials;
//! - a repository on a metadata or loopback address fails before any request.
//!
//! No test sends anything to 169.254.169.254 or fd00:ec2::254: the client must refuse before
//! connecting, which each test shows by the error (a connection attempt there would end as
//! `RegistryUnavailable` after retries, not as these refusals) and by the request observer
//! hearing of no attempt.
//!
//! The tests that need a real registry are skipped with a loud message when `docker-registry` is
//! not installed (`apt-get install -y docker-registry`).

// Helpers outside #[test] fns fail loudly too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use clap::Parser as _;
use multiarch_operator::api::{IndexMediaType, Platform};
use multiarch_operator::cli::{Cli, Command, RegistryArgs};
use multiarch_operator::registry::{
    AuthFile, AuthHost, Existing, IndexRequest, RegistryAuth, RegistryClient, RegistryError, RegistryObject,
    RegistryOptions, RequestObserver, RetryPolicy, ReuseExpectation,
};
use reqwest::{Method, StatusCode};
use support::{ImageSpec, Pusher};

const AMD64_ARM64: [Platform; 2] = [Platform::LinuxAmd64, Platform::LinuxArm64];

// ---------------------------------------------------------------------------------------------
// The recording listener.

/// One request as a listener saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

/// What a listener answers.
enum Reply {
    /// This status, headers and body.
    With(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Pass the request on to `http://<upstream>` (without its Authorization) and answer what it
    /// answers.
    Forward(String),
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply::With(status, Vec::new(), Vec::new())
    }

    /// 401 with this `WWW-Authenticate`.
    fn challenge(www_authenticate: String) -> Reply {
        Reply::With(
            401,
            vec![
                ("www-authenticate", www_authenticate),
                ("content-type", "application/json".into()),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        )
    }

    /// A redirect to `location`.
    fn redirect(status: u16, location: String) -> Reply {
        Reply::With(status, vec![("location", location)], Vec::new())
    }

    /// 404 MANIFEST_UNKNOWN: "no such tag".
    fn unknown_manifest() -> Reply {
        Reply::With(
            404,
            vec![("content-type", "application/json".into())],
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
        )
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct ListenerState {
    script: Script,
    seen: Mutex<Vec<Seen>>,
    http: reqwest::Client,
}

/// A bound, not yet serving, listener: its address is known before its script is written.
struct Bound {
    listener: tokio::net::TcpListener,
    /// `ip:port`
    host: String,
}

impl Bound {
    async fn on(ip: &str) -> Bound {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        Bound {
            listener,
            host: addr.to_string(),
        }
    }

    fn serve(self, script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Recorder {
        let state = Arc::new(ListenerState {
            script: Arc::new(script),
            seen: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let listener = self.listener.tap_io(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let app = axum::Router::new().fallback(record).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            host: self.host,
            state,
            connections,
            task,
        }
    }
}

/// A listener that records every connection and request and answers what its script says.
struct Recorder {
    /// `ip:port`
    host: String,
    state: Arc<ListenerState>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(ip: &str, script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Recorder {
        Bound::on(ip).await.serve(script)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Nothing reached this listener: no connection, no request.
    fn assert_untouched(&self, why: &str) {
        assert_eq!(self.connections(), 0, "{why}: {} got connections", self.host);
        assert!(self.seen().is_empty(), "{why}: {} got {:?}", self.host, self.seen());
    }

    fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    axum::extract::State(state): axum::extract::State<Arc<ListenerState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let seen = Seen {
        method: req.method().to_string(),
        uri: req.uri().path_and_query().map(ToString::to_string).unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    };
    state.seen.lock().expect("seen").push(seen.clone());
    match (state.script)(&seen) {
        Reply::With(status, headers, body) => respond(status, &headers, body),
        Reply::Forward(upstream) => {
            let method = Method::from_bytes(seen.method.as_bytes()).expect("method");
            let mut fwd = state.http.request(method, format!("http://{upstream}{}", seen.uri));
            for name in ["accept", "content-type"] {
                if let Some(v) = seen.header(name) {
                    fwd = fwd.header(name, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
                .await
                .expect("request body");
            let answer = fwd.body(body).send().await.expect("forward");
            let status = answer.status().as_u16();
            let headers: Vec<(&'static str, String)> = ["content-type", "docker-content-digest", "location"]
                .into_iter()
                .filter_map(|h| {
                    answer
                        .headers()
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| (h, v.to_string()))
                })
                .collect();
            let body = answer.bytes().await.expect("upstream body").to_vec();
            respond(status, &headers, body)
        }
    }
}

fn respond(status: u16, headers: &[(&'static str, String)], body: Vec<u8>) -> axum::response::Response {
    let mut b = axum::http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(axum::body::Body::from(body)).expect("response")
}

// ---------------------------------------------------------------------------------------------
// Clients.

fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

/// A Docker config.json with `user:password` for each host.
fn docker_config(entries: &[(&str, &str, &str)]) -> tempfile::NamedTempFile {
    use base64::Engine as _;
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(host, user, password)| {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            (host.to_string(), serde_json::json!({ "auth": auth }))
        })
        .collect();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), serde_json::json!({ "auths": auths }).to_string()).expect("write");
    file
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    }
}

/// Every attempt the client reports, as `METHOD manifests|blobs -> STATUS|none`.
#[derive(Debug, Default)]
struct Attempts(Mutex<Vec<String>>);

impl Attempts {
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("attempts").clone()
    }
}

impl RequestObserver for Attempts {
    fn attempted(&self, method: &Method, object: RegistryObject, status: Option<StatusCode>) {
        let status = status.map_or_else(|| "none".to_string(), |s| s.as_u16().to_string());
        self.0
            .lock()
            .expect("attempts")
            .push(format!("{method} {} -> {status}", object.path_segment()));
    }
}

/// A client with `auth`, plain http to `plain`, the `auth_hosts` pairs, loopback as said, fast
/// retries, and an observer.
fn client(
    auth: RegistryAuth,
    plain: &[&str],
    auth_hosts: &[&str],
    allow_loopback: bool,
) -> (RegistryClient, Arc<Attempts>) {
    let attempts = Arc::new(Attempts::default());
    let c = RegistryClient::with_retry_policy(
        RegistryOptions {
            auth,
            plain_http_hosts: plain.iter().map(ToString::to_string).collect(),
            auth_hosts: auth_hosts
                .iter()
                .map(|a| AuthHost::parse(a).expect("auth host"))
                .collect(),
            allow_loopback,
            observer: Some(Arc::clone(&attempts) as Arc<dyn RequestObserver>),
        },
        fast_retries(),
    );
    (c, attempts)
}

async fn find(c: &RegistryClient, repository: &str) -> Result<Existing, RegistryError> {
    c.find_existing_index(repository, "v1", &AMD64_ARM64, ReuseExpectation::Unpinned("main"))
        .await
}

/// The index of two images, children by digest.
fn request(children: &[(Platform, String)]) -> IndexRequest<'_> {
    IndexRequest {
        media_type: IndexMediaType::Oci,
        children,
        expected: None,
        annotations: BTreeMap::new(),
    }
}

/// A refusal: permanent, quick (no connection timeout, no retries), the message naming `names`.
fn assert_refused(e: &RegistryError, label: &str, names: &[&str], took: Duration) {
    assert_eq!(e.label(), label, "{e}");
    assert!(!e.is_transient(), "{e}");
    let message = e.to_string();
    for n in names {
        assert!(message.contains(n), "{message:?} does not name {n:?}");
    }
    assert!(took < Duration::from_secs(5), "took {took:?}: {e}");
}

// ---------------------------------------------------------------------------------------------
// Credentials are bound to their host.

#[tokio::test]
async fn credentials_bound_to_one_host_never_reach_another() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    let arm = p.image("demo", "v1-arm64", ImageSpec::oci("arm64")).await;
    let kids = vec![(Platform::LinuxAmd64, amd.digest), (Platform::LinuxArm64, arm.digest)];

    // Host A: the real registry behind a listener that wants A's Basic credentials.
    let upstream = reg.host.clone();
    let a = Recorder::start("127.0.0.2", move |req| {
        if req.authorization() == Some(basic("a-user", "a-pass").as_str()) {
            Reply::Forward(upstream.clone())
        } else {
            Reply::challenge("Basic realm=\"a\"".into())
        }
    })
    .await;
    // Host B, Basic: asks every request for credentials.
    let b = Recorder::start("127.0.0.3", |_| Reply::challenge("Basic realm=\"b\"".into())).await;
    // Host C, Bearer: its own token server, which hands out anonymous tokens.
    let c_bound = Bound::on("127.0.0.4").await;
    let c_host = c_bound.host.clone();
    let c = c_bound.serve(move |req| {
        if req.path() == "/token" {
            Reply::With(200, Vec::new(), br#"{"token":"anonymous"}"#.to_vec())
        } else if req.authorization() == Some("Bearer anonymous") {
            Reply::unknown_manifest()
        } else {
            Reply::challenge(format!("Bearer realm=\"http://{c_host}/token\",service=\"c\""))
        }
    });
    // The same IP as A on another port is another host too.
    let a2 = Recorder::start("127.0.0.2", |_| Reply::challenge("Basic realm=\"a2\"".into())).await;

    // Credentials for A, from a Docker config.json, through the controller's own wiring.
    let file = docker_config(&[(&format!("https://{}/v1/", a.host), "a-user", "a-pass")]);
    let args = RegistryArgs {
        registry_plain_http: vec![a.host.clone(), b.host.clone(), c.host.clone(), a2.host.clone()],
        registry_auth_file: Some(AuthFile::parse(file.path().to_str().expect("path")).expect("auth file")),
        registry_auth_hosts: Vec::new(),
        registry_allow_loopback: true,
    };
    let client_for =
        |repository: &str| multiarch_operator::config::registry_with(&args, repository, || panic!("no ECR here"), None);

    let pushed = client_for(&a.repo("demo"))
        .assemble(&a.repo("demo"), "v1", &request(&kids))
        .await
        .expect("A takes its credentials");
    assert!(pushed.digest.starts_with("sha256:"));
    let a_seen = a.seen();
    assert!(
        a_seen
            .iter()
            .any(|s| s.method == "PUT" && s.authorization() == Some(basic("a-user", "a-pass").as_str())),
        "{a_seen:?}"
    );

    for other in [&b, &a2] {
        let e = find(&client_for(&other.repo("demo")), &other.repo("demo"))
            .await
            .expect_err("no credentials for this host");
        assert_eq!(e.label(), "RegistryAuthFailed", "{e}");
        assert!(e.to_string().contains("no credentials are bound to this host"), "{e}");
        assert!(!e.to_string().contains("a-pass"), "{e}");
        let seen = other.seen();
        assert!(!seen.is_empty(), "{} was asked", other.host);
        assert!(
            seen.iter().all(|s| s.authorization().is_none()),
            "{} got credentials: {seen:?}",
            other.host
        );
    }

    // C's token server is asked anonymously, and C gets only its own token.
    let found = find(&client_for(&c.repo("demo")), &c.repo("demo")).await.expect("C");
    assert_eq!(found, Existing::Absent);
    let seen = c.seen();
    assert!(seen.iter().any(|s| s.path() == "/token"), "{seen:?}");
    for s in &seen {
        assert!(
            s.authorization().is_none() || s.authorization() == Some("Bearer anonymous"),
            "C got {s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Token realms.

/// A registry that answers every request with a Bearer challenge naming `realm`, and accepts
/// `Bearer granted` (then: no such tag).
async fn bearer_registry(realm: String) -> Recorder {
    Recorder::start("127.0.0.2", move |req| {
        if req.authorization() == Some("Bearer granted") {
            Reply::unknown_manifest()
        } else {
            Reply::challenge(format!("Bearer realm=\"{realm}\",service=\"registry\""))
        }
    })
    .await
}

/// A token server that grants `Bearer granted`.
async fn token_server(ip: &str) -> Recorder {
    Recorder::start(ip, |_| {
        Reply::With(200, Vec::new(), br#"{"token":"granted","expires_in":300}"#.to_vec())
    })
    .await
}

#[tokio::test]
async fn a_realm_on_another_host_is_refused_unless_listed() {
    let tokens = token_server("127.0.0.3").await;
    let reg = bearer_registry(format!("http://{}/token", tokens.host)).await;
    let auth = || RegistryAuth::basic(&reg.host, "reg-user", "reg-pass");
    let plain = [reg.host.as_str(), tokens.host.as_str()];

    let (c, attempts) = client(auth(), &plain, &[], true);
    let started = Instant::now();
    let e = find(&c, &reg.repo("app")).await.expect_err("realm on another host");
    assert_refused(
        &e,
        "RegistryAuthFailed",
        &[&reg.host, "on another host (127.0.0.3)", "--registry-auth-host"],
        started.elapsed(),
    );
    assert!(!e.to_string().contains("reg-pass"), "{e}");
    tokens.assert_untouched("an unlisted realm host");
    assert_eq!(attempts.all(), ["GET manifests -> 401"]);

    // Listed for another registry, or on another port than listed: still refused.
    let other_port = format!("{}=127.0.0.3:1", reg.host);
    for listed in ["127.0.0.9=127.0.0.3", other_port.as_str()] {
        let (c, _) = client(auth(), &plain, &[listed], true);
        let e = find(&c, &reg.repo("app")).await.expect_err(listed);
        assert_eq!(e.label(), "RegistryAuthFailed", "{listed}: {e}");
        tokens.assert_untouched(listed);
    }

    // Listed for this registry: followed, with the credentials bound to the registry's host.
    let listed = format!("{}=127.0.0.3", reg.host);
    let (c, _) = client(auth(), &plain, &[&listed], true);
    assert_eq!(
        find(&c, &reg.repo("app")).await.expect("listed realm"),
        Existing::Absent
    );
    let asked = tokens.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].path(), "/token");
    assert_eq!(asked[0].authorization(), Some(basic("reg-user", "reg-pass").as_str()));

    // Credentials bound to the token server's own host are not what a registry's token costs.
    let (c, _) = client(
        RegistryAuth::basic(&tokens.host, "token-user", "token-pass"),
        &plain,
        &[&listed],
        true,
    );
    assert_eq!(
        find(&c, &reg.repo("app")).await.expect("anonymous token"),
        Existing::Absent
    );
    let asked = tokens.seen();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].authorization(), None, "{:?}", asked[1]);
}

#[tokio::test]
async fn a_realm_over_plain_http_is_refused() {
    let tokens = token_server("127.0.0.3").await;
    let reg = bearer_registry(format!("http://{}/token", tokens.host)).await;
    let listed = format!("{}=127.0.0.3", reg.host);
    // The realm host is listed, but not a plain-http host: only https is followed there.
    let (c, _) = client(
        RegistryAuth::basic(&reg.host, "reg-user", "reg-pass"),
        &[&reg.host],
        &[&listed],
        true,
    );
    let started = Instant::now();
    let e = find(&c, &reg.repo("app")).await.expect_err("plain http realm");
    assert_refused(
        &e,
        "RegistryAuthFailed",
        &[&format!("http://{}/token is plain http", tokens.host)],
        started.elapsed(),
    );
    tokens.assert_untouched("a plain http realm");

    // On the registry's own host name, but on a port that is not a plain-http host: neither.
    let own = Recorder::start("127.0.0.2", |_| Reply::status(200)).await;
    let reg = bearer_registry(format!("http://{}/token", own.host)).await;
    let (c, _) = client(RegistryAuth::Anonymous, &[&reg.host], &[], true);
    let e = find(&c, &reg.repo("app"))
        .await
        .expect_err("plain http realm on the own host");
    assert_eq!(e.label(), "RegistryAuthFailed", "{e}");
    assert!(e.to_string().contains("is plain http"), "{e}");
    own.assert_untouched("a plain http realm on the registry's host");
}

#[tokio::test]
async fn a_realm_on_a_metadata_address_is_refused_before_connecting() {
    for realm in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/token",
        "http://[fd00:ec2::254]/latest/api/token",
        "http://2852039166/token",
        "https://[::ffff:169.254.169.254]/token",
    ] {
        let reg = bearer_registry(realm.to_string()).await;
        // Even listed and allowed plain http, with loopback allowed: never.
        let (c, attempts) = client(
            RegistryAuth::basic(&reg.host, "reg-user", "reg-pass"),
            &[&reg.host, "169.254.169.254", "[fd00:ec2::254]", "2852039166"],
            &[
                &format!("{}=169.254.169.254", reg.host),
                &format!("{}=[fd00:ec2::254]", reg.host),
            ],
            true,
        );
        let started = Instant::now();
        let e = find(&c, &reg.repo("app")).await.expect_err(realm);
        let address = if realm.contains("fd00") {
            "fd00:ec2::254"
        } else {
            "169.254.169.254"
        };
        assert_refused(
            &e,
            "RegistryAuthFailed",
            &[address, "never contacted"],
            started.elapsed(),
        );
        assert!(!e.to_string().contains("reg-pass"), "{e}");
        assert_eq!(attempts.all(), ["GET manifests -> 401"], "{realm}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redirects.

#[tokio::test]
async fn a_redirect_to_a_metadata_address_is_refused_before_connecting() {
    for (status, location) in [
        (302, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        (307, "http://169.254.169.254/latest/meta-data/"),
        (301, "https://2852039166/"),
        (308, "http://[fd00:ec2::254]/latest/api/token"),
        (303, "http://[::ffff:a9fe:a9fe]/"),
    ] {
        let location = location.to_string();
        let reg = Recorder::start("127.0.0.2", move |req| {
            if req.authorization() == Some(basic("u", "p").as_str()) {
                Reply::redirect(status, location.clone())
            } else {
                Reply::challenge("Basic realm=\"r\"".into())
            }
        })
        .await;
        let (c, attempts) = client(RegistryAuth::basic(&reg.host, "u", "p"), &[&reg.host], &[], true);
        let started = Instant::now();
        let e = find(&c, &reg.repo("app")).await.expect_err("redirect");
        let address = if status == 308 {
            "fd00:ec2::254"
        } else {
            "169.254.169.254"
        };
        assert_refused(
            &e,
            "RegistryRejected",
            &[&format!("HTTP {status}"), "not followed", address, "never contacted"],
            started.elapsed(),
        );
        // The registry was asked twice (the challenge, then the redirect); nothing was retried.
        assert_eq!(
            attempts.all(),
            ["GET manifests -> 401", "GET manifests -> none"],
            "{status}"
        );
        assert_eq!(reg.seen().len(), 2, "{:?}", reg.seen());
    }
}

#[tokio::test]
async fn a_redirect_to_plain_http_is_refused_and_sends_nothing() {
    let elsewhere = Recorder::start("127.0.0.3", |_| Reply::unknown_manifest()).await;
    let target = format!("http://{}/elsewhere", elsewhere.host);
    let reg = Recorder::start("127.0.0.2", move |_| Reply::redirect(307, target.clone())).await;

    // 127.0.0.3 is not a plain-http host: a plain http redirect there is not followed.
    let (c, _) = client(RegistryAuth::Anonymous, &[&reg.host], &[], true);
    let e = find(&c, &reg.repo("app")).await.expect_err("plain http redirect");
    assert_eq!(e.label(), "RegistryRejected", "{e}");
    assert!(e.to_string().contains("only https is followed"), "{e}");
    elsewhere.assert_untouched("a plain http redirect");
}

#[tokio::test]
async fn a_cross_host_redirect_is_followed_without_credentials() {
    // ECR answers blob GETs with a redirect to S3: it must keep working, and S3 must not get the
    // registry's credentials. Here the blob store is another host, and then the same IP on
    // another port (another origin too).
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    let arm = p.image("demo", "v1-arm64", ImageSpec::oci("arm64")).await;
    let kids = vec![(Platform::LinuxAmd64, amd.digest), (Platform::LinuxArm64, arm.digest)];

    for store_ip in ["127.0.0.3", "127.0.0.2"] {
        let upstream = reg.host.clone();
        let store = Recorder::start(store_ip, move |_| Reply::Forward(upstream.clone())).await;
        let store_host = store.host.clone();
        let upstream = reg.host.clone();
        let front = Recorder::start("127.0.0.2", move |req| {
            if req.authorization() != Some(basic("u", "p").as_str()) {
                Reply::challenge("Basic realm=\"r\"".into())
            } else if req.method == "GET" && req.path().contains("/blobs/") {
                Reply::redirect(307, format!("http://{store_host}{}?X-Amz-Signature=abc", req.uri))
            } else {
                Reply::Forward(upstream.clone())
            }
        })
        .await;
        let (c, _) = client(
            RegistryAuth::basic(&front.host, "u", "p"),
            &[&front.host, &store.host],
            &[],
            true,
        );
        c.assemble(
            &front.repo("demo"),
            &format!("v1-{}", store_ip.replace('.', "-")),
            &request(&kids),
        )
        .await
        .expect("assembled through the redirect");
        let fetched = store.seen();
        assert_eq!(fetched.len(), 2, "both config blobs from the store: {fetched:?}");
        for s in &fetched {
            assert_eq!(s.authorization(), None, "the store got credentials: {s:?}");
            assert!(s.path().contains("/blobs/sha256:"), "{s:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Repositories.

#[tokio::test]
async fn a_repository_on_a_forbidden_address_fails_before_any_request() {
    let local = Recorder::start("127.0.0.1", |_| Reply::unknown_manifest()).await;
    let port = local.host.rsplit(':').next().expect("port").to_string();
    let loopback = Recorder::start("127.0.0.2", |_| Reply::unknown_manifest()).await;
    let localhost = format!("localhost:{port}");
    let cases: [(String, &[&str]); 6] = [
        ("169.254.169.254/app".into(), &["169.254.169.254", "never contacted"]),
        ("169.254.169.254:80/app".into(), &["169.254.169.254", "never contacted"]),
        ("2852039166:443/app".into(), &["169.254.169.254", "never contacted"]),
        ("0.0.0.0:5000/app".into(), &["0.0.0.0", "never contacted"]),
        (
            loopback.repo("app"),
            &["127.0.0.2 is a loopback address", "--registry-allow-loopback"],
        ),
        (
            format!("{localhost}/app"),
            &["localhost resolves only to ", "loopback", "--registry-allow-loopback"],
        ),
    ];
    for (repository, names) in cases {
        let plain = [repository.split('/').next().expect("host")];
        for auth in [RegistryAuth::Anonymous, RegistryAuth::basic(plain[0], "u", "secret")] {
            let (c, attempts) = client(auth, &plain, &[], false);
            let started = Instant::now();
            let e = find(&c, &repository).await.expect_err(&repository);
            assert_refused(&e, "InvalidReference", names, started.elapsed());
            assert!(!e.to_string().contains("secret"), "{e}");
            assert!(attempts.all().is_empty(), "{repository}: {:?}", attempts.all());
            // Assembling is refused the same way, before anything is read.
            let kids = vec![(Platform::LinuxAmd64, format!("sha256:{}", "a".repeat(64)))];
            let e = c
                .assemble(&repository, "v1", &request(&kids))
                .await
                .expect_err(&repository);
            assert_eq!(e.label(), "InvalidReference", "{e}");
        }
    }
    local.assert_untouched("localhost without --registry-allow-loopback");
    loopback.assert_untouched("127.0.0.2 without --registry-allow-loopback");

    // With loopback allowed, both are contacted; link-local never is.
    let (c, _) = client(RegistryAuth::Anonymous, &[&localhost, &loopback.host], &[], true);
    assert_eq!(
        find(&c, &format!("{localhost}/app")).await.expect("localhost"),
        Existing::Absent
    );
    assert_eq!(
        find(&c, &loopback.repo("app")).await.expect("127.0.0.2"),
        Existing::Absent
    );
    assert_eq!(local.seen().len(), 1);
    let (c, attempts) = client(RegistryAuth::Anonymous, &["169.254.169.254"], &[], true);
    let e = find(&c, "169.254.169.254/app").await.expect_err("never");
    assert_eq!(e.label(), "InvalidReference", "{e}");
    assert!(attempts.all().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The flags.

#[test]
fn the_flags_bind_credentials_and_refuse_bad_files_in_one_line() {
    let good = docker_config(&[("registry.example.com:5000", "u", "TOPSECRET")]);
    let parse = |extra: &[&str]| {
        let mut argv = vec!["multiarch-operator", "build", "-f", "build.yaml"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    };
    let cli = parse(&[
        "--registry-auth-file",
        good.path().to_str().expect("path"),
        "--registry-auth-host",
        "registry.gitlab.com=gitlab.com",
        "--registry-auth-host",
        "docker.io=auth.docker.io:443",
        "--registry-allow-loopback",
    ])
    .expect("parses");
    let Command::Build(build) = cli.command else {
        panic!("build");
    };
    let args = build.registry;
    let file = args.registry_auth_file.expect("file");
    assert_eq!(
        file.credentials.hosts().collect::<Vec<_>>(),
        ["registry.example.com:5000"]
    );
    assert_eq!(args.registry_auth_hosts.len(), 2);
    assert_eq!(args.registry_auth_hosts[1].registry.host, "index.docker.io");
    assert!(args.registry_allow_loopback);
    assert!(!format!("{file:?}").contains("TOPSECRET"));

    let defaults = parse(&[]).expect("parses");
    let Command::Build(build) = defaults.command else {
        panic!("build");
    };
    assert!(build.registry.registry_auth_file.is_none());
    assert!(
        !build.registry.registry_allow_loopback,
        "loopback is refused by default"
    );

    let bad = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(bad.path(), r#"{"auths": {"h": {"auth": "TOPSECRET"}}}"#).expect("write");
    let helper = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(helper.path(), r#"{"auths": {"h": {}}, "credsStore": "desktop"}"#).expect("write");
    for (path, why) in [
        (bad.path().to_str().expect("path"), "is not base64 of user:password"),
        (helper.path().to_str().expect("path"), "credential helper"),
        ("/nonexistent/config.json", "cannot read it"),
    ] {
        let e = parse(&["--registry-auth-file", path]).expect_err(path).to_string();
        let first = e.lines().next().unwrap_or_default();
        assert!(first.contains(&format!("registry auth file {path}: ")), "{e}");
        assert!(first.contains(why), "{e}");
        assert!(!e.contains("TOPSECRET"), "{e}");
    }
    let e = parse(&["--registry-auth-host", "registry.example.com"]).expect_err("no =");
    assert!(e.to_string().contains("is not REGISTRY=AUTHHOST"), "{e}");
}
