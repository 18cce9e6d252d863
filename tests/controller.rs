//! The controller against a stateful in-memory Kubernetes API server (tests/common/fake_kube.rs),
//! a real moto server (non-Docker Batch: jobs succeed as soon as they are submitted) and a real
//! `docker-registry`.
//!
//! One process runs every scenario (concurrently), then checks what all of them needed against
//! what the install grants, both ways (nothing outside it, all of it used):
//! - the Kubernetes permissions, against config/rbac/expected-rules.yaml;
//! - the IAM actions behind the AWS calls and registry requests the controller's metrics counted,
//!   against config/aws/controller-actions.txt.
//!
//! Those checks need all the scenarios, hence `harness = false`: `cargo test --test controller
//! NAME` runs the scenarios whose name contains NAME and skips the checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fake_kube.rs"]
mod fake_kube;
#[path = "common/moto.rs"]
mod moto;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_sdk_batch::config::Credentials;
use fake_kube::{FakeKube, Key, Permission};
use kube::core::DeserializeGuard;
use moto::{JOB_DEFINITION, Moto, QUEUE};
use multiarch_operator::api::{MultiArchBuild, Platform};
use multiarch_operator::batch::{BatchExecutor, BuildRef, submit_request};
use multiarch_operator::cli::RegistryArgs;
use multiarch_operator::controller::{
    Context, FINALIZER, LeaseSettings, ReconcileConfig, Settings, Shutdown, http::Health, metrics::Metrics, reconcile,
    run_with,
};
use multiarch_operator::signing::{KeyUri, PublicKey, Signer};
use multiarch_operator::tenancy::AllowedRegistries;
use serde_json::{Value, json};
use support::{Fault, Front, ImageSpec, Pusher, Registry, sha256};

/// What every scenario shares: one moto, one registry, and the fakes and metrics (for the RBAC
/// and IAM checks).
struct Env {
    /// Runs while the scenarios do.
    _moto: Moto,
    aws: SdkConfig,
    registry: Registry,
    pusher: Pusher,
    fakes: Mutex<Vec<FakeKube>>,
    metrics: Mutex<Vec<Arc<Metrics>>>,
    builder: Builder,
}

impl Env {
    /// New metrics for one context or replica, kept for the IAM check.
    fn metrics(&self) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new());
        self.metrics.lock().unwrap().push(Arc::clone(&metrics));
        metrics
    }

    fn fake(&self) -> FakeKube {
        self.fake_from(FakeKube::new())
    }

    fn fake_from(&self, fake: FakeKube) -> FakeKube {
        self.fakes.lock().unwrap().push(fake.clone());
        fake
    }

    fn config(&self) -> ReconcileConfig {
        ReconcileConfig {
            default_job_definition: JOB_DEFINITION.into(),
            registry: RegistryArgs {
                registry_plain_http: vec![self.registry.host.clone()],
                registry_allow_loopback: true,
                ..RegistryArgs::default()
            },
            cleanup_grace: Duration::from_secs(300),
            default_ttl_seconds_after_finished: None,
            concurrency: 4,
            // moto's account, as STS GetCallerIdentity tells the controller; the test registry listed.
            allowed: AllowedRegistries {
                own: Some((moto::ACCOUNT.into(), "us-east-1".into())),
                listed: vec![self.registry.host.clone(), "registry.invalid".into()],
            },
            signer: None,
        }
    }

    /// A context on `fake` and moto counting into `metrics`; its poller sweeps only when the
    /// test says so.
    fn context(&self, fake: &FakeKube, metrics: Arc<Metrics>) -> Arc<Context> {
        context_on(fake, &self.aws, metrics, self.config())
    }

    fn settings(&self, identity: &str) -> Settings {
        Settings {
            namespaces: Vec::new(),
            poll_interval: Duration::from_millis(200),
            reconcile: self.config(),
            lease: LeaseSettings {
                namespace: "mab-system".into(),
                name: "multiarch-operator".into(),
                identity: identity.into(),
                duration_seconds: 3,
                grace_seconds: 1,
            },
            crd_retry: Duration::from_millis(100),
        }
    }
}

/// The commit the played builder reports for a revision that is not a full SHA.
const BUILT_COMMIT: &str = "c0ffee0000000000000000000000000000c0ffee";

/// Plays builder/build.sh for moto's jobs, which non-Docker Batch never runs: for every SUCCEEDED
/// job of the test queue not played yet, pushes the image the builder would (its labels included)
/// to the tag the job was given, and ends the job's log with the builder's `commit:` and
/// `digest:` lines. Uses its own AWS clients, so the controller's IAM check does not count it.
struct Builder {
    aws: SdkConfig,
    pusher: Pusher,
    registry_host: String,
    played: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Builder {
    /// Plays every job that succeeded so far; returns once they all are.
    async fn play(&self) {
        let mut played = self.played.lock().await;
        let batch = aws_sdk_batch::Client::new(&self.aws);
        let listed = batch
            .list_jobs()
            .job_queue(QUEUE)
            .job_status(aws_sdk_batch::types::JobStatus::Succeeded)
            .send()
            .await
            .unwrap();
        let ids: Vec<String> = listed
            .job_summary_list()
            .iter()
            .filter_map(|j| j.job_id())
            .filter(|id| !played.contains(*id))
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return;
        }
        let jobs = batch.describe_jobs().set_jobs(Some(ids)).send().await.unwrap();
        let logs = aws_sdk_cloudwatchlogs::Client::new(&self.aws);
        for job in jobs.jobs() {
            let container = job.container().expect("a container job");
            let env: BTreeMap<&str, &str> = container
                .environment()
                .iter()
                .filter_map(|kv| Some((kv.name()?, kv.value()?)))
                .collect();
            let revision = env["MAB_GIT_REVISION"];
            let commit = if revision.len() == 40 { revision } else { BUILT_COMMIT };
            let (host, rest) = env["MAB_IMAGE"].split_once('/').unwrap();
            let (repo, tag) = rest.rsplit_once(':').unwrap();
            let arch = env["MAB_PLATFORM"].split('/').nth(1).unwrap();
            let digest = if host == self.registry_host {
                let spec = ImageSpec::oci(arch).built_by(env["MAB_BUILD_UID"], commit, env["MAB_INPUT_HASH"]);
                self.pusher.image(repo, tag, spec).await.digest
            } else {
                format!("sha256:{}", "0".repeat(64))
            };
            let stream = container.log_stream_name().expect("a log stream");
            let lines = [
                format!("[mab] pushed {host}/{repo}@{digest}"),
                format!("commit: {commit}"),
                format!("digest: {digest}"),
            ];
            moto::put_log_lines(&logs, stream, &lines).await;
            played.insert(job.job_id().unwrap().to_string());
        }
    }
}

/// A context on `fake` and the AWS of `aws`, counting into `metrics`; its poller sweeps only when
/// the test says so.
fn context_on(fake: &FakeKube, aws: &SdkConfig, metrics: Arc<Metrics>, config: ReconcileConfig) -> Arc<Context> {
    Arc::new(Context::from_aws(
        fake.client(),
        aws,
        Duration::from_secs(3600),
        metrics,
        config,
        "test-replica",
    ))
}

fn build_object(namespace: &str, name: &str, repository: &str, git_url: &str) -> Value {
    json!({
        "apiVersion": "multiarch.dev/v1alpha1",
        "kind": "MultiArchBuild",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"git": {"url": git_url, "revision": "main"}},
            "output": {"repository": repository, "tag": "v1", "reuseExisting": false},
            "platforms": [
                {"platform": "linux/amd64", "jobQueue": QUEUE},
                {"platform": "linux/arm64", "jobQueue": QUEUE},
            ],
            "jobDefinition": JOB_DEFINITION,
            "timeoutSeconds": 600,
        },
    })
}

fn good_build(namespace: &str, name: &str, repository: &str) -> Value {
    build_object(namespace, name, repository, "https://github.com/example/app.git")
}

fn job_object(namespace: &str, name: &str, after: Option<&str>, suspend: bool) -> Value {
    let labels = after.map_or(json!({}), |b| json!({"multiarch.dev/after": b}));
    json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"suspend": suspend, "template": {"spec": {"containers": [{"name": "head", "image": "busybox"}], "restartPolicy": "Never"}}},
    })
}

fn create_build(fake: &FakeKube, object: Value) -> Key {
    let created = fake.create("multiarch.dev", "multiarchbuilds", object);
    Key::build(
        created["metadata"]["namespace"].as_str().unwrap(),
        created["metadata"]["name"].as_str().unwrap(),
    )
}

/// One reconcile of the stored build, as the Controller would run it.
async fn reconcile_now(fake: &FakeKube, ctx: &Arc<Context>, key: &Key) -> kube::runtime::controller::Action {
    let object = fake.get(key).expect("the build");
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(object).unwrap();
    reconcile(Arc::new(guard), Arc::clone(ctx)).await.expect("reconcile")
}

fn status(fake: &FakeKube, key: &Key) -> Value {
    fake.get(key).expect("the build")["status"].clone()
}

