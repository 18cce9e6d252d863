//! The whole controller on the local real stack (`e2e/local-stack`): a chain of three real builds,
//! base -> dev (`FROM ${BASE}`, BASE from base) -> app (`FROM ${BASE}`, BASE from dev), applied in
//! reverse order to the in-memory Kubernetes API (tests/common/fake_kube.rs). The controller
//! submits to the stack's moto, whose Docker-mode Batch runs the real builder image, which pushes
//! to the stack's registry; the app image holds what base and dev added.
//!
//! One thing stands between the controller and the stack: the controller accepts only https and
//! ssh git URLs (`GitSources::Remote`), while the stack's sample repository is a `file:///` path
//! bind-mounted into the jobs. So the builds name an https URL that does not exist, and a small
//! proxy between the controller and moto swaps it for the sample repository's `file:///` URL in
//! each SubmitJob body, nothing else. Everything the controller reads back (job states, logs,
//! the registry) is the stack's own.
//!
//! Needs `e2e/local-stack up`. Without the stack the test says so and passes, unless
//! `MAB_E2E_REQUIRED=1`, where a missing stack fails it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fake_kube.rs"]
mod fake_kube;
#[path = "common/local_stack.rs"]
mod local_stack;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_batch::config::Credentials;
use fake_kube::{FakeKube, Key};
use local_stack::{image_files, stack};
use multiarch_operator::cli::RegistryArgs;
use multiarch_operator::controller::{
    LeaseSettings, ReconcileConfig, Settings, Shutdown, http::Health, metrics::Metrics, run_with,
};
use multiarch_operator::tenancy::AllowedRegistries;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAMESPACE: &str = "chain-local";
/// What the builds name as their source; the proxy makes it the sample repository.
const STAND_IN_GIT_URL: &str = "https://git.local-stack.invalid/sample.git";

/// A name no earlier run used, so the registry holds no index for it yet.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{:x}", nanos % 0xffff_ffff_ffff)
}

/// A proxy to moto at `upstream` (host:port) that replaces `from` with `to` in SubmitJob request
/// bodies and passes everything else through unchanged. Returns its address and how many
/// SubmitJob bodies it rewrote.
async fn rewriting_proxy(upstream: String, from: String, to: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let rewritten = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&rewritten);
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, from, to, counter) = (upstream.clone(), from.clone(), to.clone(), Arc::clone(&counter));
            tokio::spawn(async move { serve(client, &upstream, &from, &to, &counter).await });
        }
    });
    (address, rewritten)
}

/// One client connection: each request goes to moto on a connection of its own (`Connection:
/// close`), its response comes back whole.
async fn serve(mut client: TcpStream, upstream: &str, from: &str, to: &str, rewritten: &AtomicUsize) {
    let mut buffer = Vec::new();
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let mut lines = head.trim_end().split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert!(
            header("transfer-encoding").is_none(),
            "the proxy reads Content-Length bodies only: {head}"
        );
        let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        // The body.
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 16 * 1024];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let mut body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        if request_line.to_ascii_lowercase().starts_with("post /v1/submitjob") {
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains(from), "a SubmitJob without {from}: {text}");
            body = text.replace(from, to).into_bytes();
            rewritten.fetch_add(1, Ordering::SeqCst);
        }
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection"));
        let mut request = format!("{request_line}\r\n");
        for (k, v) in &headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
        let mut request = request.into_bytes();
        request.extend_from_slice(&body);

        let Ok(mut moto) = TcpStream::connect(upstream).await else {
            return;
        };
        if moto.write_all(&request).await.is_err() {
            return;
        }
        let mut response = Vec::new();
        if moto.read_to_end(&mut response).await.is_err() || client.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// A build of the sample repository's `revision` to `repository:v1` on both of the stack's
/// queues, with `build_args` (JSON, as in the spec).
fn build_object(
    env: &HashMap<String, String>,
    name: &str,
    revision: &str,
    repository: &str,
    build_args: Value,
) -> Value {
    let mut object = json!({
        "apiVersion": "multiarch.dev/v1alpha1",
        "kind": "MultiArchBuild",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "source": {"git": {"url": STAND_IN_GIT_URL, "revision": revision}},
            "output": {"repository": repository, "tag": "v1"},
            "buildArgs": build_args,
            "platforms": [
                {"platform": "linux/amd64", "jobQueue": env["MAB_JOB_QUEUE_AMD64"]},
                {"platform": "linux/arm64", "jobQueue": env["MAB_JOB_QUEUE_ARM64"]},
            ],
            "jobDefinition": env["MAB_JOB_DEFINITION"],
            "timeoutSeconds": 600,
        },
    });
    if build_args.as_array().is_some_and(Vec::is_empty) {
        object["spec"].as_object_mut().unwrap().remove("buildArgs");
    }
    object
}

/// dev and app: the chain branch, BASE from the build `from`, adding layers/`layer`.txt.
fn chained(env: &HashMap<String, String>, name: &str, from: &str, layer: &str, repository: &str) -> Value {
    build_object(
        env,
        name,
        "chain",
        repository,
        json!([
            {"name": "BASE", "valueFrom": {"multiArchBuild": {"name": from}}},
            {"name": "LAYER", "value": layer},
        ]),
    )
}

fn create_build(fake: &FakeKube, object: Value) -> Key {
    let created = fake.create("multiarch.dev", "multiarchbuilds", object);
    Key::build(NAMESPACE, created["metadata"]["name"].as_str().unwrap())
}

