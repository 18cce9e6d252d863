//! Index assembly against a real registry: Debian `docker-registry` (CNCF distribution 2.8) started
//! on a loopback port per test, images uploaded blob by blob, and a front proxy for faults the
//! registry does not produce by itself (5xx, auth, ECR quirks, huge bodies).
//!
//! Skipped with a loud message when `docker-registry` is not installed
//! (`apt-get install -y docker-registry skopeo`).

// Helpers outside #[test] fns fail loudly too.
#![allow(clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiarch_operator::api::{IndexMediaType, Platform};
use multiarch_operator::registry::{
    PushedIndex, RegistryAuth, RegistryClient, RegistryError, RegistryObject, RegistryOptions, RequestObserver,
    RetryPolicy, sha256_digest,
};
use reqwest::{Method, StatusCode};
use support::{Fault, Front, ImageSpec, Pusher, Registry, sha256, skopeo_raw};

macro_rules! registry {
    () => {
        match Registry::start() {
            Some(r) => r,
            None => return,
        }
    };
}

const AMD64_ARM64: [Platform; 2] = [Platform::LinuxAmd64, Platform::LinuxArm64];

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

/// A client with `options`, plain HTTP to `hosts` and fast retries.
fn client_from(options: RegistryOptions, hosts: &[&str]) -> RegistryClient {
    RegistryClient::with_retry_policy(
        RegistryOptions {
            plain_http_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..options
        },
        fast_retries(),
    )
}

fn client_with(auth: RegistryAuth, hosts: &[&str]) -> RegistryClient {
    client_from(
        RegistryOptions {
            auth,
            ..RegistryOptions::default()
        },
        hosts,
    )
}

fn client(hosts: &[&str]) -> RegistryClient {
    client_with(RegistryAuth::Anonymous, hosts)
}

/// Every attempt the client reports, as `METHOD manifests|blobs -> STATUS|none`.
#[derive(Debug, Default)]
struct Attempts(Mutex<Vec<String>>);

impl RequestObserver for Attempts {
    fn attempted(&self, method: &Method, object: RegistryObject, status: Option<StatusCode>) {
        let status = status.map_or_else(|| "none".to_string(), |s| s.as_u16().to_string());
        let line = format!("{method} {} -> {status}", object.path_segment());
        self.0.lock().expect("attempts").push(line);
    }
}

fn observed_client(hosts: &[&str], attempts: &Arc<Attempts>) -> RegistryClient {
    client_from(
        RegistryOptions {
            observer: Some(Arc::clone(attempts) as Arc<dyn RequestObserver>),
            ..RegistryOptions::default()
        },
        hosts,
    )
}

/// Push `<tag>-amd64` and `<tag>-arm64`.
async fn push_pair(p: &Pusher, repo: &str, tag: &str, docker: bool) -> (support::Pushed, support::Pushed) {
    let spec = |arch| {
        if docker {
            ImageSpec::docker(arch)
        } else {
            ImageSpec::oci(arch)
        }
    };
    let amd = p.image(repo, &format!("{tag}-amd64"), spec("amd64")).await;
    let arm = p.image(repo, &format!("{tag}-arm64"), spec("arm64")).await;
    (amd, arm)
}

/// The index `<tag>` as the registry serves it, checked against what `assemble` reported.
async fn check_served_index(
    p: &Pusher,
    repo: &str,
    tag: &str,
    pushed: &PushedIndex,
    media_type: &str,
) -> serde_json::Value {
    let (status, ct, body) = p.get_manifest(repo, tag).await;
    assert_eq!(status, 200);
    assert_eq!(ct, media_type, "Content-Type of the stored index");
    assert_eq!(sha256(&body), pushed.digest, "stored bytes hash to the reported digest");
    serde_json::from_slice(&body).expect("index json")
}

fn assert_skopeo_digest(image: &str, digest: &str) {
    if let Some(raw) = skopeo_raw(image) {
        assert_eq!(sha256(&raw), digest, "sha256 of `skopeo inspect --raw {image}`");
    }
}