fn ready(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition")
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reasons(fake: &FakeKube, kind: &str, name: &str) -> Vec<String> {
    fake.events_about(kind, name).into_iter().map(|(r, _, _)| r).collect()
}

// ---------------------------------------------------------------------------------------------

/// The status is written by server-side apply only when it changes, and carries the generation.
async fn status_is_written_once_per_change_with_observed_generation(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    let key = create_build(&fake, good_build("sims", "once", &env.registry.repo("once")));

    // First the finalizer, and nothing else.
    reconcile_now(&fake, &ctx, &key).await;
    let object = fake.get(&key).unwrap();
    assert_eq!(object["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(fake.status_writes("sims", "once"), 0);

    // Then the jobs, recorded with the generation.
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert_eq!(s["phase"], "Building", "{s}");
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(ready(&s)["observedGeneration"], 1);
    let ids: Vec<&str> = s["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobId"].as_str().expect("a job id per platform"))
        .collect();
    assert_eq!(ids.len(), 2);
    let after_submit = fake.status_writes("sims", "once");
    assert!(after_submit >= 1);

    // Nothing new (the poller has not swept): no write.
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(fake.status_writes("sims", "once"), after_submit);

    // The poller sees both jobs SUCCEEDED: what they pushed is read from their logs, the index
    // is assembled, the build succeeds.
    env.builder.play().await;
    ctx.poller().sweep().await;
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(ready(&s)["status"], "True");
    assert_eq!(ready(&s)["reason"], "Succeeded");
    let digest = s["digest"].as_str().unwrap();
    assert_eq!(s["image"], format!("{}@{digest}", env.registry.repo("once")));
    let (code, _, bytes) = env.pusher.get_manifest("once", "v1").await;
    assert_eq!(
        (code, sha256(&bytes)),
        (200, digest.to_string()),
        "status.image resolves"
    );
    // Where each job's time went, from Batch's own times (moto: created, started, stopped).
    for platform in s["platforms"].as_array().unwrap() {
        for field in ["queuedSeconds", "runSeconds"] {
            assert!(
                platform[field].as_i64().is_some_and(|seconds| seconds >= 0),
                "{field}: {platform}"
            );
        }
    }
    let after_success = fake.status_writes("sims", "once");
    assert!(after_success > after_submit);
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(fake.status_writes("sims", "once"), after_success);

    // A new generation is observed with exactly one write; a terminal phase never changes.
    fake.edit(&key, |o| o["spec"]["cancel"] = true.into());
    assert_eq!(fake.get(&key).unwrap()["metadata"]["generation"], 2);
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert_eq!(fake.status_writes("sims", "once"), after_success + 1);
    assert_eq!(
        (s["phase"].as_str(), s["observedGeneration"].as_i64()),
        (Some("Succeeded"), Some(2))
    );
    assert_eq!(ready(&s)["observedGeneration"], 2);
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(fake.status_writes("sims", "once"), after_success + 1);

    let seen = reasons(&fake, "MultiArchBuild", "once");
    for reason in ["Submitted", "PlatformSucceeded", "IndexPushed"] {
        assert!(seen.iter().any(|r| r == reason), "no {reason} event in {seen:?}");
    }
}

/// The finalizer is added first, and removed on deletion once the live jobs were terminated
/// (also a job submitted but never recorded); a build that never submitted anything goes at once.
async fn the_finalizer_terminates_live_jobs_then_lets_the_build_go(env: Arc<Env>) {
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = env.context(&fake, Arc::clone(&metrics));
    let calls = |operation| aws_calls(&metrics, operation);

    let key = create_build(&fake, good_build("sims", "doomed", "registry.invalid/doomed"));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert!(
        s["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "SUBMITTED"),
        "{s}"
    );
    assert_eq!(calls("TerminateJob"), 0);

    fake.delete(&key);
    assert!(fake.get(&key).is_some(), "the finalizer holds the deletion");
    reconcile_now(&fake, &ctx, &key).await;
    assert!(fake.get(&key).is_none(), "the finalizer was removed");
    assert_eq!(calls("TerminateJob"), 2);
    assert!(reasons(&fake, "MultiArchBuild", "doomed").contains(&"JobsTerminated".to_string()));

    // Crashed between SubmitJob and the status write: the job is found by its name.
    let key = create_build(&fake, good_build("sims", "crashed", "registry.invalid/crashed"));
    reconcile_now(&fake, &ctx, &key).await;
    let object: MultiArchBuild = serde_json::from_value(fake.get(&key).unwrap()).unwrap();
    let reference = BuildRef::of(&object).unwrap();
    let request = submit_request(&reference, &object.spec, Platform::LinuxArm64, JOB_DEFINITION).unwrap();
    // Submitted by the process that crashed: not this context's clients.
    let crashed = BatchExecutor::new(
        aws_sdk_batch::Client::new(&env.aws),
        aws_sdk_cloudwatchlogs::Client::new(&env.aws),
    );
    crashed.find_or_submit(&request).await.unwrap();
    fake.edit(&key, |o| {
        o["status"] = json!({"phase": "Building", "startTime": "2025-01-01T00:00:00Z",
                             "platforms": [{"platform": "linux/arm64"}, {"platform": "linux/amd64"}]});
    });
    let lookups = calls("ListJobs");
    fake.delete(&key);
    reconcile_now(&fake, &ctx, &key).await;
    assert!(fake.get(&key).is_none());
    // One lookup per unrecorded platform; moto's job already finished, so nothing to terminate.
    assert_eq!(calls("ListJobs") - lookups, 2);
    assert_eq!(calls("TerminateJob"), 2);

    // Never submitted anything: no AWS call at all.
    let before = (calls("ListJobs"), calls("TerminateJob"));
    let key = create_build(&fake, good_build("sims", "idle", "registry.invalid/idle"));
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(fake.get(&key).unwrap()["metadata"]["finalizers"], json!([FINALIZER]));
    fake.delete(&key);
    reconcile_now(&fake, &ctx, &key).await;
    assert!(fake.get(&key).is_none());
    assert_eq!((calls("ListJobs"), calls("TerminateJob")), before);
}

/// With AWS unreachable, deletion is retried, then the finalizer is released after the grace
/// period with a Warning event naming the jobs that may still run.
async fn an_unreachable_aws_never_blocks_deletion_past_the_grace_period(env: Arc<Env>) {
    let fake = env.fake();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{closed_port}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    let config = ReconcileConfig {
        cleanup_grace: Duration::from_secs(3),
        ..env.config()
    };
    let ctx = context_on(&fake, &aws, env.metrics(), config);
    let mut object = good_build("sims", "stranded", "registry.invalid/stranded");
    object["metadata"]["finalizers"] = json!([FINALIZER]);
    object["status"] = json!({
        "phase": "Building", "startTime": "2025-01-01T00:00:00Z",
        "platforms": [
            {"platform": "linux/amd64", "jobId": "job-amd64", "state": "RUNNING"},
            {"platform": "linux/arm64", "jobId": "job-arm64", "state": "RUNNABLE"},
        ],
    });
    let key = create_build(&fake, object);
    fake.delete(&key);

    for _ in 0..2 {
        let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&key).unwrap()).unwrap();
        let error = reconcile(Arc::new(guard), Arc::clone(&ctx)).await.unwrap_err();
        assert_eq!(error.label(), "AwsUnavailable", "{error}");
        assert!(
            fake.get(&key).is_some(),
            "still held by the finalizer within the grace period"
        );
    }
    let warnings = fake.events_about("MultiArchBuild", "stranded");
    assert!(
        warnings.iter().any(|(r, t, _)| r == "AwsUnavailable" && t == "Warning"),
        "{warnings:?}"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    reconcile_now(&fake, &ctx, &key).await;
    assert!(fake.get(&key).is_none(), "released after the grace period");
    let events = fake.events_about("MultiArchBuild", "stranded");
    let abandoned = events
        .iter()
        .find(|(r, _, _)| r == "CleanupAbandoned")
        .unwrap_or_else(|| panic!("no CleanupAbandoned event in {events:?}"));
    assert_eq!(abandoned.1, "Warning");
    assert!(abandoned.2.contains("job-amd64, job-arm64"), "{}", abandoned.2);
}

/// Success releases exactly the suspended Jobs labelled for this build in its namespace, and
/// writes the image ConfigMap; nothing before success; failure warns each waiting Job once.
async fn gating_releases_exactly_the_waiting_jobs_and_only_after_success(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    let jobs = [
        ("sims", "head", Some("gated"), true),
        ("sims", "other-build", Some("another"), true),
        ("sims", "already-running", Some("gated"), false),
        ("sims", "unlabelled", None, true),
        ("elsewhere", "head", Some("gated"), true),
        ("sims", "after-broken", Some("broken"), true),
    ];
    for (ns, name, after, suspend) in jobs {
        fake.create("batch", "jobs", job_object(ns, name, after, suspend));
    }
    let versions = || -> Vec<Value> {
        jobs.iter()
            .map(|(ns, name, _, _)| fake.get(&Key::job(ns, name)).unwrap()["metadata"]["resourceVersion"].clone())
            .collect()
    };
    let untouched = versions();

    let key = create_build(&fake, good_build("sims", "gated", &env.registry.repo("gated")));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(status(&fake, &key)["phase"], "Building");
    assert_eq!(versions(), untouched, "nothing is released before success");
    assert!(fake.get(&Key::new("", "configmaps", "sims", "gated-image")).is_none());

    env.builder.play().await;
    ctx.poller().sweep().await;
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert_eq!(s["phase"], "Succeeded", "{s}");
    let now = versions();
    for (i, (ns, name, _, _)) in jobs.iter().enumerate() {
        let released = (*ns, *name) == ("sims", "head");
        assert_eq!(now[i] != untouched[i], released, "{ns}/{name}");
        let suspend = &fake.get(&Key::job(ns, name)).unwrap()["spec"]["suspend"];
        if released {
            assert_eq!(*suspend, json!(false));
        }
    }
    assert!(reasons(&fake, "Job", "head").contains(&"Released".to_string()));
    let cm = fake
        .get(&Key::new("", "configmaps", "sims", "gated-image"))
        .expect("the image ConfigMap");
    assert_eq!(cm["data"]["image"], s["image"]);
    assert_eq!(cm["data"]["digest"], s["digest"]);
    assert_eq!(cm["data"]["tag"], "v1");
    for arch in ["amd64", "arm64"] {
        assert!(
            cm["data"][format!("digest-{arch}")]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
    }
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("MultiArchBuild"), Some("gated"))
    );
    assert_eq!(owner["uid"], fake.get(&key).unwrap()["metadata"]["uid"]);

    // Releasing again changes nothing.
    let settled = versions();
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(versions(), settled);

    // A build that fails (here: an invalid spec) keeps its Job suspended and warns it once.
    let broken = create_build(
        &fake,
        build_object(
            "sims",
            "broken",
            "registry.invalid/broken",
            "http://insecure.example/app.git",
        ),
    );
    reconcile_now(&fake, &ctx, &broken).await;
    reconcile_now(&fake, &ctx, &broken).await;
    let s = status(&fake, &broken);
    assert_eq!(
        (s["phase"].as_str(), ready(&s)["reason"].as_str()),
        (Some("Failed"), Some("InvalidSpec"))
    );
    let job = fake.get(&Key::job("sims", "after-broken")).unwrap();
    assert_eq!(job["spec"]["suspend"], json!(true));
    assert!(job["metadata"]["annotations"]["multiarch.dev/notified"].is_string());
    reconcile_now(&fake, &ctx, &broken).await;
    let warnings = fake.events_about("Job", "after-broken");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        (warnings[0].0.as_str(), warnings[0].1.as_str()),
        ("InvalidSpec", "Warning")
    );
    assert!(
        warnings[0].2.contains("MultiArchBuild broken ended Failed"),
        "{}",
        warnings[0].2
    );
}

/// A build whose `ARG` takes the pinned image of `from` (`valueFrom.multiArchBuild`).
fn dependent_build(namespace: &str, name: &str, arg: &str, from: &str, repository: &str) -> Value {
    let mut object = good_build(namespace, name, repository);
    object["spec"]["buildArgs"] = json!([{"name": arg, "valueFrom": {"multiArchBuild": {"name": from}}}]);
    object
}

/// A suspended Job waiting on several builds: label present (empty), annotation listing them.
fn job_waiting_on(namespace: &str, name: &str, builds: &str) -> Value {
    let mut job = job_object(namespace, name, Some(""), true);
    job["metadata"]["annotations"] = json!({"multiarch.dev/after-builds": builds});
    job
}

