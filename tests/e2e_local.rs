//! End to end on the local real stack: `multiarch-operator build` against moto's Batch running the
//! builder as real containers on a real Docker engine, pushing to a real registry.
//!
//! Needs `e2e/local-stack up` (`make test` runs it). Without the stack these tests say so and pass,
//! unless `MAB_E2E_REQUIRED=1` (set by `make test`), where a missing stack fails them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/local_stack.rs"]
mod local_stack;
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_batch::config::{Credentials, SharedCredentialsProvider};
use local_stack::{image_files, stack};
use support::{sha256, skopeo_raw};

/// A name no earlier run used, so the registry holds no index for it yet.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{:x}", nanos % 0xffff_ffff_ffff)
}

struct Build {
    name: String,
    repository: String,
    tag: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

fn write_build(env: &HashMap<String, String>, name: &str, revision: &str, extra_output: &str) -> Build {
    let dir = tempfile::tempdir().unwrap();
    let name = unique(name);
    let repository = format!("{}/e2e/{name}", env["MAB_REGISTRY"]);
    let tag = "v1".to_string();
    let yaml = format!(
        "apiVersion: multiarch.dev/v1alpha1\nkind: MultiArchBuild\nmetadata:\n  name: {name}\nspec:\n  source:\n    git:\n      url: {url}\n      revision: {revision}\n  output:\n    repository: {repository}\n    tag: {tag}\n{extra_output}  platforms:\n    - platform: linux/amd64\n      jobQueue: {amd}\n    - platform: linux/arm64\n      jobQueue: {arm}\n  jobDefinition: {def}\n  timeoutSeconds: 600\n",
        url = env["MAB_SAMPLE_GIT_URL"],
        amd = env["MAB_JOB_QUEUE_AMD64"],
        arm = env["MAB_JOB_QUEUE_ARM64"],
        def = env["MAB_JOB_DEFINITION"],
    );
    let file = dir.path().join("build.yaml");
    std::fs::write(&file, yaml).unwrap();
    Build {
        name,
        repository,
        tag,
        file,
        _dir: dir,
    }
}

/// `multiarch-operator SUBCOMMAND` with the stack's environment, its registry reached over plain
/// http on loopback.
fn operator(env: &HashMap<String, String>, subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multiarch-operator"));
    cmd.arg(subcommand)
        .envs(env)
        .env("MAB_REGISTRY_PLAIN_HTTP", &env["MAB_REGISTRY"])
        .env("MAB_REGISTRY_ALLOW_LOOPBACK", "true")
        .env_remove("RUST_LOG");
    cmd
}

fn command(env: &HashMap<String, String>, file: &Path, args: &[&str]) -> Command {
    let mut cmd = operator(env, "build");
    cmd.arg("-f").arg(file).args(args);
    cmd.env("MAB_ALLOW_LOCAL_GIT", "true")
        .env("MAB_POLL_INTERVAL_SECONDS", "1");
    cmd
}

fn run(env: &HashMap<String, String>, file: &Path, args: &[&str]) -> (Output, String, String) {
    let out = command(env, file, args).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

/// `build --wait` running in the background, its output piped.
fn spawn_waiting(env: &HashMap<String, String>, file: &Path) -> std::process::Child {
    command(env, file, &["--wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn skopeo_config(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--config",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect --config {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// AWS configuration for the stack's moto, from the stack's environment (the process environment
/// is left alone: tests run on several threads).
fn stack_aws(env: &HashMap<String, String>) -> aws_config::SdkConfig {
    let credentials = Credentials::new(
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "local-stack",
    );
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&env["AWS_ENDPOINT_URL"])
        .region(Region::new(env["AWS_REGION"].clone()))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

fn batch_client(env: &HashMap<String, String>) -> aws_sdk_batch::Client {
    aws_sdk_batch::Client::new(&stack_aws(env))
}

/// Every Batch job of this build (matched by the name prefix the executor gives its jobs).
fn jobs_of(env: &HashMap<String, String>, build: &Build) -> Vec<aws_sdk_batch::types::JobSummary> {
    let client = batch_client(env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prefix = format!("mab-default-{}-", build.name);
    let mut jobs = Vec::new();
    for queue in [&env["MAB_JOB_QUEUE_AMD64"], &env["MAB_JOB_QUEUE_ARM64"]] {
        let filter = aws_sdk_batch::types::KeyValuesPair::builder()
            .name("JOB_NAME")
            .values(format!("{prefix}*"))
            .build();
        let out = rt
            .block_on(client.list_jobs().job_queue(queue).filters(filter).send())
            .unwrap();
        jobs.extend(
            out.job_summary_list()
                .iter()
                .filter(|j| j.job_name().is_some_and(|n| n.starts_with(&prefix)))
                .cloned(),
        );
    }
    jobs
}

/// The job's status reason once it has stopped. TerminateJob is asynchronous (on AWS as in moto),
/// so a terminated job may still read RUNNING for a moment.
fn stopped_reason(env: &HashMap<String, String>, job_id: &str) -> String {
    let client = batch_client(env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = rt.block_on(client.describe_jobs().jobs(job_id).send()).unwrap();
        let job = &out.jobs()[0];
        let state = job.status().map(|s| s.as_str().to_string()).unwrap_or_default();
        if state == "FAILED" {
            return job.status_reason().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} is still {state}: it was not terminated"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_two_platform_build_pushes_a_verified_index_and_a_rerun_reuses_it() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "happy", &env["MAB_SAMPLE_REVISION"], "");
    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(out.status.success(), "build failed:\n{stderr}");
    let pinned = stdout.trim();
    let (repository, digest) = pinned.split_once('@').expect("stdout is repository@digest");
    assert_eq!(repository, build.repository);
    assert!(
        stderr.contains("linux/amd64 SUCCEEDED") && stderr.contains("linux/arm64 SUCCEEDED"),
        "{stderr}"
    );
    // Where each job's time went (status.platforms[].queuedSeconds and runSeconds), from Batch's
    // createdAt, startedAt and stoppedAt: moto gives all three.
    let timed = regex::Regex::new(r" SUCCEEDED job \S+ \(queued \d+s, ran \d+s\)$").unwrap();
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("] {platform} SUCCEEDED")) && timed.is_match(l)),
            "no run time for {platform}:\n{stderr}"
        );
    }

    // The digest is the sha256 of the exact index bytes the registry serves for the tag.
    let raw = skopeo_raw(&format!("{}:{}", build.repository, build.tag)).expect("skopeo is installed by make test");
    assert_eq!(sha256(&raw), digest);
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let mut seen = Vec::new();
    for child in index["manifests"].as_array().unwrap() {
        let arch = child["platform"]["architecture"].as_str().unwrap().to_string();
        let config = skopeo_config(&format!("{}@{}", build.repository, child["digest"].as_str().unwrap()));
        assert_eq!(
            config["architecture"],
            arch.as_str(),
            "child config must match its descriptor"
        );
        assert_eq!(config["os"], "linux");
        // Built by this build's job, from the commit asked for.
        let labels = &config["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            env["MAB_SAMPLE_REVISION"].as_str()
        );
        assert_eq!(
            labels["org.opencontainers.image.source"],
            env["MAB_SAMPLE_GIT_URL"].as_str()
        );
        assert!(labels["dev.multiarch.build-uid"].is_string(), "{labels}");
        assert!(labels["dev.multiarch.inputs"].as_str().unwrap().starts_with("sha256:"));
        seen.push(arch);
    }
    seen.sort();
    assert_eq!(seen, ["amd64", "arm64"]);
    let annotations = &index["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.revision"],
        env["MAB_SAMPLE_REVISION"].as_str()
    );
    assert_eq!(
        annotations["org.opencontainers.image.source"],
        env["MAB_SAMPLE_GIT_URL"].as_str()
    );
    assert!(
        annotations["org.opencontainers.image.created"].is_string(),
        "{annotations}"
    );

    // The same build again: the index exists and this input built it, so nothing is built.
    let (again, stdout2, stderr2) = run(&env, &build.file, &["--wait"]);
    assert!(again.status.success(), "{stderr2}");
    assert_eq!(stdout2.trim(), pinned);
    assert!(
        stderr2.contains("already is an index built from commit") && stderr2.contains("with the same inputs"),
        "{stderr2}"
    );
    assert_eq!(jobs_of(&env, &build).len(), 2, "the rerun must not submit jobs");

    // The same commit with another build argument is another input: rebuilt, and told why.
    let text = std::fs::read_to_string(&build.file).unwrap().replace(
        "  platforms:",
        "  buildArgs:\n    - name: EXTRA\n      value: \"1\"\n  platforms:",
    );
    std::fs::write(&build.file, text).unwrap();
    let (other, stdout3, stderr3) = run(&env, &build.file, &["--wait"]);
    assert!(other.status.success(), "{stderr3}");
    assert!(
        stderr3.contains("exists but is not reused") && stderr3.contains("label dev.multiarch.inputs"),
        "{stderr3}"
    );
    assert_ne!(stdout3.trim(), pinned, "a new index");
    assert_eq!(jobs_of(&env, &build).len(), 4, "built again");
}

/// Pushes, the way `docker push` from elsewhere would, an arm64 image nobody built from this
/// source to `<repository>:<tag>` (no labels).
fn push_foreign(env: &HashMap<String, String>, repository_path: &str, tag: &str, arch: &str) -> support::Pushed {
    let pusher = support::Pusher::new(&env["MAB_REGISTRY"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(pusher.image(repository_path, tag, support::ImageSpec::oci(arch)))
}

/// While the build runs, someone pushes another arm64 image to `<tag>-arm64` again and again:
/// the index lists what this build's arm64 job pushed (read from its log), never that image.
#[test]
fn the_index_lists_what_the_jobs_pushed_even_when_the_tag_is_overwritten_meanwhile() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "raced", &env["MAB_SAMPLE_REVISION"], "    reuseExisting: false\n");
    let path = format!("e2e/{}", build.name);
    let mut child = spawn_waiting(&env, &build.file);
    let mut foreign = None;
    let mut pushes = 0;
    while child.try_wait().unwrap().is_none() {
        foreign = Some(push_foreign(&env, &path, "v1-arm64", "arm64").digest);
        pushes += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let foreign = foreign.expect("pushed at least once");
    assert!(
        pushes > 3,
        "the tag was overwritten throughout the build ({pushes} pushes)"
    );
    let (code, _, tagged) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::Pusher::new(&env["MAB_REGISTRY"]).get_manifest(&path, "v1-arm64"));
    assert_eq!(
        (code, sha256(&tagged)),
        (200, foreign.clone()),
        "the tag ends on the foreign image"
    );

    let raw = skopeo_raw(&format!("{}:{}", build.repository, build.tag)).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        assert_ne!(digest, foreign, "the foreign image is never in the index");
        let config = skopeo_config(&format!("{}@{digest}", build.repository));
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.revision"],
            env["MAB_SAMPLE_REVISION"].as_str()
        );
    }
}

/// An index of other images planted at `<tag>` before the build is not reused: the build runs,
/// and says why it did not reuse it.
#[test]
fn an_index_planted_at_the_tag_is_not_reused() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "planted", &env["MAB_SAMPLE_REVISION"], "");
    let path = format!("e2e/{}", build.name);
    let amd = push_foreign(&env, &path, "planted-amd64", "amd64");
    let arm = push_foreign(&env, &path, "planted-arm64", "arm64");
    let planted = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": support::OCI_INDEX,
        "manifests": [
            {"mediaType": amd.media_type, "digest": amd.digest, "size": amd.size,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": arm.media_type, "digest": arm.digest, "size": arm.size,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ]
    });
    let bytes = serde_json::to_vec(&planted).unwrap();
    let pusher = support::Pusher::new(&env["MAB_REGISTRY"]);
    let planted_digest =
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(pusher.manifest(&path, "v1", support::OCI_INDEX, &bytes));

    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exists but is not reused")
            && stderr.contains("label org.opencontainers.image.revision is absent"),
        "{stderr}"
    );
    assert_eq!(jobs_of(&env, &build).len(), 2, "built");
    let (_, digest) = stdout.trim().split_once('@').unwrap();
    assert_ne!(digest, planted_digest);
}