#[tokio::test]
async fn oci_index_for_two_platforms_has_the_digest_skopeo_sees() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let repo = reg.repo("demo");

    let pushed = client(&[&reg.host])
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("assemble");

    assert_eq!(
        pushed.platforms,
        vec![
            (Platform::LinuxAmd64, amd.digest.clone()),
            (Platform::LinuxArm64, arm.digest.clone())
        ]
    );
    let index = check_served_index(&p, "demo", "v1", &pushed, support::OCI_INDEX).await;
    assert_eq!(
        index,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": support::OCI_INDEX,
            "manifests": [
                {"mediaType": support::OCI_MANIFEST, "digest": amd.digest, "size": amd.size,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": support::OCI_MANIFEST, "digest": arm.digest, "size": arm.size,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            ]
        })
    );
    assert_skopeo_digest(&format!("{repo}:v1"), &pushed.digest);
}

#[tokio::test]
async fn docker_manifest_list_of_docker_v2_images() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "team/app", "2.0", true).await;
    let repo = reg.repo("team/app");

    let pushed = client(&[&reg.host])
        .assemble(
            &repo,
            "2.0",
            &[Platform::LinuxArm64V8, Platform::LinuxAmd64],
            IndexMediaType::Docker,
        )
        .await;
    // linux/arm64/v8 reads <tag>-arm64-v8, which was not pushed.
    let e = pushed.expect_err("arm64-v8 tag is missing");
    assert_eq!(e.label(), "PlatformImageMissing");

    p.image("team/app", "2.0-arm64-v8", ImageSpec::docker("arm64")).await;
    let pushed = client(&[&reg.host])
        .assemble(
            &repo,
            "2.0",
            &[Platform::LinuxArm64, Platform::LinuxAmd64],
            IndexMediaType::Docker,
        )
        .await
        .expect("assemble");
    assert_eq!(pushed.platforms[0], (Platform::LinuxArm64, arm.digest.clone()));
    assert_eq!(pushed.platforms[1], (Platform::LinuxAmd64, amd.digest.clone()));
    let index = check_served_index(&p, "team/app", "2.0", &pushed, support::DOCKER_LIST).await;
    assert_eq!(index["mediaType"], support::DOCKER_LIST);
    for entry in index["manifests"].as_array().expect("manifests") {
        assert_eq!(entry["mediaType"], support::DOCKER_MANIFEST);
    }
    assert_skopeo_digest(&format!("{repo}:2.0"), &pushed.digest);
}

#[tokio::test]
async fn per_arch_tag_that_is_a_buildx_index_with_an_attestation() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v2-amd64", ImageSpec::oci("amd64")).await;
    let (arm_index, arm) = p.attested_image("demo", "v2-arm64", ImageSpec::oci("arm64")).await;
    let repo = reg.repo("demo");

    let c = client(&[&reg.host]);
    let one = c
        .read_platform_image(&repo, "v2", Platform::LinuxArm64)
        .await
        .expect("read the arm64 image through its index");
    assert_eq!(one.descriptor.digest, arm.digest);
    assert_ne!(one.descriptor.digest, arm_index);

    let pushed = c
        .assemble(&repo, "v2", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("assemble");
    assert_eq!(
        pushed.platforms,
        vec![
            (Platform::LinuxAmd64, amd.digest.clone()),
            (Platform::LinuxArm64, arm.digest.clone())
        ],
        "the image inside the per-arch index is used, not the per-arch index"
    );
    let index = check_served_index(&p, "demo", "v2", &pushed, support::OCI_INDEX).await;
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2, "no attestation entry is carried over");
    assert!(entries.iter().all(|e| e["platform"]["os"] == "linux"));
    assert_skopeo_digest(&format!("{repo}:v2"), &pushed.digest);
}

#[tokio::test]
async fn image_built_on_the_wrong_architecture_fails_the_assembly() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    // The arm64 job ran on an amd64 host and pushed an amd64 image under the arm64 tag.
    p.image("demo", "v1-arm64", ImageSpec::oci("amd64")).await;
    let repo = reg.repo("demo");

    let e = client(&[&reg.host])
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("mis-routed build");
    assert_eq!(e.label(), "PlatformMismatch");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("{repo}:v1-arm64 is linux/amd64, expected linux/arm64: the build ran on the wrong architecture")
    );
    let (status, _, _) = p.get_manifest("demo", "v1").await;
    assert_eq!(status, 404, "nothing is pushed when a platform does not verify");

    // A per-arch index whose only image is another platform.
    p.attested_image("demo", "v3-arm64", ImageSpec::oci("amd64")).await;
    let e = client(&[&reg.host])
        .assemble(&repo, "v3", &[Platform::LinuxArm64], IndexMediaType::Oci)
        .await
        .expect_err("index without arm64");
    assert_eq!(e.label(), "PlatformMismatch");
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}:v3-arm64 is an index of linux/amd64, expected linux/arm64: the index pushed for this platform has no image for it"
        )
    );

    // The right architecture, another variant.
    p.image(
        "demo",
        "v4-arm64-v9",
        ImageSpec {
            variant: Some("v8"),
            ..ImageSpec::oci("arm64")
        },
    )
    .await;
    let e = client(&[&reg.host])
        .assemble(&repo, "v4", &[Platform::LinuxArm64V9], IndexMediaType::Oci)
        .await
        .expect_err("variant mismatch");
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}:v4-arm64-v9 is linux/arm64/v8, expected linux/arm64/v9: the image was built for another variant"
        )
    );
}

