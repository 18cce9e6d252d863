//! Index assembly against a real registry: Debian `docker-registry` (CNCF distribution 2.8) started
//! on a loopback port per test, images uploaded blob by blob, and a front proxy for faults the
//! registry does not produce by itself (5xx, auth, ECR quirks, huge bodies).
//!
//! Each platform's child is named by the digest its job pushed (what [`IndexRequest::children`]
//! carries), never by a `<tag>-<arch>` tag; the tests push the per-platform tags anyway, as the
//! jobs do, and pass the digests the pushes returned.
//!
//! Skipped with a loud message when `docker-registry` is not installed
//! (`apt-get install -y docker-registry skopeo`).

// Helpers outside #[test] fns fail loudly too.
#![allow(clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiarch_operator::api::{IndexMediaType, Platform};
use multiarch_operator::provenance::{
    BUILD_UID_LABEL, CREATED_ANNOTATION, Expected, INPUTS_LABEL, REVISION_LABEL, SOURCE_LABEL,
};
use multiarch_operator::registry::{
    Existing, IndexRequest, PushedIndex, RegistryAuth, RegistryClient, RegistryError, RegistryObject, RegistryOptions,
    RequestObserver, RetryPolicy, ReuseExpectation, sha256_digest,
};
use reqwest::{Method, StatusCode};
use support::{Fault, Front, ImageSpec, Pushed, Pusher, sha256, skopeo_raw};

const AMD64_ARM64: [Platform; 2] = [Platform::LinuxAmd64, Platform::LinuxArm64];

/// The build whose jobs pushed the images (its uid, the commit it resolved, its input hash).
const UID: &str = "6a1f0c3e-2b4d-4e5f-8a9b-0c1d2e3f4a5b";
const COMMIT: &str = "5ff7e5fdca0971851afda6a847c1f8ffe46f3515";
const INPUTS: &str = "sha256:9c1185a5c5e9fc54612808977ee8f548b2258d31a0e5d6f0e7c3b8a1d4f2e6b7";
/// Another build, commit and input hash.
const OTHER_UID: &str = "0b7d2f4e-9a8c-4d3b-a1e2-f3c4d5e6a7b8";
const OTHER_COMMIT: &str = "be6c08040dd116daab2a87ebc99930dd56230dd5";
const OTHER_INPUTS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// What the assembler of [`UID`] requires of every child.
fn this_build() -> Expected {
    Expected {
        build_uid: Some(UID.into()),
        commit: COMMIT.into(),
        inputs: INPUTS.into(),
    }
}

/// What reuse requires: this commit and input hash, built by any build.
fn this_input() -> Expected {
    Expected {
        build_uid: None,
        ..this_build()
    }
}

/// An OCI image labelled as built by [`UID`] from [`COMMIT`] with [`INPUTS`].
fn built(architecture: &str) -> ImageSpec<'_> {
    ImageSpec::oci(architecture).built_by(UID, COMMIT, INPUTS)
}

/// `(platform, digest)` pairs as the request wants them.
fn children(pairs: &[(Platform, &str)]) -> Vec<(Platform, String)> {
    pairs.iter().map(|(p, d)| (*p, d.to_string())).collect()
}

/// linux/amd64 and linux/arm64 from the digests of `amd` and `arm`.
fn pair(amd: &Pushed, arm: &Pushed) -> Vec<(Platform, String)> {
    children(&[(Platform::LinuxAmd64, &amd.digest), (Platform::LinuxArm64, &arm.digest)])
}

/// An OCI request whose children must carry `expected`'s labels.
fn checked<'a>(children: &'a [(Platform, String)], expected: &'a Expected) -> IndexRequest<'a> {
    IndexRequest {
        expected: Some(expected),
        ..request(IndexMediaType::Oci, children)
    }
}

/// A request without label checks or annotations.
fn request(media_type: IndexMediaType, children: &[(Platform, String)]) -> IndexRequest<'_> {
    IndexRequest {
        media_type,
        children,
        expected: None,
        annotations: BTreeMap::new(),
    }
}

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
            allow_loopback: true,
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