#[test]
fn one_failing_platform_fails_the_build_terminates_the_other_and_shows_the_builder_error() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "failfast", &env["MAB_SAMPLE_SLOW_FAILING_BRANCH"], "");
    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success(), "the build must fail");
    assert!(stdout.is_empty(), "no image on failure: {stdout}");
    assert!(stderr.contains("linux/arm64 failed"), "{stderr}");
    assert!(
        stderr.contains("build.sh: docker build failed for linux/arm64"),
        "the builder's error line from the job log:\n{stderr}"
    );
    let jobs = jobs_of(&env, &build);
    assert_eq!(jobs.len(), 2);
    let amd = jobs.iter().find(|j| j.job_name().unwrap().contains("-amd64-")).unwrap();
    let reason = stopped_reason(&env, amd.job_id().unwrap());
    assert!(reason.contains("fail fast: linux/arm64 failed"), "{reason}");
}

#[test]
fn interrupting_a_waiting_build_cancels_it_and_terminates_both_jobs() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "cancel", &env["MAB_SAMPLE_SLOW_BRANCH"], "");
    let mut child = spawn_waiting(&env, &build.file);
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push(line);
        }
        lines
    });
    // Wait until both jobs run, then interrupt like Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = jobs_of(&env, &build);
        if jobs.len() == 2 && jobs.iter().all(|j| j.status().map(|s| s.as_str()) == Some("RUNNING")) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never both ran: {jobs:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap().join("\n");
    assert!(!status.success(), "a cancelled build exits non-zero");
    assert!(
        lines.contains("cancelled by spec.cancel; 2 live job(s) terminated"),
        "{lines}"
    );
    assert!(
        lines.contains(
            "multiarch-operator: interrupted: 2 job(s) terminated; running the same file again adopts the terminated \
             jobs and fails again: change metadata.name to build anew"
        ),
        "{lines}"
    );
    for job in jobs_of(&env, &build) {
        let reason = stopped_reason(&env, job.job_id().unwrap());
        assert!(reason.contains("cancelled"), "{reason}");
    }
    // What the message promises: the same file adopts the terminated jobs and fails.
    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("failed: multiarch-operator: cancelled: spec.cancel was set"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(jobs_of(&env, &build).len(), 2, "nothing new was submitted");
}

#[test]
fn running_again_after_a_crash_between_submit_and_record_adopts_the_jobs() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "adopt", &env["MAB_SAMPLE_SLOW_BRANCH"], "");
    // Without --wait the command submits and exits, dropping what it recorded: as a crash would.
    let (first, _, stderr) = run(&env, &build.file, &[]);
    assert!(first.status.success(), "{stderr}");
    let before = jobs_of(&env, &build);
    assert_eq!(before.len(), 2);
    let (second, _, stderr) = run(&env, &build.file, &[]);
    assert!(second.status.success(), "{stderr}");
    let after = jobs_of(&env, &build);
    let ids = |jobs: &[aws_sdk_batch::types::JobSummary]| {
        let mut ids: Vec<String> = jobs.iter().map(|j| j.job_id().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&after), ids(&before), "exactly one job per platform, the same ones");
    // Stop the slow jobs this test left running.
    let client = batch_client(&env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for id in ids(&after) {
        rt.block_on(client.terminate_job().job_id(id).reason("test cleanup").send())
            .unwrap();
    }
}