fn status(fake: &FakeKube, key: &Key) -> Value {
    fake.get(key).expect("the build")["status"].clone()
}

fn phase(fake: &FakeKube, key: &Key) -> String {
    status(fake, key)["phase"].as_str().unwrap_or_default().to_string()
}

/// Waits until `check`, failing early when a build failed, with every build's status.
async fn wait_for(what: &str, fake: &FakeKube, keys: &[&Key], timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    let statuses = || {
        keys.iter()
            .map(|k| format!("{}: {}", k.name, status(fake, k)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    while !check() {
        let failed = keys.iter().any(|k| phase(fake, k) == "Failed");
        assert!(!failed, "a build failed while waiting for {what}:\n{}", statuses());
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            statuses()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_applied_in_reverse_order_builds_for_real_on_pinned_digests() {
    let Some(env) = stack() else { return };
    let registry = env["MAB_REGISTRY"].clone();
    let upstream = env["AWS_ENDPOINT_URL"]
        .strip_prefix("http://")
        .expect("the stack's moto speaks http")
        .trim_end_matches('/')
        .to_string();
    let (proxy, rewritten) =
        rewriting_proxy(upstream, STAND_IN_GIT_URL.into(), env["MAB_SAMPLE_GIT_URL"].clone()).await;
    let credentials = Credentials::new(
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "local-stack",
    );
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(format!("http://{proxy}"))
        .region(Region::new(env["AWS_REGION"].clone()))
        .credentials_provider(credentials)
        .load()
        .await;
    let settings = Settings {
        namespaces: Vec::new(),
        poll_interval: Duration::from_secs(1),
        reconcile: ReconcileConfig {
            default_job_definition: env["MAB_JOB_DEFINITION"].clone(),
            registry: RegistryArgs {
                registry_plain_http: vec![registry.clone()],
                registry_allow_loopback: true,
                ..RegistryArgs::default()
            },
            cleanup_grace: Duration::from_secs(300),
            default_ttl_seconds_after_finished: None,
            concurrency: 4,
            allowed: AllowedRegistries {
                own: None,
                listed: vec![registry.clone()],
            },
            signer: None,
        },
        lease: LeaseSettings {
            namespace: "mab-system".into(),
            name: "multiarch-operator".into(),
            identity: "chain-local".into(),
            duration_seconds: 15,
            grace_seconds: 5,
        },
        crd_retry: Duration::from_millis(100),
    };

    let fake = FakeKube::new();
    let shutdown = Shutdown::new();
    let controller = {
        let (client, aws, shutdown) = (fake.client(), aws.clone(), shutdown.clone());
        let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::default()));
        tokio::spawn(async move { run_with(client, &aws, settings, metrics, health, shutdown).await })
    };

    let prefix = unique("chainctl");
    let repository = |name: &str| format!("{registry}/e2e/{prefix}-{name}");
    let app = create_build(&fake, chained(&env, "app", "dev", "app", &repository("app")));
    let dev = create_build(&fake, chained(&env, "dev", "base", "dev", &repository("dev")));
    wait_for(
        "dev and app to wait on their dependencies",
        &fake,
        &[&dev, &app],
        Duration::from_secs(30),
        || {
            status(&fake, &dev)["message"] == "waiting for MultiArchBuild base (not found) to succeed"
                && phase(&fake, &app) == "Waiting"
        },
    )
    .await;
    assert_eq!(
        rewritten.load(Ordering::SeqCst),
        0,
        "nothing submitted before base exists"
    );
    let base = create_build(
        &fake,
        build_object(
            &env,
            "base",
            &env["MAB_SAMPLE_REVISION"],
            &repository("base"),
            json!([]),
        ),
    );
    let keys = [&base, &dev, &app];
    wait_for(
        "base, dev and app to succeed",
        &fake,
        &keys,
        Duration::from_secs(900),
        || keys.iter().all(|k| phase(&fake, k) == "Succeeded"),
    )
    .await;
    shutdown.trigger();
    controller.await.unwrap().unwrap();
    assert_eq!(rewritten.load(Ordering::SeqCst), 6, "two jobs per build");

    // Each build recorded, and built on, the pinned image of the one before.
    let image = |key: &Key| status(&fake, key)["image"].as_str().unwrap().to_string();
    let (base_image, dev_image, app_image) = (image(&base), image(&dev), image(&app));
    for (key, image) in [(&base, &base_image), (&dev, &dev_image), (&app, &app_image)] {
        let (repo, digest) = image.split_once('@').expect("status.image is repository@digest");
        assert_eq!(repo, repository(&key.name));
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{image}");
    }
    assert_eq!(
        status(&fake, &dev)["inputs"],
        json!({"buildArgs": [{"name": "BASE", "value": base_image}]})
    );
    assert_eq!(
        status(&fake, &app)["inputs"],
        json!({"buildArgs": [{"name": "BASE", "value": dev_image}]})
    );

    // The app image really holds base's, dev's and its own files, on both platforms; dev's has
    // no app layer.
    for arch in ["amd64", "arm64"] {
        let files = image_files(&app_image, arch);
        for file in ["hello.txt", "platform/arch.txt", "layers/dev.txt", "layers/app.txt"] {
            assert!(files.iter().any(|f| f == file), "{arch}: no {file} in {files:?}");
        }
        let dev_files = image_files(&dev_image, arch);
        assert!(dev_files.iter().any(|f| f == "layers/dev.txt"), "{dev_files:?}");
        assert!(!dev_files.iter().any(|f| f == "layers/app.txt"), "{dev_files:?}");
    }
}