/// Push `<tag>-amd64` and `<tag>-arm64`, labelled as [`UID`]'s jobs label them.
async fn push_pair(p: &Pusher, repo: &str, tag: &str, docker: bool) -> (Pushed, Pushed) {
    let spec = |arch| {
        let spec = if docker {
            ImageSpec::docker(arch)
        } else {
            ImageSpec::oci(arch)
        };
        spec.built_by(UID, COMMIT, INPUTS)
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

/// Nothing is at `<repo>:<tag>`.
async fn assert_absent(p: &Pusher, repo: &str, tag: &str, why: &str) {
    let (status, _, _) = p.get_manifest(repo, tag).await;
    assert_eq!(status, 404, "{repo}:{tag}: {why}");
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
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &pair(&amd, &arm)))
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

    // The linux/arm64/v8 job pushed its image, but to another repository: team/app does not have
    // that digest.
    let elsewhere = p
        .image(
            "team/other",
            "2.0-arm64-v8",
            ImageSpec {
                variant: Some("v8"),
                ..ImageSpec::docker("arm64")
            },
        )
        .await;
    let pushed = client(&[&reg.host])
        .assemble(
            &repo,
            "2.0",
            &request(
                IndexMediaType::Docker,
                &children(&[
                    (Platform::LinuxArm64V8, &elsewhere.digest),
                    (Platform::LinuxAmd64, &amd.digest),
                ]),
            ),
        )
        .await;
    let e = pushed.expect_err("the arm64-v8 image is not in team/app");
    assert_eq!(e.label(), "PlatformImageMissing");
    assert_absent(&p, "team/app", "2.0", "nothing is pushed when a child is missing").await;

    let pushed = client(&[&reg.host])
        .assemble(
            &repo,
            "2.0",
            &request(
                IndexMediaType::Docker,
                &children(&[(Platform::LinuxArm64, &arm.digest), (Platform::LinuxAmd64, &amd.digest)]),
            ),
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
async fn per_arch_image_that_is_a_buildx_index_with_an_attestation() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v2-amd64", built("amd64")).await;
    // The arm64 job reports the digest of what buildx pushed: the index, not the image in it.
    let (arm_index, arm) = p.attested_image("demo", "v2-arm64", built("arm64")).await;
    assert_ne!(arm.digest, arm_index);
    let repo = reg.repo("demo");

    let c = client(&[&reg.host]);
    let kids = children(&[(Platform::LinuxAmd64, &amd.digest), (Platform::LinuxArm64, &arm_index)]);
    let pushed = c
        .assemble(
            &repo,
            "v2",
            // The image inside the index carries the labels; they are checked too.
            &checked(&kids, &this_build()),
        )
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
    assert!(
        !index.to_string().contains(&arm_index),
        "the per-arch index is not an entry: {index}"
    );
    assert_skopeo_digest(&format!("{repo}:v2"), &pushed.digest);
}

#[tokio::test]
async fn image_built_on_the_wrong_architecture_fails_the_assembly() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    // The arm64 job ran on an amd64 host and pushed an amd64 image under the arm64 tag.
    let wrong = p.image("demo", "v1-arm64", ImageSpec::oci("amd64")).await;
    let repo = reg.repo("demo");

    let e = client(&[&reg.host])
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &pair(&amd, &wrong)))
        .await
        .expect_err("mis-routed build");
    assert_eq!(e.label(), "PlatformMismatch");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}@{} is linux/amd64, expected linux/arm64: the build ran on the wrong architecture",
            wrong.digest
        )
    );
    assert_absent(&p, "demo", "v1", "nothing is pushed when a platform does not verify").await;

    // A per-arch index whose only image is another platform.
    let (v3_index, _) = p.attested_image("demo", "v3-arm64", ImageSpec::oci("amd64")).await;
    let e = client(&[&reg.host])
        .assemble(
            &repo,
            "v3",
            &request(IndexMediaType::Oci, &children(&[(Platform::LinuxArm64, &v3_index)])),
        )
        .await
        .expect_err("index without arm64");
    assert_eq!(e.label(), "PlatformMismatch");
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}@{v3_index} is an index of linux/amd64, expected linux/arm64: the index pushed for this platform has no image for it"
        )
    );
    assert_absent(&p, "demo", "v3", "nothing is pushed when a platform does not verify").await;

    // The right architecture, another variant.
    let v8 = p
        .image(
            "demo",
            "v4-arm64-v9",
            ImageSpec {
                variant: Some("v8"),
                ..ImageSpec::oci("arm64")
            },
        )
        .await;
    let e = client(&[&reg.host])
        .assemble(
            &repo,
            "v4",
            &request(IndexMediaType::Oci, &children(&[(Platform::LinuxArm64V9, &v8.digest)])),
        )
        .await
        .expect_err("variant mismatch");
    assert_eq!(e.label(), "PlatformMismatch");
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}@{} is linux/arm64/v8, expected linux/arm64/v9: the image was built for another variant",
            v8.digest
        )
    );
}