fn phase_and_reason(fake: &FakeKube, key: &Key) -> (String, String) {
    let s = status(fake, key);
    (
        s["phase"].as_str().unwrap_or_default().to_string(),
        ready(&s)["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// A Job waiting on two builds (annotation multiarch.dev/after-builds) is released only once both
/// succeeded, with both pinned images in its `<job>-images` ConfigMap; when one of its builds
/// fails it stays suspended and gets one Warning event naming that build.
async fn a_job_waiting_on_two_builds_is_released_only_after_both_succeed(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    fake.create(
        "batch",
        "jobs",
        job_waiting_on("sims", "pipeline", "two-base, two-submit"),
    );
    fake.create("batch", "jobs", job_waiting_on("sims", "doomed", "two-base,two-broken"));
    let base = create_build(&fake, good_build("sims", "two-base", &env.registry.repo("two-base")));
    build_to_success(&env, &fake, &ctx, &base).await;
    let pipeline = Key::job("sims", "pipeline");
    assert_eq!(
        fake.get(&pipeline).unwrap()["spec"]["suspend"],
        json!(true),
        "one of two succeeded"
    );
    assert!(
        fake.get(&Key::new("", "configmaps", "sims", "pipeline-images"))
            .is_none()
    );

    let submit = create_build(
        &fake,
        good_build("sims", "two-submit", &env.registry.repo("two-submit")),
    );
    build_to_success(&env, &fake, &ctx, &submit).await;
    let job = fake.get(&pipeline).unwrap();
    assert_eq!(job["spec"]["suspend"], json!(false), "both succeeded: released");
    let cm = fake
        .get(&Key::new("", "configmaps", "sims", "pipeline-images"))
        .expect("the <job>-images ConfigMap");
    assert_eq!(cm["data"]["two-base"], status(&fake, &base)["image"]);
    assert_eq!(cm["data"]["two-submit"], status(&fake, &submit)["image"]);
    assert!(cm["data"]["two-base"].as_str().unwrap().contains("@sha256:"));
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Job"), Some("pipeline"))
    );
    assert_eq!(owner["uid"], job["metadata"]["uid"]);
    let released = fake.events_about("Job", "pipeline");
    assert!(
        released
            .iter()
            .any(|(r, _, note)| r == "Released" && note.contains("two-base, two-submit")),
        "{released:?}"
    );

    // two-broken fails (an invalid spec): doomed stays suspended, warned once, naming it.
    let broken = create_build(
        &fake,
        build_object(
            "sims",
            "two-broken",
            "registry.invalid/broken",
            "http://insecure.example/app.git",
        ),
    );
    reconcile_now(&fake, &ctx, &broken).await;
    reconcile_now(&fake, &ctx, &broken).await;
    reconcile_now(&fake, &ctx, &base).await;
    let doomed = fake.get(&Key::job("sims", "doomed")).unwrap();
    assert_eq!(doomed["spec"]["suspend"], json!(true));
    assert!(fake.get(&Key::new("", "configmaps", "sims", "doomed-images")).is_none());
    let warnings = fake.events_about("Job", "doomed");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        (warnings[0].0.as_str(), warnings[0].1.as_str()),
        ("InvalidSpec", "Warning")
    );
    assert!(
        warnings[0].2.contains("MultiArchBuild two-broken ended Failed"),
        "{}",
        warnings[0].2
    );
}

/// A cycle of two builds, one of three, and a build naming itself: every build in a cycle fails
/// with reason DependencyCycle and the cycle in its message, and nothing is submitted.
async fn dependency_cycles_fail_every_build_in_them_and_submit_nothing(env: Arc<Env>) {
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = env.context(&fake, Arc::clone(&metrics));
    let repo = "registry.invalid/cycle";
    let cycles: [&[&str]; 3] = [&["c2-a", "c2-b"], &["c3-a", "c3-b", "c3-c"], &["self"]];
    for cycle in cycles {
        let keys: Vec<Key> = cycle
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let next = cycle[(i + 1) % cycle.len()];
                create_build(&fake, dependent_build("sims", name, "BASE", next, repo))
            })
            .collect();
        for (i, key) in keys.iter().enumerate() {
            // The first reconcile adds the finalizer.
            reconcile_now(&fake, &ctx, key).await;
            reconcile_now(&fake, &ctx, key).await;
            let s = status(&fake, key);
            assert_eq!(
                phase_and_reason(&fake, key),
                ("Failed".into(), "DependencyCycle".into()),
                "{s}"
            );
            let names: Vec<&str> = (0..=cycle.len()).map(|j| cycle[(i + j) % cycle.len()]).collect();
            let expected = format!("dependency cycle: {}; no job submitted", names.join(" -> "));
            assert_eq!(s["message"], expected);
            assert!(s["startTime"].is_null() && s["platforms"][0]["jobId"].is_null(), "{s}");
        }
    }
    assert_eq!(aws_calls(&metrics, "SubmitJob"), 0);
}

/// base runs while dev (BASE from base) and app (DEV from dev) wait; cancelling base fails dev,
/// then app, with DependencyFailed naming the build each waited on.
async fn cancelling_a_dependency_fails_the_builds_waiting_on_it(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    let base = create_build(&fake, good_build("sims", "cx-base", &env.registry.repo("cx-base")));
    let dev = create_build(
        &fake,
        dependent_build("sims", "cx-dev", "BASE", "cx-base", &env.registry.repo("cx-dev")),
    );
    let app = create_build(
        &fake,
        dependent_build("sims", "cx-app", "DEV", "cx-dev", &env.registry.repo("cx-app")),
    );
    reconcile_now(&fake, &ctx, &base).await;
    reconcile_now(&fake, &ctx, &base).await;
    assert_eq!(status(&fake, &base)["phase"], "Building");
    for key in [&dev, &app] {
        reconcile_now(&fake, &ctx, key).await;
        reconcile_now(&fake, &ctx, key).await;
        assert_eq!(
            phase_and_reason(&fake, key),
            ("Waiting".into(), "WaitingForDependencies".into())
        );
    }
    assert_eq!(
        status(&fake, &dev)["message"],
        "waiting for MultiArchBuild cx-base (Building) to succeed"
    );
    assert_eq!(
        status(&fake, &app)["message"],
        "waiting for MultiArchBuild cx-dev (Waiting) to succeed"
    );
    fake.edit(&base, |o| o["spec"]["cancel"] = true.into());
    reconcile_now(&fake, &ctx, &base).await;
    assert_eq!(status(&fake, &base)["phase"], "Cancelled");
    for (key, on) in [(&dev, "cx-base ended Cancelled"), (&app, "cx-dev ended Failed")] {
        reconcile_now(&fake, &ctx, key).await;
        let s = status(&fake, key);
        assert_eq!(
            phase_and_reason(&fake, key),
            ("Failed".into(), "DependencyFailed".into()),
            "{s}"
        );
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains(&format!("dependency MultiArchBuild {on}")),
            "{s}"
        );
        assert!(s["inputs"].is_null() && s["startTime"].is_null(), "{s}");
    }
}

/// The whole controller: app (FROM ${DEV}), dev (FROM ${BASE}) and base, applied in that
/// (reverse) order, wait without a timer, then build one after the other as the watch reports
/// each success; each records and builds on its dependency's pinned digest.
async fn a_chain_applied_in_reverse_order_builds_on_pinned_digests(env: Arc<Env>) {
    let fake = env.fake();
    let (replica, _health) = start_replica(&env, &fake, "replica-chain");
    let app = create_build(
        &fake,
        dependent_build("chain", "app", "DEV", "dev", &env.registry.repo("chain-app")),
    );
    let dev = create_build(
        &fake,
        dependent_build("chain", "dev", "BASE", "base", &env.registry.repo("chain-dev")),
    );
    eventually(
        "dev waits for base, which does not exist",
        Duration::from_secs(20),
        || {
            fake.get(&dev)
                .is_some_and(|o| o["status"]["message"] == "waiting for MultiArchBuild base (not found) to succeed")
        },
    )
    .await;
    eventually("app waits for dev", Duration::from_secs(10), || {
        fake.get(&app).is_some_and(|o| o["status"]["phase"] == "Waiting")
    })
    .await;
    let base = create_build(&fake, good_build("chain", "base", &env.registry.repo("chain-base")));
    eventually("the chain succeeds", Duration::from_secs(60), || {
        [&base, &dev, &app].iter().all(|k| succeeded(&fake, k))
    })
    .await;
    let base_image = status(&fake, &base)["image"].clone();
    let dev_image = status(&fake, &dev)["image"].clone();
    assert!(base_image.as_str().unwrap().contains("@sha256:"), "{base_image}");
    assert_eq!(
        status(&fake, &dev)["inputs"],
        json!({"buildArgs": [{"name": "BASE", "value": base_image}]})
    );
    assert_eq!(
        status(&fake, &app)["inputs"],
        json!({"buildArgs": [{"name": "DEV", "value": dev_image}]})
    );
    let dev_ready = status(&fake, &dev)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DependenciesReady")
        .cloned()
        .unwrap();
    assert_eq!(dev_ready["status"], "True");
    // What dev's jobs got: exactly base's pinned image.
    let uid = fake.get(&dev).unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    let batch = aws_sdk_batch::Client::new(&env.aws);
    let ids: Vec<String> = status(&fake, &dev)["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobId"].as_str().unwrap().to_string())
        .collect();
    let jobs = batch.describe_jobs().set_jobs(Some(ids)).send().await.unwrap();
    assert_eq!(jobs.jobs().len(), 2);
    for job in jobs.jobs() {
        let env_of = |name: &str| {
            job.container()
                .unwrap()
                .environment()
                .iter()
                .find(|kv| kv.name() == Some(name))
                .and_then(|kv| kv.value())
                .map(str::to_string)
        };
        assert_eq!(env_of("MAB_BUILD_UID").as_deref(), Some(uid.as_str()));
        assert_eq!(env_of("MAB_BUILD_ARG_BASE").as_deref(), base_image.as_str());
    }
    replica.shutdown.trigger();
    replica.task.await.unwrap().unwrap();
}

