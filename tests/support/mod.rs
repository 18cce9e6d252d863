//! Test harness shared by `tests/registry.rs` and `benches/index_assembly.rs`: a real Debian
//! `docker-registry` (CNCF distribution 2.8) on a loopback port, images pushed into it blob by blob
//! over HTTP, and a fault-injecting front proxy.
// Test code: failing loudly is the point.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub fn sha256(bytes: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Where a binary is on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running `docker-registry serve` with filesystem storage in a temporary directory and the
/// in-memory blob descriptor cache of Debian's default config; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`
    pub host: String,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry, or `None` (after a loud message) when `docker-registry` is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_in(&std::env::temp_dir())
    }

    /// Like [`start`](Self::start), with the storage (and config and log) in a new directory
    /// under `parent` (e.g. `/dev/shm` for a registry whose disk is not the bottleneck).
    pub fn start_in(parent: &Path) -> Option<Registry> {
        let Some(bin) = which("docker-registry") else {
            eprintln!(
                "\n\n########################################################################\n\
                 ### SKIPPED: `docker-registry` is not installed, so the real-registry  ###\n\
                 ### tests did not run. Install it: apt-get install -y docker-registry  ###\n\
                 ########################################################################\n"
            );
            return None;
        };
        for _ in 0..5 {
            if let Some(r) = Self::try_start(&bin, parent) {
                return Some(r);
            }
        }
        panic!("docker-registry did not start after 5 tries");
    }

    fn try_start(bin: &Path, parent: &Path) -> Option<Registry> {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = child.wait();
                return None; // port taken meanwhile: try another
            }
            if TcpStream::connect(&host).is_ok() {
                return Some(Registry { child, host, dir });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image as pushed.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    pub config_digest: String,
}

/// What to push.
#[derive(Clone, Copy, Debug)]
pub struct ImageSpec<'a> {
    pub os: &'a str,
    pub architecture: &'a str,
    pub variant: Option<&'a str>,
    /// Docker v2 media types instead of OCI.
    pub docker: bool,
    /// The labels builder/build.sh sets, when set ([`ImageSpec::built_by`]).
    pub built_by: Option<BuiltBy<'a>>,
}

/// What builder/build.sh labels an image with.
#[derive(Clone, Copy, Debug)]
pub struct BuiltBy<'a> {
    pub uid: &'a str,
    pub commit: &'a str,
    pub inputs: &'a str,
}

impl BuiltBy<'_> {
    /// `config.Labels`.
    pub fn labels(&self) -> serde_json::Value {
        use multiarch_operator::provenance::{BUILD_UID_LABEL, INPUTS_LABEL, REVISION_LABEL, SOURCE_LABEL};
        serde_json::json!({
            REVISION_LABEL: self.commit,
            SOURCE_LABEL: "https://github.com/example/app.git",
            BUILD_UID_LABEL: self.uid,
            INPUTS_LABEL: self.inputs,
        })
    }
}

impl<'a> ImageSpec<'a> {
    pub fn oci(architecture: &'a str) -> Self {
        ImageSpec {
            os: "linux",
            architecture,
            variant: None,
            docker: false,
            built_by: None,
        }
    }

    pub fn docker(architecture: &'a str) -> Self {
        ImageSpec {
            docker: true,
            ..Self::oci(architecture)
        }
    }

    /// With the labels the builder sets for a build of `uid` from `commit` with `inputs`.
    pub fn built_by(self, uid: &'a str, commit: &'a str, inputs: &'a str) -> Self {
        ImageSpec {
            built_by: Some(BuiltBy { uid, commit, inputs }),
            ..self
        }
    }
}