#[tokio::test]
async fn missing_child_fails_with_its_digest() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let amd = p.image("demo", "v1-amd64", ImageSpec::oci("amd64")).await;
    // The arm64 job reports a digest the repository does not have (it pushed elsewhere).
    let arm = p.image("elsewhere", "v1-arm64", ImageSpec::oci("arm64")).await;
    let repo = reg.repo("demo");

    let e = client(&[&reg.host])
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &pair(&amd, &arm)))
        .await
        .expect_err("arm64 missing");
    assert_eq!(e.label(), "PlatformImageMissing");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}@{} does not exist: the linux/arm64 job reported pushing it, but the registry does not have it",
            arm.digest
        )
    );
    assert_absent(&p, "demo", "v1", "nothing is pushed when a child is missing").await;
}

#[tokio::test]
async fn pushing_the_same_index_again_succeeds_with_the_same_digest() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    let kids = pair(&amd, &arm);

    let first = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("first");
    let again = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("again");
    assert_eq!(first, again);
    // A fresh client (no cached state) agrees.
    let fresh = client(&[&reg.host])
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("fresh client");
    assert_eq!(first, fresh);
    // The Docker list of the same images is other bytes, so another digest.
    let docker = c
        .assemble(&repo, "v1", &request(IndexMediaType::Docker, &kids))
        .await
        .expect("docker");
    assert_ne!(docker.digest, first.digest);
    assert_eq!(docker.platforms, first.platforms);
}

#[tokio::test]
async fn assembly_checks_every_childs_labels_against_the_build() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    let expected = this_build();

    let kids = pair(&amd, &arm);
    let pushed = c
        .assemble(&repo, "v1", &checked(&kids, &expected))
        .await
        .expect("labels match");
    assert_eq!(pushed.platforms, kids);
    check_served_index(&p, "demo", "v1", &pushed, support::OCI_INDEX).await;

    // An arm64 image from another build, from another commit, and one with no labels at all.
    let cases = [
        (
            "v2",
            ImageSpec::oci("arm64").built_by(OTHER_UID, COMMIT, INPUTS),
            format!("label {BUILD_UID_LABEL} is \"{OTHER_UID}\", expected {UID}"),
        ),
        (
            "v3",
            ImageSpec::oci("arm64").built_by(UID, OTHER_COMMIT, INPUTS),
            format!("label {REVISION_LABEL} is \"{OTHER_COMMIT}\", expected {COMMIT}"),
        ),
        (
            "v4",
            ImageSpec::oci("arm64").built_by(UID, COMMIT, OTHER_INPUTS),
            format!("label {INPUTS_LABEL} is \"{OTHER_INPUTS}\", expected {INPUTS}"),
        ),
        (
            "v5",
            ImageSpec::oci("arm64"),
            format!("label {REVISION_LABEL} is absent, expected {COMMIT}"),
        ),
    ];
    for (tag, spec, mismatch) in cases {
        let stranger = p.image("demo", &format!("{tag}-arm64"), spec).await;
        let e = c
            .assemble(&repo, tag, &checked(&pair(&amd, &stranger), &expected))
            .await
            .expect_err(&mismatch);
        assert_eq!(e.label(), "ProvenanceMismatch", "{e}");
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            format!(
                "{repo}@{} is not what this build's linux/arm64 job built: {mismatch}",
                stranger.digest
            )
        );
        assert_absent(&p, "demo", tag, "nothing is pushed when a child's labels differ").await;
        // Without a label check the same child is accepted.
        c.assemble(&repo, tag, &request(IndexMediaType::Oci, &pair(&amd, &stranger)))
            .await
            .expect("no label check");
    }

    // Inside a buildx index, the message names the index and the image in it.
    let (index, image) = p
        .attested_image(
            "demo",
            "v6-arm64",
            ImageSpec::oci("arm64").built_by(OTHER_UID, COMMIT, INPUTS),
        )
        .await;
    let kids = children(&[(Platform::LinuxAmd64, &amd.digest), (Platform::LinuxArm64, &index)]);
    let e = c
        .assemble(&repo, "v6", &checked(&kids, &expected))
        .await
        .expect_err("another build's attested image");
    assert_eq!(e.label(), "ProvenanceMismatch", "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{repo}@{index} ({}) is not what this build's linux/arm64 job built: label {BUILD_UID_LABEL} is \"{OTHER_UID}\", expected {UID}",
            image.digest
        )
    );
    assert_absent(&p, "demo", "v6", "nothing is pushed when a child's labels differ").await;
}