fn metric(metrics: &Metrics, line_prefix: &str) -> f64 {
    metrics
        .encode()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The samples of one labelled counter family: each sample's labels and value.
fn samples(metrics: &Metrics, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let text = metrics.encode().unwrap();
    text.lines()
        .filter_map(|line| {
            let (labels, value) = line.strip_prefix(family)?.strip_prefix('{')?.split_once("} ")?;
            let labels = labels
                .split("\",")
                .map(|pair| {
                    let (name, value) = pair.split_once("=\"").unwrap();
                    (name.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            Some((labels, value.parse().unwrap()))
        })
        .collect()
}

/// Calls of one AWS operation the metrics counted, whatever their outcome.
fn aws_calls(metrics: &Metrics, operation: &str) -> u64 {
    samples(metrics, "multiarch_aws_calls_total")
        .iter()
        .filter(|(labels, _)| labels["operation"] == operation)
        .map(|(_, value)| *value as u64)
        .sum()
}

struct Replica {
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

fn start_replica(env: &Arc<Env>, fake: &FakeKube, identity: &str) -> (Replica, Arc<Health>) {
    let metrics = env.metrics();
    let health = Arc::new(Health::default());
    let shutdown = Shutdown::new();
    let (client, aws, settings) = (fake.client(), env.aws.clone(), env.settings(identity));
    let (m, h, s) = (Arc::clone(&metrics), Arc::clone(&health), shutdown.clone());
    let task = tokio::spawn(async move { run_with(client, &aws, settings, m, h, s).await });
    (
        Replica {
            metrics,
            shutdown,
            task,
        },
        health,
    )
}

/// The Lease the replicas elect their leader with (`Env::settings`).
fn leader_lease(fake: &FakeKube) -> Value {
    let key = Key::new("coordination.k8s.io", "leases", "mab-system", "multiarch-operator");
    fake.get(&key).expect("the leader Lease")
}

fn succeeded(fake: &FakeKube, key: &Key) -> bool {
    fake.get(key).is_some_and(|o| o["status"]["phase"] == "Succeeded")
}

/// Two replicas share a Lease: only the holder reconciles; the other takes over when it leaves.
async fn a_second_replica_without_the_lease_does_nothing(env: Arc<Env>) {
    let fake = env.fake();
    let (a, _) = start_replica(&env, &fake, "replica-a");
    eventually("replica-a leads", Duration::from_secs(10), || {
        metric(&a.metrics, "multiarch_leader ") == 1.0
    })
    .await;
    let (b, _) = start_replica(&env, &fake, "replica-b");

    let first = create_build(&fake, good_build("sims", "leased", &env.registry.repo("leased")));
    eventually("the first build succeeds", Duration::from_secs(30), || {
        succeeded(&fake, &first)
    })
    .await;
    let lease = leader_lease(&fake);
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    assert!(metric(&a.metrics, "multiarch_reconciles_total{result=\"success\"}") > 0.0);
    assert_eq!(metric(&b.metrics, "multiarch_leader "), 0.0);
    assert_eq!(
        metric(&b.metrics, "multiarch_reconciles_total"),
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        metric(&b.metrics, "multiarch_aws_calls_total"),
        0.0,
        "the standby called AWS"
    );

    // The leader leaves (SIGTERM): it releases the Lease and the standby takes over.
    a.shutdown.trigger();
    a.task.await.unwrap().unwrap();
    let a_reconciles = metric(&a.metrics, "multiarch_reconciles_total{result=\"success\"}");
    eventually("replica-b takes over", Duration::from_secs(15), || {
        metric(&b.metrics, "multiarch_leader ") == 1.0
    })
    .await;
    let second = create_build(&fake, good_build("sims", "leased-2", &env.registry.repo("leased-2")));
    eventually("the second build succeeds", Duration::from_secs(30), || {
        succeeded(&fake, &second)
    })
    .await;
    assert!(metric(&b.metrics, "multiarch_reconciles_total{result=\"success\"}") > 0.0);
    assert_eq!(
        metric(&a.metrics, "multiarch_reconciles_total{result=\"success\"}"),
        a_reconciles
    );
    b.shutdown.trigger();
    b.task.await.unwrap().unwrap();
}

/// Every reconcile a replica's metrics counted, whatever its result.
fn reconciles(metrics: &Metrics) -> f64 {
    samples(metrics, "multiarch_reconciles_total")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// A leader whose Lease writes fail — refused (500), then never answered — stops reconciling
/// within the lease duration of its last renewal, although the Lease still names it; once the API
/// server takes writes again it takes the Lease back and reconciles what was made meanwhile.
async fn a_leader_that_cannot_renew_its_lease_stops_within_the_lease_duration(env: Arc<Env>) {
    // Timers fire on time, but the test looks every 50 ms on a busy 2-core machine.
    const SLACK: Duration = Duration::from_millis(500);
    let fake = env.fake();
    let identity = "replica-cut-off";
    let (replica, _) = start_replica(&env, &fake, identity);
    let leading = || metric(&replica.metrics, "multiarch_leader ") == 1.0;
    eventually("the replica leads", Duration::from_secs(10), leading).await;
    let duration = Duration::from_secs(env.settings(identity).lease.duration_seconds);
    let outages = [
        ("refused", FakeKube::refuse_lease_writes as fn(&FakeKube)),
        ("unanswered", FakeKube::hang_lease_writes),
    ];
    for (outage, cut_off) in outages {
        let failed = fake.lease_writes_failed();
        cut_off(&fake);
        // The last renewal was sent before this: the Lease is ours until this + duration at most.
        eventually(
            &format!("the leader stops within the lease duration ({outage} renewals)"),
            duration + SLACK,
            || !leading(),
        )
        .await;
        assert!(fake.lease_writes_failed() > failed, "it tried to renew ({outage})");
        assert_eq!(
            leader_lease(&fake)["spec"]["holderIdentity"],
            identity,
            "the Lease still names it ({outage})"
        );

        // A build made now is not touched: no finalizer, no status, no reconcile.
        let before = reconciles(&replica.metrics);
        let name = format!("cut-off-{outage}");
        let key = create_build(&fake, good_build("sims", &name, &env.registry.repo(&name)));
        // A leader puts its finalizer on within milliseconds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!leading(), "{outage}");
        assert_eq!(fake.status_writes("sims", &name), 0, "{outage}");
        assert!(fake.get(&key).unwrap()["metadata"]["finalizers"].is_null(), "{outage}");
        assert_eq!(reconciles(&replica.metrics), before, "{outage}");

        fake.heal_leases();
        eventually(
            &format!("the replica leads again after {outage} renewals"),
            Duration::from_secs(5),
            leading,
        )
        .await;
        eventually(
            &format!("the build made while {outage} succeeds"),
            Duration::from_secs(30),
            || succeeded(&fake, &key),
        )
        .await;
    }
    replica.shutdown.trigger();
    replica.task.await.unwrap().unwrap();
    let lease = leader_lease(&fake);
    assert!(lease["spec"]["holderIdentity"].is_null(), "released: {lease}");
}

/// Batch jobs named exactly `name` in the test queue.
async fn jobs_named(env: &Env, name: &str) -> usize {
    let batch = aws_sdk_batch::Client::new(&env.aws);
    let filter = aws_sdk_batch::types::KeyValuesPair::builder()
        .name("JOB_NAME")
        .values(name)
        .build();
    let listed = batch.list_jobs().job_queue(QUEUE).filters(filter).send().await.unwrap();
    listed
        .job_summary_list()
        .iter()
        .filter(|j| j.job_name() == Some(name))
        .count()
}

/// A failed job fails the build with its reason and the tail of its CloudWatch log.
async fn a_failed_job_fails_the_build_with_its_log_tail(env: Arc<Env>) {
    let failing = Moto::start_with_env(&[("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")]).await;
    let aws = failing.sdk_config().await;
    let batch = aws_sdk_batch::Client::new(&aws);
    failing.create_batch_environment(&batch).await;
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = context_on(&fake, &aws, Arc::clone(&metrics), env.config());
    let key = create_build(&fake, good_build("sims", "broken", &env.registry.repo("broken")));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;

    // The builder's last words, in each job's log stream.
    let ids: Vec<String> = status(&fake, &key)["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobId"].as_str().expect("a job id per platform").to_string())
        .collect();
    let jobs = batch.describe_jobs().set_jobs(Some(ids)).send().await.unwrap();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&aws);
    for job in jobs.jobs() {
        let stream = job.container().and_then(|c| c.log_stream_name()).expect("a log stream");
        // A user's Dockerfile prints what it likes: colours, a bell, a title change.
        let lines = [
            "build.sh: cloning \u{1b}]0;pwned\u{7}".to_string(),
            "build.sh: error: \u{1b}[31mno space\u{1b}[0m left on device\u{7}\r".to_string(),
        ];
        moto::put_log_lines(&logs, stream, &lines).await;
    }

    ctx.poller().sweep().await;
    for _ in 0..3 {
        reconcile_now(&fake, &ctx, &key).await;
    }
    let s = status(&fake, &key);
    assert_eq!(s["phase"], "Failed", "{s}");
    assert_eq!(ready(&s)["reason"], "BuildFailed", "{s}");
    let message = ready(&s)["message"].as_str().unwrap();
    assert!(
        message.contains("build.sh: error: no space left on device"),
        "{message}"
    );
    // No terminal control codes reach the status, its conditions or the events.
    let no_controls = |text: &str| !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    assert!(no_controls(&s.to_string()), "{s}");
    assert!(no_controls(s["message"].as_str().unwrap()));
    for (_, _, note) in fake.events_about("MultiArchBuild", "broken") {
        assert!(no_controls(&note), "{note:?}");
    }
    assert!(aws_calls(&metrics, "GetLogEvents") >= 1);
}

/// An ECR repository is reached with the controller's own ECR token, fetched through its counted
/// client for the repository's region once and then reused. The region is one no DNS knows, so
/// the registry requests fail without leaving the machine.
async fn an_ecr_repository_is_reached_with_one_cached_token(env: Arc<Env>) {
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = env.context(&fake, Arc::clone(&metrics));
    let repository = "123456789012.dkr.ecr.us-test-1.amazonaws.com/app";
    let key = create_build(&fake, good_build("sims", "in-ecr", repository));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    env.builder.play().await;
    ctx.poller().sweep().await;
    for _ in 0..2 {
        let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&key).unwrap()).unwrap();
        let error = reconcile(Arc::new(guard), Arc::clone(&ctx)).await.unwrap_err();
        assert_eq!(error.label(), "RegistryUnavailable", "{error}");
        assert!(error.to_string().contains(repository), "{error}");
    }
    assert_eq!(aws_calls(&metrics, "GetAuthorizationToken"), 1, "one token, reused");
}

/// With a KMS signing key a build names its image only once the index's signature and provenance
/// are pushed and read back verified. While KMS refuses (here: the key's alias does not exist, as
/// after a deletion or for a key the role may not use) the build stays Assembling with
/// `SigningFailed` and `status.image` is never written; once the key works it completes.
async fn a_signed_build_names_its_image_only_once_signature_and_provenance_verify(env: Arc<Env>) {
    let fake = env.fake();
    let alias = "alias/mab-controller-signing";
    let uri: KeyUri = format!("awskms:///{alias}").parse().unwrap();
    // KMS calls are counted like every AWS call (the IAM check below sees them).
    let metrics = env.metrics();
    let kms = aws_sdk_kms::config::Builder::from(&env.aws).interceptor(metrics.aws_interceptor());
    let config = ReconcileConfig {
        signer: Some(Arc::new(Signer::open(uri, kms).unwrap())),
        ..env.config()
    };
    let ctx = context_on(&fake, &env.aws, Arc::clone(&metrics), config);
    let repository = env.registry.repo("signed/app");
    let key = create_build(&fake, good_build("signing", "signed", &repository));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    env.builder.play().await;
    ctx.poller().sweep().await;
    for _ in 0..2 {
        reconcile_now(&fake, &ctx, &key).await;
        let waiting = status(&fake, &key);
        assert_eq!(waiting["phase"], "Assembling", "{waiting}");
        assert_eq!(ready(&waiting)["reason"], "SigningFailed", "{waiting}");
        let message = waiting["message"].as_str().unwrap();
        assert!(
            message.contains("its provenance is not attached: KMS could not") && message.contains(alias),
            "{message}"
        );
        assert!(waiting["digest"].is_string(), "the index is pushed: {waiting}");
        assert!(
            waiting["image"].is_null(),
            "status.image written before signing: {waiting}"
        );
        assert!(waiting["signature"].is_null() && waiting["provenance"].is_null());
    }

    let kms = aws_sdk_kms::Client::new(&env.aws);
    let key_id = signing_key(&env.aws).await;
    let refused = aws_calls(&metrics, "GetPublicKey");
    assert!(refused >= 2, "each attempt asked KMS: {refused}");
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    reconcile_now(&fake, &ctx, &key).await;
    let done = status(&fake, &key);
    assert!(succeeded(&fake, &key), "{done}");
    let digest = done["digest"].as_str().unwrap();
    assert_eq!(done["image"], format!("{repository}@{digest}"));
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    assert_eq!(done["signature"]["image"], format!("{repository}:{tag}.sig"));
    assert_eq!(done["signature"]["key"], format!("awskms:///{alias}"));
    assert_eq!(done["provenance"]["image"], format!("{repository}:{tag}.att"));
    assert_eq!(done["provenance"]["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(done["provenance"]["signed"], true);
    assert_eq!(aws_calls(&metrics, "Sign"), 2, "the index and the provenance");

    // What the status names verifies with the key's public key, as KMS gives it.
    let public = kms.get_public_key().key_id(&key_id).send().await.unwrap();
    let public = PublicKey::from_der(public.public_key().unwrap().as_ref()).unwrap();
    let registry = multiarch_operator::config::registry(&env.config().registry, &repository, &env.aws);
    let found = multiarch_operator::attest::check(&registry, &repository, digest, Some(&public))
        .await
        .unwrap();
    let signature = found.signature.unwrap();
    assert_eq!(done["signature"]["digest"], signature.digest.as_str());
    let (provenance, statement) = found.provenance.unwrap();
    assert_eq!(done["provenance"]["digest"], provenance.digest.as_str());
    assert_eq!(
        statement["subject"].as_array().unwrap().len(),
        3,
        "the index and both platforms"
    );
    let jobs = statement["predicate"]["runDetails"]["byproducts"].as_array().unwrap();
    for platform in done["platforms"].as_array().unwrap() {
        let job = jobs
            .iter()
            .find(|j| j["annotations"]["platform"] == platform["platform"])
            .unwrap();
        assert_eq!(job["uri"], platform["jobArn"], "{job}");
        assert!(job["uri"].as_str().unwrap().starts_with("arn:aws:batch:"), "{job}");
        assert_eq!(job["annotations"]["jobQueue"], platform["jobQueue"]);
    }
}

/// A new ECC_NIST_P256 SIGN_VERIFY key in moto's KMS (which signs with ECDSA_SHA_256); its id.
async fn signing_key(aws: &SdkConfig) -> String {
    let created = aws_sdk_kms::Client::new(aws)
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    created.key_metadata().unwrap().key_id().to_string()
}

/// KMS refusing the controller's role (IAM or the key policy without kms:GetPublicKey/kms:Sign)
/// holds the image back the same way, with AWS's reason, until access is granted.
async fn a_kms_key_the_role_may_not_use_holds_the_image_until_it_may(env: Arc<Env>) {
    let key_id = signing_key(&env.aws).await;
    let moto = env
        .aws
        .endpoint_url()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let front = Front::start(&moto, Fault::AwsAccessDenied { first: 1 }).await;
    let denied = env
        .aws
        .to_builder()
        .endpoint_url(format!("http://{}", front.host))
        .build();
    let uri: KeyUri = format!("awskms:///{key_id}").parse().unwrap();
    let config = ReconcileConfig {
        signer: Some(Arc::new(
            Signer::open(uri, aws_sdk_kms::config::Builder::from(&denied)).unwrap(),
        )),
        ..env.config()
    };
    let fake = env.fake();
    let ctx = context_on(&fake, &env.aws, env.metrics(), config);
    let key = create_build(
        &fake,
        good_build("signing", "denied", &env.registry.repo("signed/denied")),
    );
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    env.builder.play().await;
    ctx.poller().sweep().await;
    reconcile_now(&fake, &ctx, &key).await;
    let waiting = status(&fake, &key);
    assert_eq!(ready(&waiting)["reason"], "SigningFailed", "{waiting}");
    let message = ready(&waiting)["message"].as_str().unwrap();
    assert!(
        message.contains("KMS could not read the public key") && message.contains("AccessDeniedException"),
        "{message}"
    );
    assert!(waiting["image"].is_null(), "{waiting}");
    assert_eq!(front.log().len(), 1, "one refused call: {:?}", front.log());

    // Access granted: the next attempt signs.
    reconcile_now(&fake, &ctx, &key).await;
    let done = status(&fake, &key);
    assert!(succeeded(&fake, &key), "{done}");
    assert_eq!(done["signature"]["key"], format!("awskms:///{key_id}"));
    assert!(
        front.log().iter().skip(1).all(|l| l.ends_with("-> 200")),
        "{:?}",
        front.log()
    );
}

/// Without KMS, a PEM key file (`--signing-key file:///…`, the chart's `signing.secretName`) signs
/// the same way; openssl checks the index signature with the public key.
async fn a_pem_key_signs_where_there_is_no_kms(env: Arc<Env>) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("cosign.key");
    let public = dir.path().join("cosign.pub");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path(&private),
    ]);
    openssl(&["pkey", "-in", &path(&private), "-pubout", "-out", &path(&public)]);

    let fake = env.fake();
    let uri: KeyUri = format!("file://{}", path(&private)).parse().unwrap();
    let config = ReconcileConfig {
        signer: Some(Arc::new(
            Signer::open(uri, aws_sdk_kms::config::Builder::from(&env.aws)).unwrap(),
        )),
        ..env.config()
    };
    let ctx = context_on(&fake, &env.aws, env.metrics(), config);
    let repository = env.registry.repo("signed/pem");
    let key = create_build(&fake, good_build("signing", "pem", &repository));
    build_to_success(&env, &fake, &ctx, &key).await;
    let done = status(&fake, &key);
    assert_eq!(done["provenance"]["signed"], true, "{done}");
    let digest = done["digest"].as_str().unwrap();

    // The signature manifest's one layer is the payload; its annotation the base64 signature.
    let (code, _, manifest) = env
        .pusher
        .get_manifest("signed/pem", done["signature"]["digest"].as_str().unwrap())
        .await;
    assert_eq!(code, 200);
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = &manifest["layers"][0];
    let payload = env
        .pusher
        .get_blob("signed/pem", layer["digest"].as_str().unwrap())
        .await;
    let payload_json: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload_json["critical"]["image"]["docker-manifest-digest"], digest);
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    std::fs::write(dir.path().join("payload.sig"), &signature).unwrap();
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &path(&public),
        "-signature",
        &path(&dir.path().join("payload.sig")),
        &path(&dir.path().join("payload")),
    ]);
    assert_eq!(String::from_utf8_lossy(&verified).trim(), "Verified OK");
}