/// Uploads blobs and manifests straight over the distribution API.
#[derive(Clone)]
pub struct Pusher {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>`
    base: String,
}

impl Pusher {
    pub fn new(host: &str) -> Pusher {
        Pusher {
            http: reqwest::Client::new(),
            base: format!("http://{host}"),
        }
    }

    /// Monolithic upload: POST to open an upload, PUT the bytes with their digest.
    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> (String, u64) {
        let digest = sha256(bytes);
        let resp = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .expect("start upload");
        assert_eq!(resp.status().as_u16(), 202, "start upload");
        let location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("upload location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(resp.status().as_u16(), 201, "finish upload: {:?}", resp.text().await);
        (digest, bytes.len() as u64)
    }

    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let resp = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        assert_eq!(status, 201, "put manifest {repo}:{reference}: {:?}", resp.text().await);
        let digest = sha256(bytes);
        assert_eq!(header.as_deref(), Some(digest.as_str()));
        digest
    }

    /// A one-layer image: a config naming `spec`'s platform and a gzip'd tar with one file.
    pub async fn image(&self, repo: &str, tag: &str, spec: ImageSpec<'_>) -> Pushed {
        self.image_with_config_padding(repo, tag, spec, 0).await
    }

    /// Like [`image`](Self::image), with `padding` bytes of filler in the config (huge configs).
    pub async fn image_with_config_padding(
        &self,
        repo: &str,
        tag: &str,
        spec: ImageSpec<'_>,
        padding: usize,
    ) -> Pushed {
        let file = format!("built for {}/{}\n", spec.os, spec.architecture);
        let tar = tar_one_file("platform.txt", file.as_bytes());
        let layer = gzip_stored(&tar);
        let (layer_digest, layer_size) = self.blob(repo, &layer).await;
        let mut config = serde_json::json!({
            "architecture": spec.architecture,
            "os": spec.os,
            "config": {"Cmd": ["/bin/true"], "Labels": spec.built_by.map(|b| b.labels())},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "history": [{"created_by": "multiarch-operator test"}],
        });
        if let Some(v) = spec.variant {
            config["variant"] = v.into();
        }
        if padding > 0 {
            config["padding"] = "x".repeat(padding).into();
        }
        let config = serde_json::to_vec(&config).expect("config json");
        let (config_digest, config_size) = self.blob(repo, &config).await;
        let (mt, config_mt, layer_mt) = if spec.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        };
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": layer_size}],
        }))
        .expect("manifest json");
        // An empty tag pushes by digest only, as buildx does for an index's children.
        let reference = if tag.is_empty() {
            sha256(&manifest)
        } else {
            tag.to_string()
        };
        let digest = self.manifest(repo, &reference, mt, &manifest).await;
        Pushed {
            media_type: mt,
            digest,
            size: manifest.len() as u64,
            config_digest,
        }
    }

    /// What buildx ≥ 0.10 pushes for one platform: an OCI index with the image and an
    /// `unknown/unknown` attestation manifest. Returns (index digest, image).
    pub async fn attested_image(&self, repo: &str, tag: &str, spec: ImageSpec<'_>) -> (String, Pushed) {
        let image = self.image(repo, "", spec).await;
        // The attestation manifest: an in-toto statement as its layer.
        let statement = serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "x", "digest": {"sha256": image.digest.trim_start_matches("sha256:")}}],
            "predicate": {},
        }))
        .expect("statement");
        let (statement_digest, statement_size) = self.blob(repo, &statement).await;
        let att_config = serde_json::to_vec(&serde_json::json!({
            "architecture": "unknown", "os": "unknown", "config": {}, "rootfs": {"type": "layers", "diff_ids": [statement_digest]}
        }))
        .expect("config");
        let (att_config_digest, att_config_size) = self.blob(repo, &att_config).await;
        let att = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": att_config_digest, "size": att_config_size},
            "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": statement_digest, "size": statement_size,
                        "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
        }))
        .expect("attestation manifest");
        let att_digest = self.manifest(repo, &sha256(&att), OCI_MANIFEST, &att).await;
        let mut platform = serde_json::json!({"architecture": spec.architecture, "os": spec.os});
        if let Some(v) = spec.variant {
            platform["variant"] = v.into();
        }
        // The attestation entry first, to show order does not matter.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": att_digest, "size": att.len(),
                 "annotations": {"vnd.docker.reference.digest": image.digest, "vnd.docker.reference.type": "attestation-manifest"},
                 "platform": {"architecture": "unknown", "os": "unknown"}},
                {"mediaType": image.media_type, "digest": image.digest, "size": image.size, "platform": platform},
            ],
        }))
        .expect("index");
        let index_digest = self.manifest(repo, tag, OCI_INDEX, &index).await;
        (index_digest, image)
    }

    /// GET a manifest: (status, content type, body).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> (u16, String, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("accept", accept_manifests())
            .send()
            .await
            .expect("get manifest");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, resp.bytes().await.expect("body").to_vec())
    }

    pub async fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .send()
            .await
            .expect("get blob");
        assert!(resp.status().is_success(), "GET blob {digest}: {}", resp.status());
        resp.bytes().await.expect("body").to_vec()
    }
}

/// A ustar archive with one regular file.
pub fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[148..156].copy_from_slice(b"        ");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// gzip with stored (uncompressed) deflate blocks: valid gzip without a compression library.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `skopeo inspect --raw` of an image on a plain-HTTP registry, or `None` when skopeo is absent.
pub fn skopeo_raw(image: &str) -> Option<Vec<u8>> {
    let Some(bin) = which("skopeo") else {
        eprintln!(
            "\n### NOTE: skopeo is not installed (apt-get install -y skopeo): the skopeo cross-check is skipped ###\n"
        );
        return None;
    };
    let out = Command::new(bin)
        .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{image}")])
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

/// What the front proxy does to requests on their way to the registry.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Answer 503 to the first `n` requests.
    Unavailable { first: usize },
    /// Require `Authorization: Basic` with these credentials.
    Basic { username: String, password: String },
    /// Require Bearer tokens from `/token` on the proxy, which wants Basic credentials.
    Bearer { username: String, password: String },
    /// Answer manifest PUTs with a wrong `Docker-Content-Digest`.
    WrongDigest,
    /// Drop `Docker-Content-Digest` and `Location` from manifest PUT answers (ECR has no Location).
    NoDigestHeader,
    /// Refuse manifest PUTs to tags that exist, like an ECR repository with immutable tags.
    ImmutableTags,
    /// Answer everything with ECR's 404 `NAME_UNKNOWN`.
    NoRepository,
    /// Answer manifest GETs with a body of this many bytes.
    HugeManifest(usize),
    /// Answer manifest GETs with a chunked body (no Content-Length) of this many bytes.
    HugeChunkedManifest(usize),
    /// Cut manifest GET bodies in half (and drop their Docker-Content-Digest).
    TruncatedManifests,
    /// Answer manifest GETs with an HTML page, as a captive proxy would.
    HtmlManifests,
    /// Serve image manifests as if they were Docker schema 1.
    Schema1Manifests,
    /// In front of an AWS JSON API (KMS): answer the first `n` requests as AWS does when IAM or
    /// the key policy does not allow the call.
    AwsAccessDenied { first: usize },
}

struct FrontState {
    upstream: String,
    fault: Fault,
    requests: AtomicUsize,
    http: reqwest::Client,
    log: Mutex<Vec<String>>,
}

/// An HTTP proxy in front of a registry that injects [`Fault`]s.
pub struct Front {
    pub host: String,
    state: Arc<FrontState>,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    pub async fn start(upstream: &str, fault: Fault) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let state = Arc::new(FrontState {
            upstream: format!("http://{upstream}"),
            fault,
            requests: AtomicUsize::new(0),
            http: reqwest::Client::new(),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(front_handler).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Front {
            host: addr.to_string(),
            state,
            task,
        }
    }

    /// `METHOD path -> status` for every request seen.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().expect("log").clone()
    }

    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn front_handler(
    axum::extract::State(state): axum::extract::State<Arc<FrontState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let resp = front(&state, req).await;
    state
        .log
        .lock()
        .expect("log")
        .push(format!("{method} {path} -> {}", resp.status().as_u16()));
    resp
}

/// Every manifest and index type, as an `Accept` header.
fn accept_manifests() -> String {
    format!("{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}, {DOCKER_MANIFEST}")
}

/// The `Authorization` value for HTTP basic auth.
fn basic_auth(username: &str, password: &str) -> String {
    format!("Basic {}", base64_encode(&format!("{username}:{password}")))
}

fn simple(status: u16, headers: &[(&str, String)], body: impl Into<axum::body::Body>) -> axum::response::Response {
    let mut b = axum::http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(body.into()).expect("response")
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": {}}]}).to_string()
}

async fn front(state: &FrontState, req: axum::extract::Request) -> axum::response::Response {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let is_manifest = path.contains("/manifests/");
    let json = || ("content-type", "application/json".to_string());

    match &state.fault {
        Fault::Unavailable { first } if n < *first => {
            return simple(503, &[json()], error_body("UNAVAILABLE", "service unavailable"));
        }
        Fault::AwsAccessDenied { first } if n < *first => {
            let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/multiarch-operator/controller is not authorized to perform: kms:GetPublicKey on this resource because no identity-based policy allows the kms:GetPublicKey action"}"#;
            return simple(
                400,
                &[
                    ("content-type", "application/x-amz-json-1.1".to_string()),
                    ("x-amzn-errortype", "AccessDeniedException".to_string()),
                ],
                body,
            );
        }
        Fault::NoRepository => {
            return simple(
                404,
                &[json()],
                error_body(
                    "NAME_UNKNOWN",
                    "The repository with name 'x' does not exist in the registry with id '123456789012'",
                ),
            );
        }
        Fault::HugeManifest(size) if is_manifest && method == axum::http::Method::GET => {
            return simple(200, &[("content-type", OCI_MANIFEST.to_string())], vec![b' '; *size]);
        }
        Fault::HugeChunkedManifest(size) if is_manifest && method == axum::http::Method::GET => {
            let size = *size;
            let stream = futures::stream::iter((0..size.div_ceil(65536)).map(move |i| {
                let len = 65536.min(size - i * 65536);
                Ok::<_, std::io::Error>(vec![b' '; len])
            }));
            return simple(
                200,
                &[("content-type", OCI_MANIFEST.to_string())],
                axum::body::Body::from_stream(stream),
            );
        }
        Fault::Basic { username, password } => {
            let want = basic_auth(username, password);
            if auth != want {
                return simple(
                    401,
                    &[json(), ("www-authenticate", "Basic realm=\"test\"".to_string())],
                    error_body("UNAUTHORIZED", "authentication required"),
                );
            }
        }
        Fault::Bearer { username, password } => {
            if path == "/token" {
                let want = basic_auth(username, password);
                if auth != want {
                    return simple(401, &[json()], r#"{"details":"incorrect username or password"}"#);
                }
                let scope = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
                    .ok()
                    .and_then(|mut q| q.0.remove("scope"))
                    .unwrap_or_default();
                return simple(
                    200,
                    &[json()],
                    serde_json::json!({"token": format!("tok {scope}"), "expires_in": 300}).to_string(),
                );
            }
            let push = method == axum::http::Method::PUT;
            let repo = path
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or_default()
                .split("/blobs/")
                .next()
                .unwrap_or_default();
            let scope = format!("repository:{repo}:{}", if push { "pull,push" } else { "pull" });
            let ok = auth.strip_prefix("Bearer tok ").is_some_and(|granted| {
                granted == scope || (!push && granted == format!("repository:{repo}:pull,push"))
            });
            if !ok {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                return simple(
                    401,
                    &[
                        json(),
                        (
                            "www-authenticate",
                            format!("Bearer realm=\"http://{host}/token\",service=\"test\",scope=\"{scope}\""),
                        ),
                    ],
                    error_body("UNAUTHORIZED", "authentication required"),
                );
            }
        }
        _ => {}
    }

    // Forward.
    let mut fwd = state
        .http
        .request(method.clone(), format!("{}{path}{query}", state.upstream));
    // An AWS API routes on X-Amz-Target and the credential scope of Authorization; the registry
    // never gets the client's Authorization (the front does the auth faults itself).
    let aws = matches!(state.fault, Fault::AwsAccessDenied { .. });
    let names: &[&str] = if aws {
        &["accept", "content-type", "x-amz-target", "x-amz-date", "authorization"]
    } else {
        &["accept", "content-type"]
    };
    for name in names {
        if let Some(v) = req.headers().get(*name) {
            fwd = fwd.header(*name, v.as_bytes());
        }
    }
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .expect("request body");

    if matches!(state.fault, Fault::ImmutableTags) && method == axum::http::Method::PUT && is_manifest {
        let head = state
            .http
            .get(format!("{}{path}", state.upstream))
            .header("accept", accept_manifests())
            .send()
            .await
            .expect("check tag");
        if head.status().is_success() {
            let tag = path.rsplit('/').next().unwrap_or_default();
            return simple(
                400,
                &[json()],
                error_body(
                    "TAG_INVALID",
                    &format!(
                        "The image tag '{tag}' already exists in the 'demo' repository and cannot be overwritten because the repository is immutable."
                    ),
                ),
            );
        }
    }

    let upstream = fwd.body(body).send().await.expect("forward");
    let status = upstream.status().as_u16();
    let mut headers: Vec<(&str, String)> = Vec::new();
    for name in ["content-type", "docker-content-digest", "location", "www-authenticate"] {
        if let Some(v) = upstream.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, v.to_string()));
        }
    }
    if is_manifest && method == axum::http::Method::PUT {
        match state.fault {
            Fault::WrongDigest => {
                for h in headers.iter_mut().filter(|h| h.0 == "docker-content-digest") {
                    h.1 = format!("sha256:{}", "0".repeat(64));
                }
            }
            Fault::NoDigestHeader => headers.retain(|h| h.0 != "docker-content-digest" && h.0 != "location"),
            _ => {}
        }
    }
    let bytes = upstream.bytes().await.expect("upstream body");
    if is_manifest && method == axum::http::Method::GET && status == 200 {
        match state.fault {
            Fault::TruncatedManifests => {
                headers.retain(|h| h.0 != "docker-content-digest");
                return simple(status, &headers, bytes.slice(..bytes.len() / 2));
            }
            Fault::HtmlManifests => {
                return simple(
                    200,
                    &[("content-type", "text/html".to_string())],
                    "<html><body>Please log in to the proxy</body></html>",
                );
            }
            Fault::Schema1Manifests => {
                for h in headers.iter_mut().filter(|h| h.0 == "content-type") {
                    h.1 = "application/vnd.docker.distribution.manifest.v1+prettyjws".into();
                }
            }
            _ => {}
        }
    }
    simple(status, &headers, bytes)
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A real registry for the test, or `return` from it (skipped, loudly) when `docker-registry` is
/// not installed.
#[macro_export]
macro_rules! registry {
    () => {
        match $crate::support::Registry::start() {
            Some(r) => r,
            None => return,
        }
    };
}