#[tokio::test]
async fn assembly_reads_each_child_by_its_digest_not_by_its_tag() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("demo");
    let amd = p.image("demo", "v1-amd64", built("amd64")).await;
    let a = p.image("demo", "v1-arm64", built("arm64")).await;
    // Another arm64 build (a re-run, a concurrent build of the same tag) overwrites `v1-arm64`
    // before the index is assembled.
    let b = p
        .image(
            "demo",
            "v1-arm64",
            ImageSpec::oci("arm64").built_by(OTHER_UID, COMMIT, INPUTS),
        )
        .await;
    assert_ne!(a.digest, b.digest);
    let (_, _, now) = p.get_manifest("demo", "v1-arm64").await;
    assert_eq!(sha256(&now), b.digest, "the tag now names B");

    let pushed = client(&[&reg.host])
        .assemble(&repo, "v1", &checked(&pair(&amd, &a), &this_build()))
        .await
        .expect("A is still in the repository");
    assert_eq!(
        pushed.platforms,
        vec![
            (Platform::LinuxAmd64, amd.digest.clone()),
            (Platform::LinuxArm64, a.digest.clone())
        ]
    );
    let index = check_served_index(&p, "demo", "v1", &pushed, support::OCI_INDEX).await;
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|e| e["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(listed, [amd.digest.as_str(), a.digest.as_str()]);
    assert!(!listed.contains(&b.digest.as_str()), "B is never in the index");
}

#[tokio::test]
async fn oci_index_carries_the_annotations_and_a_docker_list_none() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    let kids = pair(&amd, &arm);
    let annotations: BTreeMap<String, String> = [
        (REVISION_LABEL, COMMIT),
        (SOURCE_LABEL, "https://github.com/example/app.git"),
        (CREATED_ANNOTATION, "2025-01-02T03:04:05Z"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let annotated = |media_type| IndexRequest {
        annotations: annotations.clone(),
        ..request(media_type, &kids)
    };

    let oci = c
        .assemble(&repo, "v1", &annotated(IndexMediaType::Oci))
        .await
        .expect("oci");
    let index = check_served_index(&p, "demo", "v1", &oci, support::OCI_INDEX).await;
    assert_eq!(
        index["annotations"],
        serde_json::json!({
            "org.opencontainers.image.revision": COMMIT,
            "org.opencontainers.image.source": "https://github.com/example/app.git",
            "org.opencontainers.image.created": "2025-01-02T03:04:05Z",
        })
    );
    assert_eq!(index["manifests"].as_array().expect("manifests").len(), 2);
    let plain = c
        .assemble(&repo, "v1-plain", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("oci without annotations");
    assert_ne!(plain.digest, oci.digest, "the annotations are in the bytes");
    assert_skopeo_digest(&format!("{repo}:v1"), &oci.digest);

    let docker = c
        .assemble(&repo, "v1-docker", &annotated(IndexMediaType::Docker))
        .await
        .expect("docker");
    let list = check_served_index(&p, "demo", "v1-docker", &docker, support::DOCKER_LIST).await;
    assert!(
        list.get("annotations").is_none(),
        "a Docker list has no annotations: {list}"
    );
    let unannotated = c
        .assemble(&repo, "v1-docker", &request(IndexMediaType::Docker, &kids))
        .await
        .expect("docker without annotations");
    assert_eq!(
        unannotated.digest, docker.digest,
        "the annotations are dropped, not encoded"
    );
}

#[tokio::test]
async fn find_existing_index_reports_only_indexes_that_cover_every_platform() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    let reuse = this_input();
    let pinned = ReuseExpectation::Pinned(&reuse);

    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, pinned)
            .await
            .expect("empty registry"),
        Existing::Absent
    );
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, pinned)
            .await
            .expect("no tag"),
        Existing::Absent
    );

    // A plain image under the index tag is not an index.
    p.image("demo", "plain", built("amd64")).await;
    assert_eq!(
        c.find_existing_index(&repo, "plain", &[Platform::LinuxAmd64], pinned)
            .await
            .expect("plain"),
        Existing::Differs("it is a single image, not an index".into())
    );

    // An index of amd64 only covers amd64 only.
    let amd_only = c
        .assemble(
            &repo,
            "v0",
            &request(IndexMediaType::Oci, &children(&[(Platform::LinuxAmd64, &amd.digest)])),
        )
        .await
        .expect("amd64 only");
    assert_eq!(
        c.find_existing_index(&repo, "v0", &AMD64_ARM64, pinned)
            .await
            .expect("partial"),
        Existing::Differs("it has no linux/arm64 image (it has linux/amd64)".into())
    );
    assert_eq!(
        c.find_existing_index(&repo, "v0", &[Platform::LinuxAmd64], pinned)
            .await
            .expect("covered"),
        Existing::Reusable(amd_only)
    );

    let pushed = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &pair(&amd, &arm)))
        .await
        .expect("assemble");
    let Existing::Reusable(found) = c
        .find_existing_index(&repo, "v1", &[Platform::LinuxArm64V8, Platform::LinuxAmd64], pinned)
        .await
        .expect("find")
    else {
        panic!("a covering index of this input is reusable");
    };
    assert_eq!(found.digest, pushed.digest);
    assert_eq!(
        found.platforms,
        vec![
            (Platform::LinuxArm64V8, arm.digest.clone()),
            (Platform::LinuxAmd64, amd.digest.clone())
        ]
    );
    assert_eq!(
        c.find_existing_index(&repo, "v1", &[Platform::LinuxArm64V9], pinned)
            .await
            .expect("v9"),
        Existing::Differs("it has no linux/arm64/v9 image (it has linux/amd64, linux/arm64/v8)".into())
    );

    // An index whose arm64 entry is really an amd64 image is not reused.
    let liar = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": support::OCI_INDEX,
        "manifests": [{"mediaType": support::OCI_MANIFEST, "digest": amd.digest, "size": amd.size,
                       "platform": {"architecture": "arm64", "os": "linux"}}]
    }))
    .expect("json");
    p.manifest("demo", "liar", support::OCI_INDEX, &liar).await;
    match c
        .find_existing_index(&repo, "liar", &[Platform::LinuxArm64], pinned)
        .await
        .expect("liar")
    {
        Existing::Differs(why) => {
            assert!(why.starts_with("an entry does not verify: "), "{why}");
            assert!(why.contains("is linux/amd64, expected linux/arm64"), "{why}");
        }
        other => panic!("the liar is not reusable: {other:?}"),
    }
}