/// A controller killed after SubmitJob and before the job id reached the status: the next one
/// adopts the jobs by their deterministic names, so each platform still has exactly one job.
async fn a_restart_between_submit_and_the_status_write_submits_nothing_twice(env: Arc<Env>) {
    let fake = env.fake();
    fake.refuse_job_ids();
    let (first, _) = start_replica(&env, &fake, "replica-killed");
    let key = create_build(&fake, good_build("sims", "restarted", &env.registry.repo("restarted")));
    eventually(
        "SubmitJob happened and its status write failed",
        Duration::from_secs(20),
        || fake.refused() > 0,
    )
    .await;
    first.task.abort();
    let _ = first.task.await;
    let s = status(&fake, &key);
    assert!(
        s["platforms"].as_array().unwrap().iter().all(|p| p["jobId"].is_null()),
        "{s}"
    );

    fake.heal();
    let (second, _) = start_replica(&env, &fake, "replica-restarted");
    eventually("the build succeeds after the restart", Duration::from_secs(30), || {
        succeeded(&fake, &key)
    })
    .await;
    let s = status(&fake, &key);
    for platform in s["platforms"].as_array().unwrap() {
        let name = platform["jobName"].as_str().unwrap();
        assert_eq!(jobs_named(&env, name).await, 1, "{name}");
    }
    second.shutdown.trigger();
    second.task.await.unwrap().unwrap();
}

/// Runs a build to success with `ctx`, driving it by hand.
async fn build_to_success(env: &Env, fake: &FakeKube, ctx: &Arc<Context>, key: &Key) {
    reconcile_now(fake, ctx, key).await;
    reconcile_now(fake, ctx, key).await;
    env.builder.play().await;
    ctx.poller().sweep().await;
    reconcile_now(fake, ctx, key).await;
    assert!(succeeded(fake, key), "{}", status(fake, key));
}

/// A build this controller cannot read any more (here: a newer version wrote a media type this
/// one does not know) keeps its whole record: a Succeeded build's status is not touched at all
/// (digest, image, job ids survive), a running one only gets a Ready condition saying why; and
/// deleting an unreadable running build still terminates the jobs its raw status records.
async fn an_unreadable_build_keeps_its_record(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    let done = create_build(&fake, good_build("sims", "done", &env.registry.repo("done")));
    build_to_success(&env, &fake, &ctx, &done).await;
    let before = status(&fake, &done);
    assert!(before["digest"].is_string() && before["image"].is_string());
    let writes = fake.status_writes("sims", "done");
    fake.edit(&done, |o| o["spec"]["output"]["mediaType"] = "zstd-index".into());
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&done).unwrap()).unwrap();
    assert!(guard.0.is_err(), "the edit makes the build unreadable");
    reconcile(Arc::new(guard), Arc::clone(&ctx)).await.expect("reconcile");
    assert_eq!(status(&fake, &done), before, "an ended build's status is never touched");
    assert_eq!(fake.status_writes("sims", "done"), writes);
    assert!(reasons(&fake, "MultiArchBuild", "done").contains(&"InvalidSpec".to_string()));

    // A running build: every field stays, Ready says why.
    let running = create_build(&fake, good_build("sims", "running", &env.registry.repo("running")));
    reconcile_now(&fake, &ctx, &running).await;
    reconcile_now(&fake, &ctx, &running).await;
    let building = status(&fake, &running);
    let ids: Vec<Value> = building["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobId"].clone())
        .collect();
    assert!(ids.iter().all(Value::is_string), "{building}");
    fake.edit(&running, |o| o["spec"]["output"]["mediaType"] = "zstd-index".into());
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&running).unwrap()).unwrap();
    reconcile(Arc::new(guard), Arc::clone(&ctx)).await.expect("reconcile");
    let after = status(&fake, &running);
    assert_eq!(ready(&after)["reason"], "InvalidSpec");
    assert!(
        ready(&after)["message"].as_str().unwrap().contains("zstd-index"),
        "{after}"
    );
    let mut without_conditions = after.clone();
    let mut expected = building.clone();
    without_conditions.as_object_mut().unwrap().remove("conditions");
    expected.as_object_mut().unwrap().remove("conditions");
    assert_eq!(without_conditions, expected, "every other field as it was");

    // Deleted while unreadable: the recorded live jobs are terminated, then the finalizer goes.
    fake.edit(&running, |o| {
        o["status"]["platforms"][0]["state"] = "RUNNING".into();
        o["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    });
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&running).unwrap()).unwrap();
    reconcile(Arc::new(guard), Arc::clone(&ctx)).await.expect("reconcile");
    assert!(fake.get(&running).is_none(), "the finalizer was released");
    let notes: Vec<String> = fake
        .events_about("MultiArchBuild", "running")
        .into_iter()
        .map(|(_, _, n)| n)
        .collect();
    let id = ids[0].as_str().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("terminated Batch job(s)") && n.contains(id)),
        "{notes:?}"
    );
}