#[tokio::test]
async fn missing_per_arch_tag_fails_with_its_name() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    let repo = reg.repo("demo");

    let e = client(&[&reg.host])
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("arm64 missing");
    assert_eq!(e.label(), "PlatformImageMissing");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}:v1-arm64 does not exist: expected the linux/arm64 build to have pushed it before the index is assembled"
        )
    );
}

#[tokio::test]
async fn pushing_the_same_index_again_succeeds_with_the_same_digest() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);

    let first = c
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("first");
    let again = c
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("again");
    assert_eq!(first, again);
    // A fresh client (no cached state) agrees.
    let fresh = client(&[&reg.host])
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("fresh client");
    assert_eq!(first, fresh);
    // The Docker list of the same images is other bytes, so another digest.
    let docker = c
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Docker)
        .await
        .expect("docker");
    assert_ne!(docker.digest, first.digest);
    assert_eq!(docker.platforms, first.platforms);
}

#[tokio::test]
async fn find_existing_index_reports_only_indexes_that_cover_every_platform() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);

    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64)
            .await
            .expect("empty registry"),
        None
    );
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64).await.expect("no tag"),
        None
    );

    // A plain image under the index tag is not an index.
    p.image("demo", "plain", ImageSpec::oci("amd64")).await;
    assert_eq!(
        c.find_existing_index(&repo, "plain", &[Platform::LinuxAmd64])
            .await
            .expect("plain"),
        None
    );

    // An index of amd64 only covers amd64 only.
    p.image("demo", "v0-amd64", ImageSpec::oci("amd64")).await;
    let amd_only = c
        .assemble(&repo, "v0", &[Platform::LinuxAmd64], IndexMediaType::Oci)
        .await
        .expect("amd64 only");
    assert_eq!(
        c.find_existing_index(&repo, "v0", &AMD64_ARM64).await.expect("partial"),
        None
    );
    assert_eq!(
        c.find_existing_index(&repo, "v0", &[Platform::LinuxAmd64])
            .await
            .expect("covered"),
        Some(amd_only)
    );

    let pushed = c
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("assemble");
    let found = c
        .find_existing_index(&repo, "v1", &[Platform::LinuxArm64V8, Platform::LinuxAmd64])
        .await
        .expect("find")
        .expect("covering index");
    assert_eq!(found.digest, pushed.digest);
    assert_eq!(
        found.platforms,
        vec![
            (Platform::LinuxArm64V8, arm.digest.clone()),
            (Platform::LinuxAmd64, amd.digest.clone())
        ]
    );
    assert_eq!(
        c.find_existing_index(&repo, "v1", &[Platform::LinuxArm64V9])
            .await
            .expect("v9"),
        None
    );

    // An index whose arm64 entry is really an amd64 image is not reused.
    let liar = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": support::OCI_INDEX,
        "manifests": [{"mediaType": support::OCI_MANIFEST, "digest": amd.digest, "size": amd.size,
                       "platform": {"architecture": "arm64", "os": "linux"}}]
    }))
    .expect("json");
    p.manifest("demo", "liar", support::OCI_INDEX, &liar).await;
    assert_eq!(
        c.find_existing_index(&repo, "liar", &[Platform::LinuxArm64])
            .await
            .expect("liar"),
        None
    );
}