#[tokio::test]
async fn find_existing_index_reuses_only_what_this_input_built() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    let reuse = this_input();
    let pinned = ReuseExpectation::Pinned(&reuse);

    // Another build (another uid) of the same commit and inputs pushed the index.
    let amd = p
        .image(
            "demo",
            "v1-amd64",
            ImageSpec::oci("amd64").built_by(OTHER_UID, COMMIT, INPUTS),
        )
        .await;
    let arm = p
        .image(
            "demo",
            "v1-arm64",
            ImageSpec::oci("arm64").built_by(OTHER_UID, COMMIT, INPUTS),
        )
        .await;
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, pinned)
            .await
            .expect("no tag"),
        Existing::Absent
    );
    let pushed = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &pair(&amd, &arm)))
        .await
        .expect("assemble");
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, pinned)
            .await
            .expect("same commit and inputs"),
        Existing::Reusable(pushed.clone()),
        "the build uid is not compared for reuse"
    );

    // This input at another commit, and another input at this commit.
    let other_commit = Expected {
        commit: OTHER_COMMIT.into(),
        ..this_input()
    };
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Pinned(&other_commit))
            .await
            .expect("other commit"),
        Existing::Differs(format!(
            "its linux/amd64 image's label {REVISION_LABEL} is \"{COMMIT}\", expected {OTHER_COMMIT}"
        ))
    );
    let other_inputs = Expected {
        inputs: OTHER_INPUTS.into(),
        ..this_input()
    };
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Pinned(&other_inputs))
            .await
            .expect("other inputs"),
        Existing::Differs(format!(
            "its linux/amd64 image's label {INPUTS_LABEL} is \"{INPUTS}\", expected {OTHER_INPUTS}"
        ))
    );

    // An index with one child from another commit, or with unlabelled children.
    let stale = p
        .image(
            "demo",
            "v2-arm64",
            ImageSpec::oci("arm64").built_by(UID, OTHER_COMMIT, INPUTS),
        )
        .await;
    c.assemble(&repo, "v2", &request(IndexMediaType::Oci, &pair(&amd, &stale)))
        .await
        .expect("assemble v2");
    assert_eq!(
        c.find_existing_index(&repo, "v2", &AMD64_ARM64, pinned)
            .await
            .expect("stale arm64"),
        Existing::Differs(format!(
            "its linux/arm64 image's label {REVISION_LABEL} is \"{OTHER_COMMIT}\", expected {COMMIT}"
        ))
    );
    let bare_amd = p.image("demo", "v3-amd64", ImageSpec::oci("amd64")).await;
    let bare_arm = p.image("demo", "v3-arm64", ImageSpec::oci("arm64")).await;
    c.assemble(
        &repo,
        "v3",
        &request(IndexMediaType::Docker, &pair(&bare_amd, &bare_arm)),
    )
    .await
    .expect("assemble v3");
    assert_eq!(
        c.find_existing_index(&repo, "v3", &AMD64_ARM64, pinned)
            .await
            .expect("unlabelled"),
        Existing::Differs(format!(
            "its linux/amd64 image's label {REVISION_LABEL} is absent, expected {COMMIT}"
        ))
    );

    // A branch or tag: nothing is provably reusable, even an index whose labels all match.
    match c
        .find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Unpinned("main"))
        .await
        .expect("unpinned")
    {
        Existing::Differs(why) => {
            assert!(
                why.contains("\"main\"") && why.contains("not a full commit SHA"),
                "{why}"
            );
        }
        other => panic!("an unpinned revision reuses nothing: {other:?}"),
    }

    // A single image at the tag.
    p.image("demo", "single", built("amd64")).await;
    assert_eq!(
        c.find_existing_index(&repo, "single", &[Platform::LinuxAmd64], pinned)
            .await
            .expect("single"),
        Existing::Differs("it is a single image, not an index".into())
    );
}