/// A status write planned from an older resourceVersion loses to the newer write made meanwhile
/// (409 Conflict, never forced over it); the next reconcile reads the newer status and goes on
/// from it, and nothing is submitted twice.
async fn a_stale_status_write_loses_to_the_newer_one(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    let key = create_build(&fake, good_build("sims", "raced", &env.registry.repo("raced")));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    let building = status(&fake, &key);
    env.builder.play().await;
    ctx.poller().sweep().await;
    // Another writer (a replica that still thinks it leads) cancels the build just before our
    // write of the next step arrives.
    fake.race_next_status_write(&key, |o| {
        o["status"]["phase"] = "Cancelled".into();
        o["status"]["message"] = "written by the newer writer".into();
    });
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(fake.get(&key).unwrap()).unwrap();
    let error = reconcile(Arc::new(guard), Arc::clone(&ctx)).await.unwrap_err();
    assert_eq!(error.label(), "StatusConflict", "{error}");
    let s = status(&fake, &key);
    assert_eq!(
        (s["phase"].as_str(), s["message"].as_str()),
        (Some("Cancelled"), Some("written by the newer writer"))
    );
    assert!(s["digest"].is_null(), "{s}");

    // Re-read, re-planned: the newer (terminal) status stands.
    reconcile_now(&fake, &ctx, &key).await;
    let s = status(&fake, &key);
    assert_eq!(s["phase"], "Cancelled", "{s}");
    assert!(s["digest"].is_null(), "{s}");
    for (platform, before) in s["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .zip(building["platforms"].as_array().unwrap())
    {
        assert_eq!(platform["jobId"], before["jobId"]);
        let name = platform["jobName"].as_str().unwrap();
        assert_eq!(jobs_named(&env, name).await, 1, "{name}");
    }
    assert!(
        !reasons(&fake, "MultiArchBuild", "raced").contains(&"StatusConflict".to_string()),
        "a conflict is not worth a Warning event"
    );
}

/// A build whose repository is on a host the controller may not use fails at once with
/// RegistryNotAllowed, naming the host and the setting; nothing connects to that host and no job
/// is submitted.
async fn a_registry_that_is_not_allowed_is_never_contacted(env: Arc<Env>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let accepting = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    for (name, repository) in [
        ("elsewhere", format!("{host}/app")),
        (
            "other-account",
            "210987654321.dkr.ecr.us-east-1.amazonaws.com/app".to_string(),
        ),
    ] {
        let mut object = good_build("sims", name, &repository);
        object["spec"]["output"]["reuseExisting"] = true.into();
        let key = create_build(&fake, object);
        reconcile_now(&fake, &ctx, &key).await;
        reconcile_now(&fake, &ctx, &key).await;
        let s = status(&fake, &key);
        assert_eq!(s["phase"], "Failed", "{s}");
        assert_eq!(ready(&s)["reason"], "RegistryNotAllowed", "{s}");
        let message = s["message"].as_str().unwrap();
        let registry = repository.split('/').next().unwrap();
        assert!(
            message.contains(&format!("registry {registry} is not allowed")),
            "{message}"
        );
        assert!(message.contains("MAB_ALLOWED_REGISTRIES"), "{message}");
        assert!(
            s["platforms"].as_array().unwrap().iter().all(|p| p["jobId"].is_null()),
            "{s}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing connected to {host}"
    );
    accepting.abort();
}

/// An edit of a build object, one per policy case.
type Change<'a> = dyn Fn(&mut Value) + Sync + 'a;

/// A MultiArchBuildPolicy that selects a namespace refuses each kind of violation with
/// PolicyViolation before anything is submitted; a compliant build runs, and so does the same
/// build in a namespace no policy selects.
async fn a_namespace_policy_refuses_what_it_does_not_allow(env: Arc<Env>) {
    let fake = env.fake();
    let ctx = env.context(&fake, env.metrics());
    fake.create(
        "",
        "namespaces",
        json!({"metadata": {"name": "team-a", "namespace": "", "labels": {"team": "a"}}}),
    );
    let prefix = format!("{}/team-a", env.registry.host);
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-a-token";
    fake.create(
        "multiarch.dev",
        "multiarchbuildpolicies",
        json!({
            "metadata": {"name": "team-a", "namespace": ""},
            "spec": {
                "namespaceSelector": {"matchLabels": {"team": "a"}},
                "repositoryPrefixes": [prefix],
                "credentialsSecretArns": [arn],
                "jobQueues": [QUEUE],
                "jobDefinitions": [JOB_DEFINITION],
                "maxPlatforms": 2,
                "maxTimeoutSeconds": 900,
            },
        }),
    );
    let build = |namespace: &str, name: &str, change: &Change<'_>| {
        let mut object = good_build(namespace, name, &format!("{prefix}/{name}"));
        change(&mut object);
        create_build(&fake, object)
    };
    let cases: [(&str, &Change<'_>, &str); 7] = [
        (
            "repo",
            &|o| o["spec"]["output"]["repository"] = format!("{}/team-b/x", env.registry.host).into(),
            "spec.output.repository",
        ),
        (
            "cache",
            &|o| o["spec"]["output"]["cache"] = json!({"repository": format!("{}/team-b/cache", env.registry.host)}),
            "spec.output.cache.repository",
        ),
        (
            "secret",
            &|o| {
                o["spec"]["source"]["git"]["credentialsSecretArn"] =
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-b-token".into()
            },
            "spec.source.git.credentialsSecretArn",
        ),
        (
            "queue",
            &|o| o["spec"]["platforms"][1]["jobQueue"] = "gpu-queue".into(),
            "spec.platforms[1].jobQueue \"gpu-queue\"",
        ),
        (
            "definition",
            &|o| o["spec"]["jobDefinition"] = "privileged-builder".into(),
            "spec.jobDefinition",
        ),
        (
            "platforms",
            &|o| {
                o["spec"]["platforms"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"platform": "linux/amd64/v2", "jobQueue": QUEUE}))
            },
            "at most 2",
        ),
        (
            "timeout",
            &|o| o["spec"]["timeoutSeconds"] = 3600.into(),
            "spec.timeoutSeconds 3600",
        ),
    ];
    for (name, change, field) in cases {
        let key = build("team-a", name, change);
        reconcile_now(&fake, &ctx, &key).await;
        reconcile_now(&fake, &ctx, &key).await;
        let s = status(&fake, &key);
        assert_eq!(s["phase"], "Failed", "{name}: {s}");
        assert_eq!(ready(&s)["reason"], "PolicyViolation", "{name}: {s}");
        let message = s["message"].as_str().unwrap();
        assert!(message.contains(field), "{name}: {message}");
        assert!(message.contains("by MultiArchBuildPolicy team-a"), "{name}: {message}");
        assert!(
            s["platforms"].as_array().unwrap().iter().all(|p| p["jobId"].is_null()),
            "{name}: {s}"
        );
        let job = s["platforms"][0]["jobName"].clone();
        assert!(job.is_null(), "{name}: nothing submitted");
    }
    // Compliant: it runs.
    let fine = build("team-a", "fine", &|_| {});
    reconcile_now(&fake, &ctx, &fine).await;
    reconcile_now(&fake, &ctx, &fine).await;
    assert_eq!(status(&fake, &fine)["phase"], "Building", "{}", status(&fake, &fine));
    // The same violation where no policy applies: it runs too.
    let elsewhere = build("team-b", "elsewhere", &|o| o["spec"]["timeoutSeconds"] = 3600.into());
    reconcile_now(&fake, &ctx, &elsewhere).await;
    reconcile_now(&fake, &ctx, &elsewhere).await;
    assert_eq!(
        status(&fake, &elsewhere)["phase"],
        "Building",
        "{}",
        status(&fake, &elsewhere)
    );
}

async fn http_get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The whole controller: it waits for the CRD (healthy, not ready), then builds, releases the
/// waiting Job, survives a malformed object, serves its metrics, and stops on request.
async fn the_controller_waits_for_the_crd_then_builds_and_releases(env: Arc<Env>) {
    let fake = env.fake_from(FakeKube::without_crd());
    let (replica, health) = start_replica(&env, &fake, "replica-solo");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(multiarch_operator::controller::http::serve(
        listener,
        Arc::clone(&replica.metrics),
        health,
        replica.shutdown.wait(),
    ));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(&base, "/healthz").await.0, 200);
    let (code, body) = http_get(&base, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    fake.install_crd();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&base, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready after the CRD was installed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut malformed = good_build("sims", "malformed", "registry.invalid/malformed");
    malformed["spec"]["platforms"][0]["platform"] = "linux/s390x".into();
    let malformed = create_build(&fake, malformed);
    fake.create(
        "batch",
        "jobs",
        job_object("sims", "nextflow-head", Some("whole"), true),
    );
    let key = create_build(&fake, good_build("sims", "whole", &env.registry.repo("whole")));
    eventually("the build succeeds", Duration::from_secs(30), || succeeded(&fake, &key)).await;
    eventually("the head Job is released", Duration::from_secs(10), || {
        fake.get(&Key::job("sims", "nextflow-head")).unwrap()["spec"]["suspend"] == json!(false)
    })
    .await;
    assert!(fake.get(&Key::new("", "configmaps", "sims", "whole-image")).is_some());
    // A Job that starts waiting after the build succeeded is released too (the Job watch).
    fake.create("batch", "jobs", job_object("sims", "late-head", Some("whole"), true));
    eventually("the late Job is released", Duration::from_secs(10), || {
        fake.get(&Key::job("sims", "late-head")).unwrap()["spec"]["suspend"] == json!(false)
    })
    .await;
    eventually("the malformed build is reported", Duration::from_secs(10), || {
        fake.get(&malformed)
            .is_some_and(|o| o["status"]["conditions"].is_array())
    })
    .await;
    let s = status(&fake, &malformed);
    assert_eq!(ready(&s)["reason"], "InvalidSpec");
    assert_eq!(ready(&s)["status"], "False");
    assert!(ready(&s)["message"].as_str().unwrap().contains("s390x"), "{s}");
    assert!(reasons(&fake, "MultiArchBuild", "malformed").contains(&"InvalidSpec".to_string()));

    let (code, text) = http_get(&base, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "multiarch_builds{phase=\"Succeeded\"} 1",
        // The unreadable build did not fail: it is reported, not counted in a phase.
        "multiarch_builds{phase=\"Failed\"} 0",
        "multiarch_aws_calls_total{service=\"Batch\",operation=\"SubmitJob\",outcome=\"success\"} 2",
        "multiarch_leader 1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    for name in [
        "multiarch_reconciles_total{result=\"success\"}",
        "multiarch_reconcile_duration_seconds_count",
        "multiarch_poller_lag_seconds",
        "multiarch_aws_calls_total{service=\"Batch\",operation=\"DescribeJobs\",outcome=\"success\"}",
    ] {
        assert!(text.contains(name), "no {name} in\n{text}");
    }

    replica.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), replica.task)
        .await
        .expect("stops within 20 s")
        .unwrap()
        .unwrap();
    server.await.unwrap().unwrap();
    let lease = leader_lease(&fake);
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "the Lease is released: {lease}"
    );
}

// ---------------------------------------------------------------------------------------------

type Scenario = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What kstatus (Flux's health checks, kpt, cli-utils) concludes about a custom resource, as its
/// README documents the generic rules: a status for an older generation is InProgress; a
/// `Reconciling` condition that is True is InProgress; a `Stalled` one that is True is Failed;
/// otherwise Current.
fn kstatus(object: &Value) -> &'static str {
    if !object["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating";
    }
    let observed = object["status"]["observedGeneration"].as_i64();
    if observed.is_some() && observed != object["metadata"]["generation"].as_i64() {
        return "InProgress";
    }
    for condition in object["status"]["conditions"].as_array().into_iter().flatten() {
        match (condition["type"].as_str(), condition["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => return "InProgress",
            (Some("Stalled"), Some("True")) => return "Failed",
            _ => {}
        }
    }
    "Current"
}

/// Whether `kubectl wait --for=condition=TYPE=VALUE` returns: a condition of that type (case
/// insensitive) with that status, and, when the condition names its observedGeneration, the
/// object's current generation.
fn kubectl_wait(object: &Value, type_: &str, value: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(type_))
                && c["status"].as_str().is_some_and(|s| s.eq_ignore_ascii_case(value))
                && (c["observedGeneration"].is_null() || c["observedGeneration"] == object["metadata"]["generation"])
        })
}