#[test]
fn follow_logs_streams_each_platforms_lines_prefixed() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "follow", "no-such-branch", "");
    let (out, _, stderr) = run(&env, &build.file, &["--wait", "--follow-logs"]);
    assert!(!out.status.success());
    for platform in ["linux/amd64", "linux/arm64"] {
        let line = regex::Regex::new(&format!(
            r"(?m)^\[\d\d:\d\d:\d\d\] \[{platform}\] .*git revision 'no-such-branch' not found"
        ))
        .unwrap();
        assert!(line.is_match(&stderr), "{platform}: {stderr}");
    }
}

#[test]
fn a_revision_that_does_not_exist_fails_with_the_builders_message() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "norev", "no-such-branch", "");
    let (out, _, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success());
    assert!(stderr.contains("git revision 'no-such-branch' not found"), "{stderr}");
    // The log lines were shown with the phase; the error itself is one line.
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("multiarch-operator: linux/") && last.contains(" failed; job ") && !last.ends_with(':'),
        "{last}"
    );
}

#[test]
fn an_unreachable_registry_fails_the_build_with_the_push_error() {
    let Some(env) = stack() else { return };
    let mut build = write_build(
        &env,
        "noregistry",
        &env["MAB_SAMPLE_REVISION"],
        "    reuseExisting: false\n",
    );
    // Port 9 on loopback: nothing listens there.
    let text = std::fs::read_to_string(&build.file)
        .unwrap()
        .replace(&env["MAB_REGISTRY"], "127.0.0.1:9");
    std::fs::write(&build.file, text).unwrap();
    build.repository = build.repository.replace(&env["MAB_REGISTRY"], "127.0.0.1:9");
    let mut env = env.clone();
    env.insert("MAB_ALLOWED_REGISTRIES".into(), "127.0.0.1:9".into());
    let (out, _, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success());
    assert!(stderr.contains("build.sh: docker push of 127.0.0.1:9/"), "{stderr}");
}