#[tokio::test]
async fn registry_5xx_is_retried_then_reported_as_transient() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);

    let flaky = Front::start(&reg.host, Fault::Unavailable { first: 2 }).await;
    let attempts = Arc::new(Attempts::default());
    let pushed = observed_client(&[&flaky.host], &attempts)
        .assemble(&flaky.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
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
        .assemble(&down.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
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
        .assemble(&format!("{closed}/demo"), "v1", &request(IndexMediaType::Oci, &kids))
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
    let padded = p
        .image_with_config_padding("demo", "v1-amd64", ImageSpec::oci("amd64"), 5 * 1024 * 1024)
        .await;
    let kids = children(&[(Platform::LinuxAmd64, &padded.digest)]);
    let attempts = Arc::new(Attempts::default());
    let e = observed_client(&[&reg.host], &attempts)
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect_err("huge config");
    assert_eq!(e.label(), "ResponseTooLarge");
    assert!(
        e.to_string()
            .contains("config blob is larger than the 4194304 bytes accepted (5"),
        "{e}"
    );
    assert_eq!(
        *attempts.0.lock().expect("attempts"),
        ["GET manifests -> 200"],
        "the config blob is never requested"
    );

    for fault in [
        Fault::HugeManifest(5 * 1024 * 1024),
        Fault::HugeChunkedManifest(64 * 1024 * 1024),
    ] {
        let front = Front::start(&reg.host, fault).await;
        let e = client(&[&front.host])
            .assemble(&front.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
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
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);
    client(&[&reg.host])
        .assemble(&reg.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("the index the reuse check reads");
    let reuse = this_input();

    for (fault, want) in [
        (
            Fault::TruncatedManifests,
            "manifest is not valid JSON: EOF while parsing",
        ),
        (Fault::HtmlManifests, "manifest is not valid JSON"),
        (Fault::Schema1Manifests, "Docker schema 1, which is not supported"),
    ] {
        let front = Front::start(&reg.host, fault.clone()).await;
        let c = client(&[&front.host]);

        // Read by tag (the reuse check): the body is parsed and refused.
        let e = c
            .find_existing_index(
                &front.repo("demo"),
                "v1",
                &AMD64_ARM64,
                ReuseExpectation::Pinned(&reuse),
            )
            .await
            .expect_err("malformed");
        assert_eq!(e.label(), "InvalidManifest", "{fault:?}: {e}");
        assert!(e.to_string().contains(want), "{fault:?}: {e}");
        assert!(
            e.to_string().starts_with(&front.repo("demo:v1: ")),
            "names the image: {e}"
        );
        assert!(!e.is_transient());

        // Read by digest (assembly): a body that does not hash to its digest is refused as such
        // before it is parsed; one that does is parsed and refused.
        let e = c
            .assemble(&front.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
            .await
            .expect_err("malformed");
        assert!(
            e.to_string().contains(&front.repo(&format!("demo@{}", amd.digest))),
            "names the image: {e}"
        );
        assert!(!e.is_transient());
        if matches!(fault, Fault::Schema1Manifests) {
            assert_eq!(e.label(), "InvalidManifest", "{fault:?}: {e}");
            assert!(e.to_string().contains(want), "{fault:?}: {e}");
        } else {
            assert_eq!(e.label(), "DigestMismatch", "{fault:?}: {e}");
            assert!(
                e.to_string().contains("the sha256 of the manifest served is sha256:"),
                "{fault:?}: {e}"
            );
            assert!(e.to_string().ends_with(&format!("expected {}", amd.digest)), "{e}");
        }
    }
}

#[tokio::test]
async fn digest_answers_are_checked() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);

    let liar = Front::start(&reg.host, Fault::WrongDigest).await;
    let e = client(&[&liar.host])
        .assemble(&liar.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect_err("wrong Docker-Content-Digest");
    assert_eq!(e.label(), "DigestMismatch");
    assert!(e.to_string().contains("Docker-Content-Digest"), "{e}");

    // No Docker-Content-Digest and no Location (ECR has no Location): read the tag back.
    let quiet = Front::start(&reg.host, Fault::NoDigestHeader).await;
    let pushed = client(&[&quiet.host])
        .assemble(&quiet.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
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
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);
    let first = client(&[&reg.host])
        .assemble(&reg.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("first push");

    let ecr_like = Front::start(&reg.host, Fault::ImmutableTags).await;
    let c = client(&[&ecr_like.host]);
    let again = c
        .assemble(&ecr_like.repo("demo"), "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("same content on an immutable tag");
    assert_eq!(again, first);

    let e = c
        .assemble(&ecr_like.repo("demo"), "v1", &request(IndexMediaType::Docker, &kids))
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
    let kids = children(&[
        (Platform::LinuxAmd64, &sha256_digest(b"amd64 image")),
        (Platform::LinuxArm64, &sha256_digest(b"arm64 image")),
    ]);
    let e = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect_err("no repository");
    assert_eq!(e.label(), "RepositoryMissing");
    assert!(
        e.to_string().starts_with(&format!("repository {repo} does not exist")),
        "{e}"
    );
    assert_eq!(
        c.find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Pinned(&this_input()))
            .await
            .expect("find"),
        Existing::Absent
    );
}

#[tokio::test]
async fn basic_and_bearer_token_auth() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);
    let reuse = this_input();
    let good = |host: &str| RegistryAuth::basic(host, "builder", "s3cret");
    let bad = |host: &str| RegistryAuth::basic(host, "builder", "wrong");

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
        let c = client_with(good(&front.host), &[&front.host]);
        let pushed = c
            .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
            .await
            .expect("authenticated");
        let found = c
            .find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Pinned(&reuse))
            .await
            .expect("find");
        assert_eq!(found, Existing::Reusable(pushed.clone()), "{fault:?}");
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

        for auth in [bad(&front.host), RegistryAuth::Anonymous] {
            let e = client_with(auth.clone(), &[&front.host])
                .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
                .await
                .expect_err("refused");
            assert_eq!(e.label(), "RegistryAuthFailed", "{fault:?} {auth:?}: {e}");
            assert!(!e.is_transient());
            assert!(e.to_string().contains(&front.host), "{e}");
            assert!(!e.to_string().contains("wrong"), "no password in messages: {e}");
            let e = client_with(auth.clone(), &[&front.host])
                .find_existing_index(&repo, "v1", &AMD64_ARM64, ReuseExpectation::Pinned(&reuse))
                .await
                .expect_err("refused, not absent");
            assert_eq!(e.label(), "RegistryAuthFailed", "{fault:?} {auth:?}: {e}");
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_call() {
    // Nothing listens on port 1: a request would fail as RegistryUnavailable, not as these.
    let c = client(&[]);
    let digest = sha256_digest(b"an image");
    let e = c
        .assemble("127.0.0.1:1/demo", "v1", &request(IndexMediaType::Oci, &[]))
        .await
        .expect_err("no platforms");
    assert_eq!(e.label(), "InvalidRequest");
    let e = c
        .assemble(
            "127.0.0.1:1/demo",
            "v1",
            &request(
                IndexMediaType::Oci,
                &children(&[(Platform::LinuxAmd64, &digest), (Platform::LinuxAmd64, &digest)]),
            ),
        )
        .await
        .expect_err("twice");
    assert!(matches!(e, RegistryError::InvalidRequest { .. }), "{e}");
    // A child named by a tag, not a digest: a tag can move between the push and the assembly.
    let e = c
        .assemble(
            "127.0.0.1:1/demo",
            "v1",
            &request(IndexMediaType::Oci, &children(&[(Platform::LinuxAmd64, "v1-amd64")])),
        )
        .await
        .expect_err("a tag");
    assert_eq!(e.label(), "InvalidRequest");
    assert!(e.to_string().contains("\"v1-amd64\" is not a sha256 digest"), "{e}");
    let e = c
        .find_existing_index(
            "127.0.0.1:1/demo:v1",
            "v1",
            &[Platform::LinuxAmd64],
            ReuseExpectation::Unpinned("main"),
        )
        .await
        .expect_err("tag in repository");
    assert_eq!(e.label(), "InvalidReference");
    let e = c
        .find_existing_index("127.0.0.1:1/demo", "v1", &[], ReuseExpectation::Unpinned("main"))
        .await
        .expect_err("no platforms");
    assert_eq!(e.label(), "InvalidRequest");
    assert_eq!(sha256_digest(b"x"), sha256(b"x"));
}

/// `push_tags`: the index's exact bytes under more tags (a tag that held another image is moved),
/// each push verified; a Docker list keeps its media type; pushing again is harmless; an immutable
/// tag that holds another image and a digest the registry does not have are refused.
#[tokio::test]
async fn more_tags_get_the_same_index_bytes() {
    let reg = registry!();
    let p = Pusher::new(&reg.host);
    let (amd, arm) = push_pair(&p, "demo", "v1", false).await;
    let kids = pair(&amd, &arm);
    let repo = reg.repo("demo");
    let c = client(&[&reg.host]);
    for (media_type, tag, served) in [
        (IndexMediaType::Oci, "v1", support::OCI_INDEX),
        (IndexMediaType::Docker, "v1-docker", support::DOCKER_LIST),
    ] {
        let pushed = c
            .assemble(&repo, tag, &request(media_type, &kids))
            .await
            .expect("assemble");
        // `latest` first holds another image: it is moved.
        p.image("demo", "latest", ImageSpec::oci("amd64")).await;
        let tags = vec!["latest".to_string(), format!("{tag}-release")];
        c.push_tags(&repo, &pushed.digest, &tags).await.expect("push tags");
        c.push_tags(&repo, &pushed.digest, &tags)
            .await
            .expect("again: harmless");
        for t in &tags {
            let index = check_served_index(&p, "demo", t, &pushed, served).await;
            assert_eq!(index["mediaType"], served);
            assert_skopeo_digest(&format!("{repo}:{t}"), &pushed.digest);
        }
    }

    let unknown = sha256_digest(b"no such index");
    let e = c
        .push_tags(&repo, &unknown, &["x".to_string()])
        .await
        .expect_err("an index the registry does not have");
    assert_eq!(e.label(), "InvalidManifest");
    assert_absent(&p, "demo", "x", "nothing tagged").await;
    let e = c
        .push_tags(&repo, &amd.digest, &["x".to_string()])
        .await
        .expect_err("a single image is not an index");
    assert!(e.to_string().contains("not an index"), "{e}");

    let first = c
        .assemble(&repo, "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect("assemble");
    let ecr_like = Front::start(&reg.host, Fault::ImmutableTags).await;
    let e = client(&[&ecr_like.host])
        .push_tags(&ecr_like.repo("demo"), &first.digest, &["v1-docker".to_string()])
        .await
        .expect_err("an immutable tag that holds another index");
    assert_eq!(e.label(), "ImmutableTagConflict");
}

/// A registry that speaks plain HTTP, reached as https: the client stops at once and names the
/// flag, instead of retrying a TLS handshake that can never succeed.
#[tokio::test]
async fn a_plain_http_registry_reached_over_https_names_the_flag_and_is_not_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                .await;
        }
    });
    let kids = children(&[(Platform::LinuxAmd64, &sha256(b"a"))]);
    let attempts = Arc::new(Attempts::default());
    let started = Instant::now();
    let e = observed_client(&[], &attempts)
        .assemble(&format!("{host}/demo"), "v1", &request(IndexMediaType::Oci, &kids))
        .await
        .expect_err("plain http");
    assert_eq!(
        e.to_string(),
        format!(
            "registry {host} answered plain HTTP; if it is a plain-http registry, pass --registry-plain-http {host}"
        )
    );
    assert_eq!(e.label(), "RegistryPlainHttp");
    assert!(!e.is_transient());
    // One try per request (the index at the tag and the platform manifest may be read at once).
    let seen = attempts.0.lock().expect("attempts").clone();
    assert!(!seen.is_empty() && seen.len() <= 2, "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