/// A Lua interpreter, Debian's lua5.4 or lua5.3, installed by scripts/install-deps.sh when missing.
fn lua() -> &'static str {
    static LUA: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    LUA.get_or_init(|| {
        let found = || {
            ["lua5.4", "lua5.3"].into_iter().find(|lua| {
                std::process::Command::new(lua)
                    .arg("-v")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
        };
        if let Some(lua) = found() {
            return lua;
        }
        let installed = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps.sh"))
            .status()
            .expect("scripts/install-deps.sh runs");
        assert!(installed.success(), "scripts/install-deps.sh failed");
        found().expect("lua5.4 after scripts/install-deps.sh")
    })
}

/// `value` as a Lua table constructor, as Argo CD hands the object to a health script (JSON
/// null fields are absent).
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{k:?}] = {}", lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What Argo CD concludes: the chart's health check (charts/multiarch-operator/docs/argocd-health.lua)
/// run by a real Lua interpreter on the object; (status, message).
fn argocd_health(object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/multiarch-operator/docs/argocd-health.lua"
    ))
    .unwrap();
    let program = format!(
        "local obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, '\\n', hs.message or '')",
        lua_value(object)
    );
    let output = std::process::Command::new(lua())
        .arg("-e")
        .arg(program)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lua: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// Through a build's life (waiting, running, a spec change not seen yet, succeeded, failed,
/// cancelled) the conditions tell kstatus, Argo CD's health check and `kubectl wait` the same
/// story as the phase.
async fn conditions_tell_kstatus_argocd_and_kubectl_wait_the_same_story(env: Arc<Env>) {
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = env.context(&fake, Arc::clone(&metrics));
    let mut seen: Vec<(&str, Value)> = Vec::new();

    let waiting = create_build(
        &fake,
        dependent_build("tools", "waiting", "BASE", "not-yet", &env.registry.repo("waiting")),
    );
    reconcile_now(&fake, &ctx, &waiting).await;
    reconcile_now(&fake, &ctx, &waiting).await;
    seen.push(("waiting", fake.get(&waiting).unwrap()));

    let key = create_build(&fake, good_build("tools", "lives", &env.registry.repo("lives")));
    reconcile_now(&fake, &ctx, &key).await;
    reconcile_now(&fake, &ctx, &key).await;
    seen.push(("running", fake.get(&key).unwrap()));
    env.builder.play().await;
    ctx.poller().sweep().await;
    reconcile_now(&fake, &ctx, &key).await;
    seen.push(("succeeded", fake.get(&key).unwrap()));

    let cancelled = create_build(&fake, good_build("tools", "stopped", "registry.invalid/stopped"));
    reconcile_now(&fake, &ctx, &cancelled).await;
    reconcile_now(&fake, &ctx, &cancelled).await;
    fake.edit(&cancelled, |o| o["spec"]["cancel"] = true.into());
    seen.push(("changed, not seen yet", fake.get(&cancelled).unwrap()));
    reconcile_now(&fake, &ctx, &cancelled).await;
    seen.push(("cancelled", fake.get(&cancelled).unwrap()));

    // Refused before anything runs: a registry that is not allowed.
    let failed = create_build(&fake, good_build("tools", "refused", "registry.example.org/app"));
    reconcile_now(&fake, &ctx, &failed).await;
    reconcile_now(&fake, &ctx, &failed).await;
    seen.push(("failed", fake.get(&failed).unwrap()));

    // (phase, kstatus, Argo CD, wait Succeeded, wait Succeeded=False)
    let want = [
        ("waiting", "Waiting", "InProgress", "Progressing", false, false),
        ("running", "Building", "InProgress", "Progressing", false, false),
        ("succeeded", "Succeeded", "Current", "Healthy", true, false),
        (
            "changed, not seen yet",
            "Building",
            "InProgress",
            "Progressing",
            false,
            false,
        ),
        ("cancelled", "Cancelled", "Failed", "Degraded", false, true),
        ("failed", "Failed", "Failed", "Degraded", false, true),
    ];
    let mut got = Vec::new();
    for (stage, object) in &seen {
        let (health, message) = argocd_health(object);
        if health != "Progressing" || object["status"]["observedGeneration"] == object["metadata"]["generation"] {
            let reason = ready(&object["status"])["reason"].as_str().unwrap();
            assert!(
                message.starts_with(reason),
                "{stage}: the Argo CD message {message:?} gives the reason {reason}"
            );
        }
        got.push((
            *stage,
            object["status"]["phase"].as_str().unwrap_or_default(),
            kstatus(object),
            health,
            kubectl_wait(object, "Succeeded", "True"),
            kubectl_wait(object, "succeeded", "False"),
        ));
    }
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c, d, e, f)| (*a, *b, *c, d.to_string(), *e, *f))
        .collect();
    assert_eq!(got, want);

    // The argocd-cm patch carries the very script tested here.
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/multiarch-operator/docs/");
    let patch: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{docs}argocd-cm-patch.yaml")).unwrap()).unwrap();
    assert_eq!(
        patch["data"]["resource.customizations.health.multiarch.dev_MultiArchBuild"].as_str(),
        Some(
            std::fs::read_to_string(format!("{docs}argocd-health.lua"))
                .unwrap()
                .as_str()
        ),
        "argocd-cm-patch.yaml holds argocd-health.lua verbatim"
    );

    // Argo CD before the controller wrote any status.
    let fresh = good_build("tools", "fresh", "registry.invalid/fresh");
    assert_eq!(argocd_health(&fresh).0, "Progressing");
    // What the alerts read: each end counted once by phase and reason, durations, queue times,
    // and the build still waiting.
    for (labels, want) in [
        ("phase=\"Succeeded\",reason=\"Succeeded\"", 1.0),
        ("phase=\"Cancelled\",reason=\"Cancelled\"", 1.0),
        ("phase=\"Failed\",reason=\"RegistryNotAllowed\"", 1.0),
    ] {
        assert_eq!(
            metric(&metrics, &format!("multiarch_builds_finished_total{{{labels}}}")),
            want,
            "{labels}"
        );
    }
    assert_eq!(
        metric(&metrics, "multiarch_build_duration_seconds_count{phase=\"Succeeded\"}"),
        1.0
    );
    assert!(
        metric(&metrics, "multiarch_build_queue_seconds_count") >= 2.0,
        "one per platform job that started"
    );
    assert_eq!(
        metric(&metrics, "multiarch_builds_waiting "),
        1.0,
        "the build waiting on another"
    );
}