/// A repository on a host that is not allowed (neither an ECR registry of the account nor listed
/// in MAB_ALLOWED_REGISTRIES) is refused before anything is sent: not to the registry, not to Batch.
#[test]
fn a_registry_that_is_not_allowed_is_refused_before_any_request() {
    let Some(env) = stack() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let build = write_build(&env, "notallowed", &env["MAB_SAMPLE_REVISION"], "");
    let text = std::fs::read_to_string(&build.file)
        .unwrap()
        .replace(&env["MAB_REGISTRY"], &host);
    std::fs::write(&build.file, text).unwrap();
    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success());
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!("registry {host} is not allowed")) && stderr.contains("MAB_ALLOWED_REGISTRIES"),
        "{stderr}"
    );
    assert!(listener.accept().is_err(), "nothing connected to {host}");
    assert!(jobs_of(&env, &build).is_empty(), "no job submitted");
}

#[test]
fn a_bad_spec_is_rejected_before_any_job_is_submitted() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "badspec", &env["MAB_SAMPLE_REVISION"], "");
    let text = std::fs::read_to_string(&build.file)
        .unwrap()
        .replace("tag: v1", "tag: \"v1:latest\"");
    std::fs::write(&build.file, text).unwrap();
    let (out, _, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("invalid spec: spec.output.tag: \"v1:latest\" is not valid"),
        "{stderr}"
    );
    assert!(
        jobs_of(&env, &build).is_empty(),
        "no job may be submitted for a bad spec"
    );
}