#[tokio::test]
async fn registry_5xx_is_retried_then_reported_as_transient() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;

    let flaky = Front::start(&reg.host, Fault::Unavailable { first: 2 }).await;
    let attempts = Arc::new(Attempts::default());
    let pushed = observed_client(&[&flaky.host], &attempts)
        .assemble(&flaky.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("two 503s are retried");
    assert!(
        flaky.log().iter().filter(|l| l.ends_with("503")).count() == 2,
        "{:?}",
        flaky.log()
    );
    // The observer hears of every attempt the registry saw, retries included, in order.
    let served: Vec<String> = flaky
        .log()
        .iter()
        .map(|l| {
            let (method, rest) = l.split_once(' ').expect("METHOD PATH -> STATUS");
            let (path, status) = rest.split_once(" -> ").expect("PATH -> STATUS");
            let object = path.split('/').nth(3).expect("/v2/<name>/<object>/<reference>");
            format!("{method} {object} -> {status}")
        })
        .collect();
    assert_eq!(*attempts.0.lock().expect("attempts"), served);
    assert_skopeo_digest(&format!("{}:v1", reg.repo("demo")), &pushed.digest);

    let down = Front::start(&reg.host, Fault::Unavailable { first: usize::MAX }).await;
    let started = Instant::now();
    let e = client(&[&down.host])
        .assemble(&down.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("always 503");
    assert_eq!(e.label(), "RegistryUnavailable");
    assert!(e.is_transient());
    assert!(e.to_string().contains("failed after 4 attempts: HTTP 503"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let attempts = Arc::new(Attempts::default());
    let e = observed_client(&[&closed], &attempts)
        .assemble(&format!("{closed}/demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("connection refused");
    assert_eq!(e.label(), "RegistryUnavailable");
    assert!(e.is_transient());
    assert!(e.to_string().contains("cannot connect"), "{e}");
    // Both per-platform manifests are read at once, each tried 4 times.
    assert_eq!(*attempts.0.lock().expect("attempts"), vec!["GET manifests -> none"; 8]);
}

#[tokio::test]
async fn huge_bodies_are_refused_not_buffered() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("demo");

    // A config blob of 5 MiB: refused from its descriptor size, before any byte is read.
    p.image_with_config_padding("demo", "v1-amd64", ImageSpec::oci("amd64"), 5 * 1024 * 1024)
        .await;
    let e = client(&[&reg.host])
        .assemble(&repo, "v1", &[Platform::LinuxAmd64], IndexMediaType::Oci)
        .await
        .expect_err("huge config");
    assert_eq!(e.label(), "ResponseTooLarge");
    assert!(
        e.to_string()
            .contains("config blob is larger than the 4194304 bytes accepted (5"),
        "{e}"
    );

    for fault in [
        Fault::HugeManifest(5 * 1024 * 1024),
        Fault::HugeChunkedManifest(64 * 1024 * 1024),
    ] {
        let front = Front::start(&reg.host, fault).await;
        let e = client(&[&front.host])
            .assemble(&front.repo("demo"), "v1", &[Platform::LinuxAmd64], IndexMediaType::Oci)
            .await
            .expect_err("huge manifest");
        assert_eq!(e.label(), "ResponseTooLarge", "{e}");
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn malformed_manifests_are_errors_that_say_why() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;
    for (fault, want) in [
        (
            Fault::TruncatedManifests,
            "manifest is not valid JSON: EOF while parsing",
        ),
        (Fault::HtmlManifests, "manifest is not valid JSON"),
        (Fault::Schema1Manifests, "Docker schema 1, which is not supported"),
    ] {
        let front = Front::start(&reg.host, fault.clone()).await;
        let e = client(&[&front.host])
            .assemble(&front.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
            .await
            .expect_err("malformed");
        assert_eq!(e.label(), "InvalidManifest", "{fault:?}: {e}");
        assert!(e.to_string().contains(want), "{fault:?}: {e}");
        assert!(e.to_string().contains(&front.repo("demo:v1-a")), "names the image: {e}");
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn digest_answers_are_checked() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;

    let liar = Front::start(&reg.host, Fault::WrongDigest).await;
    let e = client(&[&liar.host])
        .assemble(&liar.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("wrong Docker-Content-Digest");
    assert_eq!(e.label(), "DigestMismatch");
    assert!(e.to_string().contains("Docker-Content-Digest"), "{e}");

    // No Docker-Content-Digest and no Location (ECR has no Location): read the tag back.
    let quiet = Front::start(&reg.host, Fault::NoDigestHeader).await;
    let pushed = client(&[&quiet.host])
        .assemble(&quiet.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("verified by reading back");
    assert!(
        quiet.log().iter().any(|l| l.starts_with("GET /v2/demo/manifests/v1 ")),
        "{:?}",
        quiet.log()
    );
    assert_skopeo_digest(&format!("{}:v1", reg.repo("demo")), &pushed.digest);
}

#[tokio::test]
async fn immutable_tags_accept_the_same_index_and_refuse_another() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;
    let first = client(&[&reg.host])
        .assemble(&reg.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("first push");

    let ecr_like = Front::start(&reg.host, Fault::ImmutableTags).await;
    let c = client(&[&ecr_like.host]);
    let again = c
        .assemble(&ecr_like.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect("same content on an immutable tag");
    assert_eq!(again, first);

    let e = c
        .assemble(&ecr_like.repo("demo"), "v1", &AMD64_ARM64, IndexMediaType::Docker)
        .await
        .expect_err("other content on an immutable tag");
    assert_eq!(e.label(), "ImmutableTagConflict");
    assert!(e.to_string().contains(&first.digest), "{e}");
    assert!(e.to_string().contains("immutable"), "{e}");
}

#[tokio::test]
async fn missing_repository_is_named() {
    let reg = registry!();
    let ecr_like = Front::start(&reg.host, Fault::NoRepository).await;
    let c = client(&[&ecr_like.host]);
    let repo = ecr_like.repo("nope");
    let e = c
        .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
        .await
        .expect_err("no repository");
    assert_eq!(e.label(), "RepositoryMissing");
    assert!(
        e.to_string().starts_with(&format!("repository {repo} does not exist")),
        "{e}"
    );
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64).await.expect("find"),
        None
    );
}

#[tokio::test]
async fn basic_and_bearer_token_auth() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    push_pair(&p, "demo", "v1", false).await;
    let good = || RegistryAuth::Basic {
        username: "builder".into(),
        password: "s3cret".into(),
    };
    let bad = RegistryAuth::Basic {
        username: "builder".into(),
        password: "wrong".into(),
    };

    for fault in [
        Fault::Basic {
            username: "builder".into(),
            password: "s3cret".into(),
        },
        Fault::Bearer {
            username: "builder".into(),
            password: "s3cret".into(),
        },
    ] {
        let front = Front::start(&reg.host, fault.clone()).await;
        let repo = front.repo("demo");
        let c = client_with(good(), &[&front.host]);
        let pushed = c
            .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
            .await
            .expect("authenticated");
        let found = c.find_existing_index(&repo, "v1", &AMD64_ARM64).await.expect("find");
        assert_eq!(found.map(|f| f.digest), Some(pushed.digest.clone()), "{fault:?}");
        let log = front.log();
        if matches!(fault, Fault::Bearer { .. }) {
            assert!(
                log.iter()
                    .any(|l| l.contains("/token?scope=repository%3Ademo%3Apull%2Cpush") && l.ends_with("200")),
                "{log:?}"
            );
        }
        // One challenge per scope, then authenticated requests only.
        assert!(log.iter().filter(|l| l.ends_with("401")).count() <= 2, "{log:?}");
        assert!(
            log.iter()
                .any(|l| l.starts_with("PUT /v2/demo/manifests/v1 ") && l.ends_with("201")),
            "{log:?}"
        );

        for auth in [bad.clone(), RegistryAuth::Anonymous] {
            let e = client_with(auth.clone(), &[&front.host])
                .assemble(&repo, "v1", &AMD64_ARM64, IndexMediaType::Oci)
                .await
                .expect_err("refused");
            assert_eq!(e.label(), "RegistryAuthFailed", "{fault:?} {auth:?}: {e}");
            assert!(!e.is_transient());
            assert!(e.to_string().contains(&front.host), "{e}");
            assert!(!e.to_string().contains("wrong"), "no password in messages: {e}");
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_call() {
    let c = client(&[]);
    let e = c
        .assemble("127.0.0.1:1/demo", "v1", &[], IndexMediaType::Oci)
        .await
        .expect_err("no platforms");
    assert_eq!(e.label(), "InvalidRequest");
    let e = c
        .assemble(
            "127.0.0.1:1/demo",
            "v1",
            &[Platform::LinuxAmd64, Platform::LinuxAmd64],
            IndexMediaType::Oci,
        )
        .await
        .expect_err("twice");
    assert!(matches!(e, RegistryError::InvalidRequest { .. }), "{e}");
    let e = c
        .find_existing_index("127.0.0.1:1/demo:v1", "v1", &[Platform::LinuxAmd64])
        .await
        .expect_err("tag in repository");
    assert_eq!(e.label(), "InvalidReference");
    assert_eq!(sha256_digest(b"x"), sha256(b"x"));
}