/// A finished build whose gating is done costs one read on resync: no status write, no ConfigMap
/// write, no Job list. Once its ttlSecondsAfterFinished has passed since it finished (and not
/// before), the controller deletes it, and the finalizer terminates nothing (nothing is live); a
/// build without a TTL is kept.
async fn a_finished_build_costs_one_read_and_goes_after_its_ttl(env: Arc<Env>) {
    let fake = env.fake();
    let metrics = env.metrics();
    let ctx = env.context(&fake, Arc::clone(&metrics));
    fake.create("batch", "jobs", job_object("retain", "after-kept", Some("kept"), true));
    let key = create_build(&fake, good_build("retain", "kept", &env.registry.repo("kept")));
    build_to_success(&env, &fake, &ctx, &key).await;
    assert_eq!(
        fake.get(&Key::job("retain", "after-kept")).unwrap()["spec"]["suspend"],
        false
    );

    let before = fake.requests().len();
    for _ in 0..3 {
        reconcile_now(&fake, &ctx, &key).await;
    }
    let resync: Vec<_> = fake.requests()[before..]
        .iter()
        .map(|((_, r, v), n)| format!("{v} {r} {n}"))
        .collect();
    assert_eq!(
        resync,
        vec!["get multiarchbuilds kept"; 3],
        "a finished build's resync only reads it"
    );

    // A waiting Job that appears later is still released (the Job watch says so).
    fake.create("batch", "jobs", job_object("retain", "later", Some("kept"), true));
    let signals = ctx_job_signal(&ctx, "retain/kept");
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(
        fake.get(&Key::job("retain", "later")).unwrap()["spec"]["suspend"],
        true,
        "no signal, no look"
    );
    signals();
    reconcile_now(&fake, &ctx, &key).await;
    assert_eq!(
        fake.get(&Key::job("retain", "later")).unwrap()["spec"]["suspend"],
        false
    );

    // A TTL, set after it finished (the field may change): deleted once it passed, not before.
    let terminated = aws_calls(&metrics, "TerminateJob");
    fake.edit(&key, |o| o["spec"]["ttlSecondsAfterFinished"] = 2.into());
    let finished: k8s_openapi::jiff::Timestamp =
        status(&fake, &key)["completionTime"].as_str().unwrap().parse().unwrap();
    let expires = finished + k8s_openapi::jiff::SignedDuration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        reconcile_now(&fake, &ctx, &key).await;
        let deleting = fake
            .get(&key)
            .is_none_or(|o| o["metadata"]["deletionTimestamp"].is_string());
        if deleting {
            assert!(
                k8s_openapi::jiff::Timestamp::now() >= expires,
                "deleted before its TTL passed"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not deleted after its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reasons(&fake, "MultiArchBuild", "kept").contains(&"Expired".to_string()));
    if fake.get(&key).is_some() {
        reconcile_now(&fake, &ctx, &key).await;
    }
    assert!(fake.get(&key).is_none(), "the finalizer let it go");
    assert_eq!(
        aws_calls(&metrics, "TerminateJob"),
        terminated,
        "nothing live to terminate"
    );

    // The controller's default applies to builds without their own TTL; the build's own wins.
    let config = ReconcileConfig {
        default_ttl_seconds_after_finished: Some(3600),
        ..env.config()
    };
    let ctx = context_on(&fake, &env.aws, env.metrics(), config);
    let mut cancelled = good_build("retain", "own-ttl", "registry.invalid/own-ttl");
    cancelled["spec"]["ttlSecondsAfterFinished"] = 0.into();
    cancelled["spec"]["cancel"] = true.into();
    let own = create_build(&fake, cancelled);
    let mut cancelled = good_build("retain", "default-ttl", "registry.invalid/default-ttl");
    cancelled["spec"]["cancel"] = true.into();
    let default = create_build(&fake, cancelled);
    for _ in 0..3 {
        reconcile_now(&fake, &ctx, &own).await;
        reconcile_now(&fake, &ctx, &default).await;
    }
    assert!(
        fake.get(&own).is_none(),
        "ttlSecondsAfterFinished 0: deleted as soon as it finished"
    );
    assert_eq!(
        status(&fake, &default)["phase"],
        "Cancelled",
        "kept for the default hour"
    );
}

/// Counts a change of a Job waiting on `key` as the controller's Job watch would.
fn ctx_job_signal(ctx: &Arc<Context>, key: &str) -> impl Fn() {
    let ctx = Arc::clone(ctx);
    let key = key.to_string();
    move || ctx.job_changed(&key)
}

/// `/healthz` is 200 while idle however long, 503 once a reconcile is pending and none finished
/// for longer than the bound (here: the API server takes requests and never answers), and 200
/// again as soon as one finishes (here: the stuck one is cancelled, as on losing the Lease).
async fn healthz_fails_while_pending_reconciles_make_no_progress(env: Arc<Env>) {
    // An API server that takes every request and never answers.
    let silent = axum::Router::new().fallback(std::future::pending::<&'static str>);
    let client = kube::Client::new(silent, "default");
    let metrics = env.metrics();
    let ctx = Arc::new(Context::from_aws(
        client,
        &env.aws,
        Duration::from_secs(3600),
        Arc::clone(&metrics),
        env.config(),
        "stuck-replica",
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let health = Arc::new(Health::with_stall_bound(Duration::from_millis(800)));
    let server = tokio::spawn(multiarch_operator::controller::http::serve(
        listener,
        Arc::clone(&metrics),
        health,
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(http_get(&base, "/healthz").await.0, 200, "idle is healthy");

    let mut object = good_build("sims", "stuck", "registry.invalid/stuck");
    object["metadata"]["uid"] = "stuck-uid".into();
    let guard: DeserializeGuard<MultiArchBuild> = serde_json::from_value(object).unwrap();
    let stuck = tokio::spawn(reconcile(Arc::new(guard), Arc::clone(&ctx)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(&base, "/healthz").await.0, 200, "pending, within the bound");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (code, body) = http_get(&base, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("none finished"), "{body}");

    stuck.abort();
    let _ = stuck.await;
    assert_eq!(http_get(&base, "/healthz").await.0, 200, "healthy again once it ended");
    server.abort();
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

/// Every (apiGroup, resource, verb) of config/rbac/expected-rules.yaml.
fn expected_permissions() -> BTreeSet<Permission> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rbac/expected-rules.yaml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut permissions = BTreeSet::new();
    for rule in rules["rules"].as_sequence().unwrap() {
        for verb in rule["verbs"].as_sequence().unwrap() {
            permissions.insert((
                rule["apiGroup"].as_str().unwrap().to_string(),
                rule["resource"].as_str().unwrap().to_string(),
                verb.as_str().unwrap().to_string(),
            ));
        }
    }
    permissions
}

/// Permissions the API server checks without a request of ours: setting blockOwnerDeletion on the
/// ConfigMap's owner reference needs update on the owner's finalizers (admission, not a call).
fn admission_only() -> BTreeSet<Permission> {
    BTreeSet::from([(
        "multiarch.dev".into(),
        "multiarchbuilds/finalizers".into(),
        "update".into(),
    )])
}

fn check_rbac(seen: &BTreeSet<Permission>) -> Result<String, String> {
    let expected = expected_permissions();
    let outside: Vec<_> = seen.difference(&expected).collect();
    let unused: Vec<_> = expected
        .difference(seen)
        .filter(|p| !admission_only().contains(*p))
        .collect();
    if !outside.is_empty() || !unused.is_empty() {
        return Err(format!(
            "calls outside config/rbac/expected-rules.yaml: {outside:?}; rules never used: {unused:?}"
        ));
    }
    Ok(format!("{} permissions used, all granted, every rule used", seen.len()))
}

/// Every action of config/aws/controller-actions.txt.
fn expected_aws_actions() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/aws/controller-actions.txt"
    ))
    .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The IAM action each call counted in `metrics` needs: AWS SDK calls by service and operation,
/// and registry requests as ECR authorizes them (ECR's distribution API is the target registry).
fn iam_actions(metrics: &Metrics) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for (labels, _) in samples(metrics, "multiarch_aws_calls_total") {
        let prefix = match labels["service"].as_str() {
            "Batch" => "batch",
            "CloudWatch Logs" => "logs",
            "ECR" => "ecr",
            "KMS" => "kms",
            other => other,
        };
        actions.insert(format!("{prefix}:{}", labels["operation"]));
    }
    for (labels, _) in samples(metrics, "multiarch_registry_requests_total") {
        let action = match (labels["method"].as_str(), labels["object"].as_str()) {
            ("GET" | "HEAD", "manifest") => "ecr:BatchGetImage".to_string(),
            ("GET", "blob") => "ecr:GetDownloadUrlForLayer".to_string(),
            ("HEAD", "blob") => "ecr:BatchCheckLayerAvailability".to_string(),
            ("PUT", "manifest") => "ecr:PutImage".to_string(),
            ("POST", "upload") => "ecr:InitiateLayerUpload".to_string(),
            // One monolithic PUT uploads the part and completes the upload.
            ("PUT", "upload") => {
                actions.insert("ecr:UploadLayerPart".to_string());
                "ecr:CompleteLayerUpload".to_string()
            }
            (method, object) => format!("(no known ECR action for {method} {object})"),
        };
        actions.insert(action);
    }
    actions
}

/// Actions IAM also checks on a call: SubmitJob with `tags` needs batch:TagResource on the new job.
fn implied_actions(called: &BTreeSet<String>) -> BTreeSet<String> {
    let mut object = good_build("sims", "tagged", "registry.invalid/tagged");
    object["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000".into();
    let build: MultiArchBuild = serde_json::from_value(object).unwrap();
    let reference = BuildRef::of(&build).unwrap();
    let request = submit_request(&reference, &build.spec, Platform::LinuxAmd64, JOB_DEFINITION).unwrap();
    let mut implied = BTreeSet::new();
    if called.contains("batch:SubmitJob") && !request.tags.is_empty() {
        implied.insert("batch:TagResource".to_string());
    }
    implied
}

/// What `--signing-key awskms:///…` needs on the key, besides controller-actions.txt: the template
/// grants exactly these, on that key only, behind its SigningKeyArn / CreateSigningKey parameters
/// (`install_check.py iam` holds the template to them).
const SIGNING_KEY_ACTIONS: [&str; 2] = ["kms:GetPublicKey", "kms:Sign"];

fn check_aws_actions(called: &BTreeSet<String>) -> Result<String, String> {
    let expected = expected_aws_actions();
    let (signing, called): (BTreeSet<String>, BTreeSet<String>) =
        called.iter().cloned().partition(|a| a.starts_with("kms:"));
    if signing != SIGNING_KEY_ACTIONS.map(String::from).into() {
        return Err(format!(
            "KMS actions needed: {signing:?}; the signing key's grant is {SIGNING_KEY_ACTIONS:?}"
        ));
    }
    let needed: BTreeSet<String> = called.union(&implied_actions(&called)).cloned().collect();
    let outside: Vec<_> = needed.difference(&expected).collect();
    let unused: Vec<_> = expected.difference(&needed).collect();
    if !outside.is_empty() || !unused.is_empty() {
        return Err(format!(
            "actions needed but not in config/aws/controller-actions.txt: {outside:?}; listed but never needed: {unused:?}"
        ));
    }
    Ok(format!(
        "{} actions needed, all listed, every one needed; and {SIGNING_KEY_ACTIONS:?} on the signing key",
        needed.len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenarios = scenarios![
        status_is_written_once_per_change_with_observed_generation,
        the_finalizer_terminates_live_jobs_then_lets_the_build_go,
        an_unreachable_aws_never_blocks_deletion_past_the_grace_period,
        gating_releases_exactly_the_waiting_jobs_and_only_after_success,
        a_second_replica_without_the_lease_does_nothing,
        a_leader_that_cannot_renew_its_lease_stops_within_the_lease_duration,
        a_restart_between_submit_and_the_status_write_submits_nothing_twice,
        a_signed_build_names_its_image_only_once_signature_and_provenance_verify,
        a_pem_key_signs_where_there_is_no_kms,
        a_kms_key_the_role_may_not_use_holds_the_image_until_it_may,
        a_failed_job_fails_the_build_with_its_log_tail,
        an_ecr_repository_is_reached_with_one_cached_token,
        the_controller_waits_for_the_crd_then_builds_and_releases,
        an_unreadable_build_keeps_its_record,
        a_stale_status_write_loses_to_the_newer_one,
        a_registry_that_is_not_allowed_is_never_contacted,
        a_namespace_policy_refuses_what_it_does_not_allow,
        a_job_waiting_on_two_builds_is_released_only_after_both_succeed,
        dependency_cycles_fail_every_build_in_them_and_submit_nothing,
        cancelling_a_dependency_fails_the_builds_waiting_on_it,
        a_chain_applied_in_reverse_order_builds_on_pinned_digests,
        conditions_tell_kstatus_argocd_and_kubectl_wait_the_same_story,
        a_finished_build_costs_one_read_and_goes_after_its_ttl,
        healthz_fails_while_pending_reconciles_make_no_progress,
    ];
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &scenarios {
            println!("{name}: test");
        }
        println!("rbac_matches_expected_rules: test");
        println!("aws_actions_match_controller_actions: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let whole_suite = filters.is_empty();
    if selected.is_empty() {
        println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed");
        return ExitCode::SUCCESS;
    }
    // RUST_LOG=debug shows the controller's logs (MAB_LOG_FORMAT=json: as JSON lines).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let logs = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer();
        if std::env::var("MAB_LOG_FORMAT").is_ok_and(|f| f == "json") {
            logs.json().init();
        } else {
            logs.init();
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let Some(registry) = Registry::start() else {
            println!("SKIPPED: the controller tests need docker-registry");
            return ExitCode::SUCCESS;
        };
        let moto = Moto::start().await;
        let aws = moto.sdk_config().await;
        moto.create_batch_environment(&aws_sdk_batch::Client::new(&aws)).await;
        let pusher = Pusher::new(&registry.host);
        let builder = Builder {
            aws: aws.clone(),
            pusher: pusher.clone(),
            registry_host: registry.host.clone(),
            played: tokio::sync::Mutex::default(),
        };
        let env = Arc::new(Env {
            _moto: moto,
            aws,
            registry,
            pusher,
            fakes: Mutex::default(),
            metrics: Mutex::default(),
            builder,
        });
        let playing = Arc::clone(&env);
        tokio::spawn(async move {
            loop {
                playing.builder.play().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        println!("\nrunning {} tests", selected.len() + 2 * usize::from(whole_suite));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, scenario) in selected {
            let env = Arc::clone(&env);
            tasks.spawn(async move {
                let start = Instant::now();
                let outcome = tokio::spawn(tokio::time::timeout(Duration::from_secs(120), scenario(env))).await;
                let result = match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("timed out after 120 s".to_string()),
                    Err(e) => Err(format!("panicked: {e}")),
                };
                (name, result, start.elapsed())
            });
        }
        let mut failed = Vec::new();
        let mut passed = 0;
        while let Some(done) = tasks.join_next().await {
            let (name, result, took) = done.unwrap();
            match result {
                Ok(()) => {
                    passed += 1;
                    println!("test {name} ... ok ({:.1}s)", took.as_secs_f64());
                }
                Err(why) => {
                    println!("test {name} ... FAILED ({why})");
                    failed.push(name.to_string());
                }
            }
        }
        if whole_suite {
            let seen: BTreeSet<Permission> = env.fakes.lock().unwrap().iter().flat_map(FakeKube::seen).collect();
            let called: BTreeSet<String> = env
                .metrics
                .lock()
                .unwrap()
                .iter()
                .flat_map(|m| iam_actions(m))
                .collect();
            let checks = [
                ("rbac_matches_expected_rules", check_rbac(&seen)),
                ("aws_actions_match_controller_actions", check_aws_actions(&called)),
            ];
            for (name, result) in checks {
                match result {
                    _ if !failed.is_empty() => println!("test {name} ... skipped (a scenario failed)"),
                    Ok(summary) => {
                        passed += 1;
                        println!("test {name} ... ok ({summary})");
                    }
                    Err(why) => {
                        println!("test {name} ... FAILED\n  {why}");
                        failed.push(name.into());
                    }
                }
            }
        }
        let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
        println!(
            "\ntest result: {verdict}. {passed} passed; {} failed; finished in {:.2}s\n",
            failed.len(),
            started.elapsed().as_secs_f64()
        );
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