/// base -> dev -> app with real builds: dev builds `FROM ${BASE}` where BASE is base's pinned
/// `repository@sha256:` index (what valueFrom resolves to in the controller; `build -f` has no
/// cluster, so it refuses valueFrom and takes the pinned value), app `FROM ${DEV}`. The app image
/// holds base's, dev's and its own files on both platforms.
#[test]
fn a_chain_builds_each_image_from_the_pinned_digest_of_the_one_before() {
    let Some(env) = stack() else { return };
    let from = |arg: &str, build: &str| {
        format!("  buildArgs:\n    - name: {arg}\n      valueFrom:\n        multiArchBuild:\n          name: {build}\n")
    };
    let refused = write_build(&env, "chain-refused", "chain", &from("BASE", "chain-base"));
    let (out, _, stderr) = run(&env, &refused.file, &["--wait"]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.buildArgs BASE takes its value from MultiArchBuild chain-base (valueFrom), which only the controller can read"),
        "{stderr}"
    );

    let base = write_build(&env, "chain-base", &env["MAB_SAMPLE_REVISION"], "");
    let (out, stdout, stderr) = run(&env, &base.file, &["--wait"]);
    assert!(out.status.success(), "base failed:\n{stderr}");
    let base_image = stdout.trim().to_string();
    let layered = |arg: &str, image: &str, layer: &str| {
        format!("  buildArgs:\n    - name: {arg}\n      value: {image}\n    - name: LAYER\n      value: {layer}\n")
    };
    // The chain branch's Dockerfile takes BASE; app passes dev's image under that name too.
    let dev = write_build(&env, "chain-dev", "chain", &layered("BASE", &base_image, "dev"));
    let (out, stdout, stderr) = run(&env, &dev.file, &["--wait"]);
    assert!(out.status.success(), "dev failed:\n{stderr}");
    let dev_image = stdout.trim().to_string();
    let app = write_build(&env, "chain-app", "chain", &layered("BASE", &dev_image, "app"));
    let (out, stdout, stderr) = run(&env, &app.file, &["--wait"]);
    assert!(out.status.success(), "app failed:\n{stderr}");
    let app_image = stdout.trim().to_string();
    for image in [&base_image, &dev_image, &app_image] {
        assert!(image.contains("@sha256:"), "{image}");
    }
    for arch in ["amd64", "arm64"] {
        let files = image_files(&app_image, arch);
        for file in ["hello.txt", "platform/arch.txt", "layers/dev.txt", "layers/app.txt"] {
            assert!(files.iter().any(|f| f == file), "{arch}: no {file} in {files:?}");
        }
        let dev_files = image_files(&dev_image, arch);
        assert!(!dev_files.iter().any(|f| f == "layers/app.txt"), "{dev_files:?}");
    }
}

