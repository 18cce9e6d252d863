//! `make bench`: index assembly by the operator versus `docker manifest create` + `push`, in the
//! same run, against the same local registry and the same two images.
//!
//! Starts Debian `docker-registry` on a loopback port, pushes linux/amd64 and linux/arm64 images,
//! then runs `BENCH_RUNS` (default 50) rounds after 2 warm-up rounds, each with fresh index tags.
//! Each round runs, back to back so they see the same machine load:
//! - ours: `RegistryClient::assemble` (read both per-platform manifests by the digests the pushes
//!   returned, verify both configs' platforms and builder labels, PUT the annotated OCI index,
//!   check the digest) with a new client, so connection set-up is included;
//! - ours again with one client kept across rounds (how the controller runs), for information;
//! - docker: `docker manifest create --insecure` then `docker manifest push --insecure`, with
//!   `DOCKER_CONFIG` in a temporary directory (no daemon needed).
//!
//! The registry stores its data under `BENCH_REGISTRY_ROOT`, default `/dev/shm` when it exists:
//! on a shared build machine, disk latency of the registry (not of either tool) otherwise
//! dominates and varies. `BENCH_REGISTRY_ROOT=/tmp` measures with the registry on disk.
//!
//! Prints, in the `bench <name> <value> <unit>` format `make bench` collects:
//! `index_assembly_ms`, `docker_manifest_ms` (medians), `index_assembly_ratio_vs_docker_manifest`,
//! and, for information, `index_assembly_warm_client_ms`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs one round as a smoke test,
//! prints no figures, and skips what is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use multiarch_operator::api::{IndexMediaType, Platform};
use multiarch_operator::provenance::{CREATED_ANNOTATION, Expected, REVISION_LABEL, SOURCE_LABEL};
use multiarch_operator::registry::{IndexRequest, RegistryAuth, RegistryClient, RegistryOptions};
use support::{ImageSpec, Pusher, Registry, which};

/// The build the bench's images claim to come from.
const UID: &str = "6a1f0c3e-2b4d-4e5f-8a9b-0c1d2e3f4a5b";
const COMMIT: &str = "5ff7e5fdca0971851afda6a847c1f8ffe46f3515";
const INPUTS: &str = "sha256:9c1185a5c5e9fc54612808977ee8f548b2258d31a0e5d6f0e7c3b8a1d4f2e6b7";

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let n = samples.len();
    let mid = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    };
    mid.as_secs_f64() * 1000.0
}

fn client(host: &str) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        auth: RegistryAuth::Anonymous,
        plain_http_hosts: vec![host.to_string()],
        allow_loopback: true,
        ..RegistryOptions::default()
    })
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not: then this is a one-round smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let (runs, warmup) = if benching {
        let runs = std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(50);
        (runs, 2)
    } else {
        (1, 0)
    };
    let root = std::env::var_os("BENCH_REGISTRY_ROOT")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| benching && p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let Some(reg) = Registry::start_in(&root) else {
        eprintln!("bench: docker-registry is missing; no figures");
        std::process::exit(if benching { 2 } else { 0 });
    };
    let docker = which("docker");
    if docker.is_none() {
        eprintln!("bench: the docker CLI is missing; no docker_manifest_ms and no ratio");
        if benching {
            std::process::exit(2);
        }
    }
    let p = Pusher::new(&reg.host);
    let repo = reg.repo("bench");

    // The two images, labelled as the builder labels them. Ours is given their digests, as the
    // controller is given what each platform's job pushed, and checks their labels and annotates
    // the index as the controller does; docker is given their tags.
    let amd = p
        .image(
            "bench",
            "base-amd64",
            ImageSpec::oci("amd64").built_by(UID, COMMIT, INPUTS),
        )
        .await;
    let arm = p
        .image(
            "bench",
            "base-arm64",
            ImageSpec::oci("arm64").built_by(UID, COMMIT, INPUTS),
        )
        .await;
    let children = [
        (Platform::LinuxAmd64, amd.digest.clone()),
        (Platform::LinuxArm64, arm.digest.clone()),
    ];
    let expected = Expected {
        build_uid: Some(UID.into()),
        commit: COMMIT.into(),
        inputs: INPUTS.into(),
    };
    let request = IndexRequest {
        media_type: IndexMediaType::Oci,
        children: &children,
        expected: Some(&expected),
        annotations: [
            (REVISION_LABEL, COMMIT),
            (SOURCE_LABEL, "https://github.com/example/app.git"),
            (CREATED_ANNOTATION, "2025-01-02T03:04:05Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };

    let docker_config = tempfile::tempdir().expect("tempdir");
    let sources = [format!("{repo}:base-amd64"), format!("{repo}:base-arm64")];
    let docker_round = |i: usize| {
        let docker = docker.as_ref()?;
        let run = |args: &[&str]| {
            let out = Command::new(docker)
                .env("DOCKER_CONFIG", docker_config.path())
                .args(args)
                .output()
                .expect("run docker");
            assert!(
                out.status.success(),
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let target = format!("{repo}:docker-{i}");
        let start = Instant::now();
        run(&["manifest", "create", "--insecure", &target, &sources[0], &sources[1]]);
        run(&["manifest", "push", "--insecure", &target]);
        Some(start.elapsed())
    };

    let shared = client(&reg.host);
    let (mut ours, mut warm, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut digest = String::new();
    for i in 0..warmup + runs {
        let fresh = client(&reg.host);
        let start = Instant::now();
        let pushed = fresh
            .assemble(&repo, &format!("fresh-{i}"), &request)
            .await
            .unwrap_or_else(|e| panic!("assemble: {e}"));
        let t_fresh = start.elapsed();

        let start = Instant::now();
        shared
            .assemble(&repo, &format!("warm-{i}"), &request)
            .await
            .unwrap_or_else(|e| panic!("assemble: {e}"));
        let t_warm = start.elapsed();

        let t_docker = docker_round(i);
        if i >= warmup {
            ours.push(t_fresh);
            warm.push(t_warm);
            theirs.extend(t_docker);
        }
        if !digest.is_empty() {
            assert_eq!(pushed.digest, digest, "same images, same index bytes");
        }
        digest = pushed.digest;
    }
    if docker.is_some() {
        let (_, ct, _) = p.get_manifest("bench", &format!("docker-{}", warmup + runs - 1)).await;
        // docker ≥ 28 pushes an OCI index when the images are OCI, a Docker list otherwise.
        assert!(
            ct == support::OCI_INDEX || ct == support::DOCKER_LIST,
            "docker pushed an index: {ct}"
        );
    }

    let ours_ms = median_ms(ours);
    let warm_ms = median_ms(warm);
    let theirs_ms = (!theirs.is_empty()).then(|| median_ms(theirs));
    if !benching {
        eprintln!(
            "bench smoke run ok (debug build, 1 round): ours {ours_ms:.1} ms, docker manifest {}",
            theirs_ms.map_or("skipped".into(), |t| format!("{t:.1} ms"))
        );
        return;
    }
    eprintln!(
        "bench: {runs} rounds (after {warmup} warm-up rounds), 2 platforms, registry {} with storage under {}",
        reg.host,
        root.display()
    );
    println!("bench index_assembly_ms {ours_ms:.3} ms");
    if let Some(theirs_ms) = theirs_ms {
        println!("bench docker_manifest_ms {theirs_ms:.3} ms");
        println!(
            "bench index_assembly_ratio_vs_docker_manifest {:.4} ratio",
            ours_ms / theirs_ms
        );
    }
    println!("bench index_assembly_warm_client_ms {warm_ms:.3} ms");
}