/// The digest `<repository>:<tag>` resolves to in the registry: the sha256 of the bytes it serves.
fn digest_at(repository: &str, tag: &str) -> String {
    sha256(&skopeo_raw(&format!("{repository}:{tag}")).expect("skopeo is installed by make test"))
}

/// `spec.output.additionalTags`: once the index is pushed and verified, every tag resolves to the
/// same digest in the real registry, a tag that held another image is moved, `status.tags` is
/// shown, and a rerun (reuse) pushes them again harmlessly.
#[test]
fn additional_tags_all_resolve_to_the_index_digest() {
    let Some(env) = stack() else { return };
    let build = write_build(
        &env,
        "tags",
        &env["MAB_SAMPLE_REVISION"],
        "    additionalTags: [latest, v1.0.0]\n",
    );
    // `latest` already holds someone else's image: it is moved to the index.
    let path = format!("e2e/{}", build.name);
    let foreign = push_foreign(&env, &path, "latest", "amd64");
    assert_eq!(digest_at(&build.repository, "latest"), foreign.digest);

    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(out.status.success(), "build failed:\n{stderr}");
    let (_, digest) = stdout.trim().split_once('@').expect("stdout is repository@digest");
    for tag in ["v1", "latest", "v1.0.0"] {
        assert_eq!(
            digest_at(&build.repository, tag),
            digest,
            "{}:{tag} must be the index",
            build.repository
        );
    }
    assert!(stderr.contains("; tagged v1, latest, v1.0.0"), "{stderr}");

    // Again: reused, the tags pushed again (the same bytes), nothing built.
    let (again, stdout2, stderr2) = run(&env, &build.file, &["--wait"]);
    assert!(again.status.success(), "{stderr2}");
    assert_eq!(stdout2.trim(), stdout.trim());
    assert!(stderr2.contains("already is an index built from commit"), "{stderr2}");
    for tag in ["v1", "latest", "v1.0.0"] {
        assert_eq!(digest_at(&build.repository, tag), digest);
    }
    assert_eq!(jobs_of(&env, &build).len(), 2, "the rerun must not submit jobs");
}

/// The first layer of `<repository>@<manifest digest>`, unpacked: the content of `file` in it.
fn file_in_first_layer(
    env: &HashMap<String, String>,
    repository_path: &str,
    manifest_digest: &str,
    file: &str,
) -> String {
    let repository = format!("{}/{repository_path}", env["MAB_REGISTRY"]);
    let raw = skopeo_raw(&format!("{repository}@{manifest_digest}")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one COPY, one layer: {manifest}");
    let blob = layers[0]["digest"].as_str().unwrap();
    let url = format!("http://{}/v2/{repository_path}/blobs/{blob}", env["MAB_REGISTRY"]);
    let out = Command::new("sh")
        .args(["-c", "curl -fsS \"$1\" | tar -xzOf - \"$2\"", "sh", &url, file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {file} from {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `spec.source.target` and a per-platform `target` and `buildArgs`: each child of the one index
/// holds its own stage's file (read from its layer blob in the registry), carries its own build
/// args, and the build says the children differ by more than architecture.
#[test]
fn a_platform_with_its_own_target_pushes_that_stage() {
    let Some(env) = stack() else { return };
    let build = write_build(&env, "targets", &env["MAB_SAMPLE_TARGETS_BRANCH"], "");
    let text = std::fs::read_to_string(&build.file)
        .unwrap()
        .replace("  output:\n", "    target: runtime\n  output:\n")
        .replace(
            &format!("      jobQueue: {}\n", env["MAB_JOB_QUEUE_ARM64"]),
            &format!(
                "      jobQueue: {}\n      target: submit\n      buildArgs:\n        - name: STAGE_NOTE\n          value: arm\n",
                env["MAB_JOB_QUEUE_ARM64"]
            ),
        );
    assert!(
        text.contains("target: submit") && text.contains("    target: runtime\n  output:"),
        "{text}"
    );
    std::fs::write(&build.file, text).unwrap();

    let (out, stdout, stderr) = run(&env, &build.file, &["--wait"]);
    assert!(out.status.success(), "build failed:\n{stderr}");
    assert!(
        stderr.contains("the children differ by more than architecture")
            && stderr
                .contains("linux/amd64 target runtime; linux/arm64 target submit with its own build args STAGE_NOTE"),
        "{stderr}"
    );
    let (_, digest) = stdout.trim().split_once('@').unwrap();
    let raw = skopeo_raw(&format!("{}:{}", build.repository, build.tag)).unwrap();
    assert_eq!(sha256(&raw), digest, "one index");
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let path = format!("e2e/{}", build.name);
    let mut seen = Vec::new();
    for child in index["manifests"].as_array().unwrap() {
        let arch = child["platform"]["architecture"].as_str().unwrap().to_string();
        let child_digest = child["digest"].as_str().unwrap();
        let stage = file_in_first_layer(&env, &path, child_digest, "stage.txt");
        let config = skopeo_config(&format!("{}@{child_digest}", build.repository));
        let note = config["config"]["Labels"]["org.example.stage-note"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(config["architecture"], arch.as_str());
        seen.push((arch, stage.trim().to_string(), note));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("amd64".to_string(), "runtime".to_string(), "none".to_string()),
            ("arm64".to_string(), "submit".to_string(), "arm".to_string()),
        ]
    );
}

/// A new ECC_NIST_P256 SIGN_VERIFY key and its new alias (`alias/<prefix>-<unique>`).
fn signing_key(env: &HashMap<String, String>, prefix: &str) -> (String, String) {
    // moto signs with ECDSA_SHA_256 on ECC_NIST_P256 keys.
    let kms = aws_sdk_kms::Client::new(&stack_aws(env));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let created = rt
        .block_on(
            kms.create_key()
                .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
                .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
                .send(),
        )
        .unwrap();
    let key_id = created.key_metadata().unwrap().key_id().to_string();
    let alias = format!("alias/{}", unique(prefix));
    rt.block_on(kms.create_alias().alias_name(&alias).target_key_id(&key_id).send())
        .unwrap();
    (key_id, alias)
}

/// `multiarch-operator verify ARGS` against the stack's registry.
fn verify(env: &HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = operator(env, "verify")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A refusal of `verify`: exit 1, stdout empty, one line on stderr that says `why`.
fn assert_refused(verified: (bool, String, String), why: &str) {
    let (ok, stdout, stderr) = verified;
    assert!(!ok && stdout.is_empty(), "not refused:\n{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with("multiarch-operator: refused ") && stderr.contains(why),
        "{stderr}"
    );
}

/// With `--signing-key awskms:///…` (moto's KMS), the index's signature and its SLSA provenance
/// are pushed where cosign looks (readable with skopeo), and verify with the key's public key in
/// Python's `cryptography` over the index digest, with subjects the index and both platform images;
/// one byte changed and they do not. `verify` accepts it, and refuses another key, another commit
/// and an unsigned index, each in one line.
#[test]
fn a_signed_index_verifies_with_the_kms_public_key_outside_this_code() {
    let Some(env) = stack() else { return };
    let (key_id, alias) = signing_key(&env, "mab-e2e-signing");
    let key = format!("awskms:///{alias}");
    let build = write_build(&env, "signed", &env["MAB_SAMPLE_REVISION"], "");
    let (out, stdout, stderr) = run(&env, &build.file, &["--wait", "--signing-key", &key]);
    assert!(out.status.success(), "build failed:\n{stderr}");
    assert!(stderr.contains("attaching its provenance"), "{stderr}");
    let pinned = stdout.trim();
    let (repository, digest) = pinned.split_once('@').unwrap();

    let checked = Command::new(&env["MAB_STACK_PYTHON"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/verify_signed.py"))
        .args([pinned, &key_id])
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "verify_signed.py: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let found: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(found["index"], digest);
    assert_eq!(found["subjects"].as_array().unwrap().len(), 3, "{found}");
    assert_eq!(found["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(found["commit"], env["MAB_SAMPLE_REVISION"].as_str());
    assert!(
        found["builder"]
            .as_str()
            .unwrap()
            .starts_with("https://multiarch.dev/multiarch-operator@v")
    );
    let jobs = found["jobs"].as_array().unwrap();
    assert!(
        jobs.len() == 2 && jobs.iter().all(|j| j.as_str().unwrap().starts_with("arn:aws:batch:")),
        "{found}"
    );

    // The tag fallback, at the names cosign uses, each a manifest whose subject is the index.
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    for (suffix, layer) in [
        ("sig", "application/vnd.dev.cosign.simplesigning.v1+json"),
        ("att", "application/vnd.dsse.envelope.v1+json"),
    ] {
        let raw = skopeo_raw(&format!("{repository}:{tag}.{suffix}")).expect("skopeo inspect --raw");
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], layer, "{manifest}");
        assert_eq!(manifest["subject"]["digest"], digest, "{manifest}");
    }

    let (ok, report, stderr) = verify(&env, &[pinned, "--key", &key, "--commit", &env["MAB_SAMPLE_REVISION"]]);
    assert!(ok, "{stderr}");
    assert!(report.starts_with(&format!("verified {pinned}\n")), "{report}");
    assert!(report.contains(&format!("{tag}.sig (key {key})")), "{report}");
    assert!(report.contains(&env["MAB_SAMPLE_REVISION"]), "{report}");

    let (_, other_alias) = signing_key(&env, "mab-e2e-other");
    assert_refused(
        verify(&env, &[pinned, "--key", &format!("awskms:///{other_alias}")]),
        "signed by another key",
    );
    let other_commit = "f".repeat(40);
    assert_refused(
        verify(&env, &[pinned, "--key", &key, "--commit", &other_commit]),
        &format!("names commit {}, not {other_commit}", env["MAB_SAMPLE_REVISION"]),
    );

    // The same source built without a key: its provenance is attached, unsigned, and refused.
    let unsigned = write_build(&env, "unsigned", &env["MAB_SAMPLE_REVISION"], "");
    let (out, stdout, stderr) = run(&env, &unsigned.file, &["--wait"]);
    assert!(out.status.success(), "build failed:\n{stderr}");
    let unsigned_pinned = stdout.trim();
    let unsigned_tag = format!("sha256-{}", unsigned_pinned.split_once("@sha256:").unwrap().1);
    let raw = skopeo_raw(&format!("{}:{unsigned_tag}.att", unsigned.repository)).expect("unsigned provenance");
    assert!(!raw.is_empty());
    assert_refused(verify(&env, &[unsigned_pinned, "--key", &key]), "not signed");
}
