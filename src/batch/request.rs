//! What one platform's SubmitJob sends, as plain data: the deterministic job name, the
//! environment contract with `builder/build.sh`, tags, retry strategy and timeout.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::json;

use crate::api::{MultiArchBuild, MultiArchBuildSpec, Platform};

use super::BatchError;

/// The longest job name Batch accepts.
pub const MAX_JOB_NAME_LEN: usize = 128;
/// The largest SubmitJob request Batch accepts (30 KiB).
pub const MAX_SUBMIT_REQUEST_BYTES: usize = 30 * 1024;
/// Tag: the MultiArchBuild's `metadata.uid`.
pub const TAG_BUILD_UID: &str = "multiarch.dev/build-uid";
/// Tag: `<namespace>/<name>` of the MultiArchBuild.
pub const TAG_BUILD: &str = "multiarch.dev/build";
/// Tag: the platform the job builds, e.g. `linux/arm64`.
pub const TAG_PLATFORM: &str = "multiarch.dev/platform";
/// Attempts whose status reason matches this glob are retried: the host went away (Spot reclaim,
/// instance failure: `Host EC2 (instance i-...) terminated.`).
pub const RETRY_ON_STATUS_REASON: &str = "Host EC2*";

/// Environment variable names of the contract with `builder/build.sh`.
pub mod env {
    pub const GIT_URL: &str = "MAB_GIT_URL";
    pub const GIT_REVISION: &str = "MAB_GIT_REVISION";
    pub const GIT_CREDENTIALS_SECRET_ARN: &str = "MAB_GIT_CREDENTIALS_SECRET_ARN";
    pub const CONTEXT_DIR: &str = "MAB_CONTEXT_DIR";
    pub const DOCKERFILE: &str = "MAB_DOCKERFILE";
    /// The Dockerfile stage to build (`docker build --target`): the platform's `target`, else
    /// `spec.source.target`; set only when one of them is.
    pub const TARGET: &str = "MAB_TARGET";
    pub const BUILD_ARG_NAMES: &str = "MAB_BUILD_ARG_NAMES";
    /// Prefix of one variable per build arg: `MAB_BUILD_ARG_<NAME>`.
    pub const BUILD_ARG_PREFIX: &str = "MAB_BUILD_ARG_";
    pub const IMAGE: &str = "MAB_IMAGE";
    pub const PLATFORM: &str = "MAB_PLATFORM";
    pub const REGISTRY_AUTH: &str = "MAB_REGISTRY_AUTH";
    /// The MultiArchBuild's uid, labelled on the image.
    pub const BUILD_UID: &str = "MAB_BUILD_UID";
    /// The hash of the build's inputs, labelled on the image (reuse compares it).
    pub const INPUT_HASH: &str = "MAB_INPUT_HASH";
    /// `max`, `min` or `off` (`spec.output.cache.mode`), always set.
    pub const CACHE_MODE: &str = "MAB_CACHE_MODE";
    /// `<cache repository>:buildcache-<arch>[-<variant>]`, the layer cache this platform's build
    /// reads and writes; set only when the cache mode is not `off`.
    pub const CACHE_IMAGE: &str = "MAB_CACHE_IMAGE";
}

/// The build a job belongs to. Also the key under which the [`JobPoller`](super::JobPoller)
/// reports job changes, so a controller can map a change back to the object to reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BuildRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl BuildRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, uid: impl Into<String>) -> Self {
        BuildRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// The reference of a MultiArchBuild read from the API server (namespace `default` when the
    /// object has none); `None` when it has no name or no uid yet.
    pub fn of(build: &MultiArchBuild) -> Option<BuildRef> {
        let meta = &build.metadata;
        Some(BuildRef {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
        })
    }
}

impl fmt::Display for BuildRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Batch job name of one platform of a build: `mab-<ns>-<name>-<tag_suffix>-<uid first 8>`.
///
/// Deterministic, valid for Batch (at most 128 characters, the first alphanumeric, then letters,
/// digits, `-` and `_`) and unique per (build uid, platform) as long as uids differ in their first
/// 8 alphanumeric characters. Characters Batch does not allow (the `.` of a Kubernetes name) become
/// `-`; when the name would be too long, the namespace and name are shortened, never the platform
/// suffix or the uid.
pub fn job_name(build: &BuildRef, platform: Platform) -> String {
    const PREFIX: &str = "mab-";
    let suffix = platform.tag_suffix();
    let uid: String = build.uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let namespace = sanitize(&build.namespace);
    let name = sanitize(&build.name);

    // PREFIX ns "-" name "-" suffix ["-" uid]
    let fixed = PREFIX.len() + 1 + 1 + suffix.len() + if uid.is_empty() { 0 } else { 1 + uid.len() };
    let budget = MAX_JOB_NAME_LEN - fixed;
    let (ns_len, name_len) = split_budget(namespace.len(), name.len(), budget);

    let mut job = String::with_capacity(MAX_JOB_NAME_LEN);
    job.push_str(PREFIX);
    job.push_str(&namespace[..ns_len]);
    job.push('-');
    job.push_str(&name[..name_len]);
    job.push('-');
    job.push_str(suffix);
    if !uid.is_empty() {
        job.push('-');
        job.push_str(&uid);
    }
    job
}

/// Whether `name` is a valid Batch job name.
pub fn is_valid_job_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_JOB_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Keeps `[A-Za-z0-9_-]`, replaces every other character by `-`; the result is ASCII.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Shares `budget` characters between two strings of lengths `a` and `b`: both whole when they
/// fit, else the shorter one whole if it takes at most half, else half each.
fn split_budget(a: usize, b: usize, budget: usize) -> (usize, usize) {
    if a + b <= budget {
        return (a, b);
    }
    let half = budget / 2;
    if a <= half {
        (a, budget - a)
    } else if b <= budget - half {
        (budget - b, b)
    } else {
        (half, budget - half)
    }
}

/// Everything SubmitJob sends for one platform, as plain data. Printed by `build --dry-run`
/// (serialises with camelCase keys) and sent by
/// [`BatchExecutor::find_or_submit`](super::BatchExecutor::find_or_submit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitRequest {
    pub job_name: String,
    pub job_queue: String,
    pub job_definition: String,
    /// `containerOverrides.environment`, in order.
    #[serde(serialize_with = "serialize_environment")]
    pub environment: Vec<(String, String)>,
    pub tags: BTreeMap<String, String>,
    /// `retryStrategy.attempts`.
    pub attempts: i32,
    /// `timeout.attemptDurationSeconds`.
    pub attempt_duration_seconds: i64,
}

fn serialize_environment<S: serde::Serializer>(env: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(env.len()))?;
    for (name, value) in env {
        seq.serialize_element(&json!({ "name": name, "value": value }))?;
    }
    seq.end()
}

impl SubmitRequest {
    /// The SubmitJob request body exactly as the AWS API receives it (REST-JSON), e.g. to print.
    pub fn to_submit_job_json(&self) -> serde_json::Value {
        let environment: Vec<_> = self
            .environment
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        json!({
            "jobName": self.job_name,
            "jobQueue": self.job_queue,
            "jobDefinition": self.job_definition,
            "containerOverrides": { "environment": environment },
            "retryStrategy": {
                "attempts": self.attempts,
                "evaluateOnExit": [
                    { "onStatusReason": RETRY_ON_STATUS_REASON, "action": "RETRY" },
                    { "onReason": "*", "action": "EXIT" },
                ],
            },
            "timeout": { "attemptDurationSeconds": self.attempt_duration_seconds },
            "tags": self.tags,
        })
    }

    /// Size in bytes of the SubmitJob request body.
    pub fn wire_size(&self) -> usize {
        serde_json::to_vec(&self.to_submit_job_json()).map_or(usize::MAX, |body| body.len())
    }

    /// Fails with [`BatchError::RequestTooLarge`] when Batch would refuse the request for its size.
    pub fn check_size(&self) -> Result<(), BatchError> {
        let size = self.wire_size();
        if size > MAX_SUBMIT_REQUEST_BYTES {
            return Err(BatchError::RequestTooLarge {
                job_name: self.job_name.clone(),
                size,
                limit: MAX_SUBMIT_REQUEST_BYTES,
            });
        }
        Ok(())
    }
}

/// The SubmitJob request for one platform of a build.
///
/// Fails when `platform` is not in `spec.platforms` or the request would exceed 30 KiB.
/// Every user value goes into an environment variable (never into a command), see [`env`](mod@env).
pub fn submit_request(
    build: &BuildRef,
    spec: &MultiArchBuildSpec,
    platform: Platform,
    default_job_definition: &str,
) -> Result<SubmitRequest, BatchError> {
    let target = spec
        .platforms
        .iter()
        .find(|t| t.platform == platform)
        .ok_or(BatchError::PlatformNotInSpec { platform })?;

    let git = &spec.source.git;
    // The platform's effective build args: the build's, with the platform's own over them.
    let build_args = spec.build_args_of(platform);
    let mut environment = vec![
        (env::GIT_URL.to_owned(), git.url.clone()),
        (env::GIT_REVISION.to_owned(), git.revision.clone()),
    ];
    if let Some(arn) = &git.credentials_secret_arn {
        environment.push((env::GIT_CREDENTIALS_SECRET_ARN.to_owned(), arn.clone()));
    }
    environment.extend([
        (env::CONTEXT_DIR.to_owned(), spec.source.context_dir.clone()),
        (env::DOCKERFILE.to_owned(), spec.source.dockerfile.clone()),
    ]);
    if let Some(target) = spec.target_of(platform) {
        environment.push((env::TARGET.to_owned(), target.to_owned()));
    }
    environment.push((
        env::BUILD_ARG_NAMES.to_owned(),
        build_args
            .iter()
            .map(|arg| arg.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    ));
    for arg in build_args {
        let value = arg
            .value
            .clone()
            .filter(|_| arg.value_from.is_none())
            .ok_or_else(|| BatchError::UnresolvedBuildArg { name: arg.name.clone() })?;
        environment.push((format!("{}{}", env::BUILD_ARG_PREFIX, arg.name), value));
    }
    environment.extend([
        (env::IMAGE.to_owned(), spec.platform_image(platform)),
        (env::PLATFORM.to_owned(), platform.as_str().to_owned()),
        (
            env::REGISTRY_AUTH.to_owned(),
            registry_auth(&spec.output.repository).to_owned(),
        ),
        (env::BUILD_UID.to_owned(), build.uid.clone()),
        (env::INPUT_HASH.to_owned(), crate::provenance::inputs_hash(spec)),
        (env::CACHE_MODE.to_owned(), spec.output.cache.mode.as_str().to_owned()),
    ]);
    if let Some(cache_image) = spec.cache_image(platform) {
        environment.push((env::CACHE_IMAGE.to_owned(), cache_image));
    }

    let tags = BTreeMap::from([
        (TAG_BUILD_UID.to_owned(), build.uid.clone()),
        (TAG_BUILD.to_owned(), build.to_string()),
        (TAG_PLATFORM.to_owned(), platform.as_str().to_owned()),
    ]);

    let request = SubmitRequest {
        job_name: job_name(build, platform),
        job_queue: target.job_queue.clone(),
        job_definition: spec
            .job_definition
            .clone()
            .unwrap_or_else(|| default_job_definition.to_owned()),
        environment,
        tags,
        attempts: spec.retry.attempts,
        attempt_duration_seconds: spec.timeout_seconds,
    };
    request.check_size()?;
    Ok(request)
}

/// `ecr` when the repository's registry host is an Amazon ECR private registry
/// ([`is_ecr_host`](crate::registry::is_ecr_host), GovCloud included), else `none`.
pub fn registry_auth(repository: &str) -> &'static str {
    let host = repository.split('/').next().unwrap_or_default();
    if crate::registry::is_ecr_host(host) {
        "ecr"
    } else {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BuildArg;
    use proptest::prelude::*;

    fn spec(yaml: &str) -> MultiArchBuildSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn sample_spec() -> MultiArchBuildSpec {
        spec(
            r#"
source:
  git:
    url: https://github.com/example/app.git
    revision: 0123456789abcdef0123456789abcdef01234567
    credentialsSecretArn: arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:gh-pat-AbCdEf
  contextDir: app
  dockerfile: app/Dockerfile
buildArgs:
  - name: VERSION
    value: "1.2.3"
  - name: EMPTY
    value: ""
  - name: tricky
    value: "$(rm -rf /); `id` \"quoted\" 'single' \n newline"
output:
  repository: 123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli
  tag: v1
platforms:
  - platform: linux/amd64
    jobQueue: amd64-queue
  - platform: linux/arm64
    jobQueue: arn:aws-us-gov:batch:us-gov-west-1:123456789012:job-queue/arm64-queue
retry:
  attempts: 4
timeoutSeconds: 7200
"#,
        )
    }

    fn build() -> BuildRef {
        BuildRef::new("team-a", "vecoli.nightly", "3f2a9c1e-7b6d-4e0a-9f1b-2c3d4e5f6a7b")
    }

    #[test]
    fn job_name_is_readable_and_valid() {
        let name = job_name(&build(), Platform::LinuxArm64V8);
        assert_eq!(name, "mab-team-a-vecoli-nightly-arm64-v8-3f2a9c1e");
        assert!(is_valid_job_name(&name));
    }

    #[test]
    fn job_name_keeps_suffix_and_uid_when_truncating() {
        let long = BuildRef::new("n".repeat(63), "x".repeat(253), "abcdef0123456789");
        let name = job_name(&long, Platform::LinuxAmd64V4);
        assert_eq!(name.len(), MAX_JOB_NAME_LEN);
        assert!(name.ends_with("-amd64-v4-abcdef01"), "{name}");
        assert!(is_valid_job_name(&name));
        // A short namespace is kept whole; the long name gives way.
        let name = job_name(&BuildRef::new("ns", "y".repeat(253), "u1"), Platform::LinuxArm64);
        assert!(name.starts_with("mab-ns-yyy"), "{name}");
        assert_eq!(name.len(), MAX_JOB_NAME_LEN);
    }

    #[test]
    fn job_name_without_uid_is_still_valid() {
        let name = job_name(&BuildRef::new("ns", "n", ""), Platform::LinuxAmd64);
        assert_eq!(name, "mab-ns-n-amd64");
    }

    proptest! {
        #[test]
        fn job_names_are_valid_deterministic_and_bounded(
            namespace in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
            uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            odd in "\\PC{0,300}",
            p in 0..Platform::ALL.len(),
        ) {
            let platform = Platform::ALL[p];
            let build = BuildRef::new(namespace, name, uid);
            let a = job_name(&build, platform);
            prop_assert!(is_valid_job_name(&a), "{}", a);
            prop_assert_eq!(&a, &job_name(&build.clone(), platform));
            let suffix = format!("-{}-{}", platform.tag_suffix(), &build.uid[..8]);
            prop_assert!(a.ends_with(&suffix));
            // Any unicode in namespace/name/uid still gives a valid name.
            let weird = BuildRef::new(odd.clone(), odd.clone(), odd);
            let w = job_name(&weird, platform);
            prop_assert!(is_valid_job_name(&w), "{}", w);
        }

        #[test]
        fn job_names_are_unique_per_uid_and_platform(
            namespace in "[a-z0-9]{1,63}",
            name in "[a-z0-9.-]{1,253}",
            uid_a in "[0-9a-f]{8}",
            uid_b in "[0-9a-f]{8}",
            pa in 0..Platform::ALL.len(),
            pb in 0..Platform::ALL.len(),
        ) {
            let a = job_name(&BuildRef::new(&namespace, &name, format!("{uid_a}-x")), Platform::ALL[pa]);
            let b = job_name(&BuildRef::new(&namespace, &name, format!("{uid_b}-x")), Platform::ALL[pb]);
            prop_assert_eq!(a == b, uid_a == uid_b && pa == pb);
        }
    }

    #[test]
    fn submit_request_carries_the_environment_contract() {
        let spec = sample_spec();
        let req = submit_request(&build(), &spec, Platform::LinuxArm64, "default-def").unwrap();
        let env: Vec<(&str, &str)> = req.environment.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            vec![
                ("MAB_GIT_URL", "https://github.com/example/app.git"),
                ("MAB_GIT_REVISION", "0123456789abcdef0123456789abcdef01234567"),
                (
                    "MAB_GIT_CREDENTIALS_SECRET_ARN",
                    "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:gh-pat-AbCdEf"
                ),
                ("MAB_CONTEXT_DIR", "app"),
                ("MAB_DOCKERFILE", "app/Dockerfile"),
                ("MAB_BUILD_ARG_NAMES", "VERSION EMPTY tricky"),
                ("MAB_BUILD_ARG_VERSION", "1.2.3"),
                ("MAB_BUILD_ARG_EMPTY", ""),
                (
                    "MAB_BUILD_ARG_tricky",
                    "$(rm -rf /); `id` \"quoted\" 'single' \n newline"
                ),
                (
                    "MAB_IMAGE",
                    "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli:v1-arm64"
                ),
                ("MAB_PLATFORM", "linux/arm64"),
                ("MAB_REGISTRY_AUTH", "ecr"),
                ("MAB_BUILD_UID", "3f2a9c1e-7b6d-4e0a-9f1b-2c3d4e5f6a7b"),
                ("MAB_INPUT_HASH", crate::provenance::inputs_hash(&spec).as_str()),
                ("MAB_CACHE_MODE", "max"),
                (
                    "MAB_CACHE_IMAGE",
                    "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli:buildcache-arm64"
                ),
            ]
        );
        assert!(req.environment.iter().all(|(n, _)| !n.starts_with("AWS_BATCH")));
        assert_eq!(req.job_name, "mab-team-a-vecoli-nightly-arm64-3f2a9c1e");
        assert_eq!(
            req.job_queue,
            "arn:aws-us-gov:batch:us-gov-west-1:123456789012:job-queue/arm64-queue"
        );
        assert_eq!(req.job_definition, "default-def");
        assert_eq!(req.attempts, 4);
        assert_eq!(req.attempt_duration_seconds, 7200);
        assert_eq!(
            req.tags,
            BTreeMap::from([
                (
                    "multiarch.dev/build-uid".to_owned(),
                    "3f2a9c1e-7b6d-4e0a-9f1b-2c3d4e5f6a7b".to_owned()
                ),
                ("multiarch.dev/build".to_owned(), "team-a/vecoli.nightly".to_owned()),
                ("multiarch.dev/platform".to_owned(), "linux/arm64".to_owned()),
            ])
        );

        let body = req.to_submit_job_json();
        assert_eq!(
            body["retryStrategy"]["evaluateOnExit"],
            json!([
                { "onStatusReason": "Host EC2*", "action": "RETRY" },
                { "onReason": "*", "action": "EXIT" },
            ])
        );
        assert_eq!(body["timeout"]["attemptDurationSeconds"], 7200);
        assert_eq!(body["containerOverrides"]["environment"][0]["name"], "MAB_GIT_URL");
        assert!(body["containerOverrides"].get("command").is_none());
        // The printed form lists the environment as name/value objects.
        let printed = serde_json::to_value(&req).unwrap();
        assert_eq!(
            printed["environment"][10],
            json!({"name": "MAB_PLATFORM", "value": "linux/arm64"})
        );
        assert_eq!(printed["attemptDurationSeconds"], 7200);
    }

    #[test]
    fn submit_request_minimal_spec() {
        let mut spec = sample_spec();
        spec.source.git.credentials_secret_arn = None;
        spec.build_args = None;
        spec.job_definition = Some("builder:7".into());
        spec.output.repository = "registry.example.com:5000/team/app".into();
        let req = submit_request(&build(), &spec, Platform::LinuxAmd64, "default-def").unwrap();
        let names: Vec<&str> = req.environment.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "MAB_GIT_URL",
                "MAB_GIT_REVISION",
                "MAB_CONTEXT_DIR",
                "MAB_DOCKERFILE",
                "MAB_BUILD_ARG_NAMES",
                "MAB_IMAGE",
                "MAB_PLATFORM",
                "MAB_REGISTRY_AUTH",
                "MAB_BUILD_UID",
                "MAB_INPUT_HASH",
                "MAB_CACHE_MODE",
                "MAB_CACHE_IMAGE"
            ]
        );
        let get = |n: &str| req.environment.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("MAB_BUILD_ARG_NAMES"), Some(""));
        assert_eq!(get("MAB_REGISTRY_AUTH"), Some("none"));
        assert_eq!(get("MAB_IMAGE"), Some("registry.example.com:5000/team/app:v1-amd64"));
        assert_eq!(req.job_definition, "builder:7");
        assert_eq!(req.job_queue, "amd64-queue");
        assert_eq!(get("MAB_CACHE_MODE"), Some("max"));
        assert_eq!(
            get("MAB_CACHE_IMAGE"),
            Some("registry.example.com:5000/team/app:buildcache-amd64")
        );
    }

    #[test]
    fn the_cache_is_a_mode_and_one_image_per_platform_in_the_chosen_repository() {
        let env_of = |spec: &MultiArchBuildSpec, platform| {
            let req = submit_request(&build(), spec, platform, "d").unwrap();
            let get = |n: &str| req.environment.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            (get("MAB_CACHE_MODE"), get("MAB_CACHE_IMAGE"))
        };
        let mut spec = sample_spec();
        spec.platforms[1].platform = Platform::LinuxArm64V8;
        let uncached = spec.clone();
        spec.output.cache = crate::api::Cache {
            mode: crate::api::CacheMode::Min,
            repository: "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/cache/vecoli".into(),
        };
        // The per-platform suffix, variant included, as in the platform image `<tag>-arm64-v8`.
        assert_eq!(
            env_of(&spec, Platform::LinuxArm64V8),
            (
                Some("min".into()),
                Some("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/cache/vecoli:buildcache-arm64-v8".into())
            )
        );
        assert!(spec.platform_image(Platform::LinuxArm64V8).ends_with(":v1-arm64-v8"));

        // Off: the mode says so, and no cache image is sent at all.
        spec.output.cache.mode = crate::api::CacheMode::Off;
        assert_eq!(env_of(&spec, Platform::LinuxAmd64), (Some("off".into()), None));

        // The cache does not change what is built: the inputs hash ignores it.
        assert_eq!(
            crate::provenance::inputs_hash(&spec),
            crate::provenance::inputs_hash(&uncached)
        );
    }

    #[test]
    fn each_platform_gets_its_own_target_and_effective_build_args() {
        let env_of = |spec: &MultiArchBuildSpec, platform| {
            submit_request(&build(), spec, platform, "d")
                .unwrap()
                .environment
                .into_iter()
                .filter(|(n, _)| n == "MAB_TARGET" || n.starts_with("MAB_BUILD_ARG_"))
                .collect::<Vec<_>>()
        };
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        let mut spec = sample_spec();
        spec.build_args = Some(vec![
            BuildArg::value("VERSION", "1.2.3"),
            BuildArg::value("MODE", "run"),
        ]);
        spec.source.target = Some("runtime".into());
        spec.platforms[0].target = Some("submit".into());
        spec.platforms[0].build_args = Some(vec![
            BuildArg::value("WITH_NEXTFLOW", "1"),
            BuildArg::value("VERSION", "2.0"),
        ]);
        // amd64: its own target; VERSION replaced in place, WITH_NEXTFLOW added after the others.
        assert_eq!(
            env_of(&spec, Platform::LinuxAmd64),
            vec![
                pair("MAB_TARGET", "submit"),
                pair("MAB_BUILD_ARG_NAMES", "VERSION MODE WITH_NEXTFLOW"),
                pair("MAB_BUILD_ARG_VERSION", "2.0"),
                pair("MAB_BUILD_ARG_MODE", "run"),
                pair("MAB_BUILD_ARG_WITH_NEXTFLOW", "1"),
            ]
        );
        // arm64: the build's target and args.
        assert_eq!(
            env_of(&spec, Platform::LinuxArm64),
            vec![
                pair("MAB_TARGET", "runtime"),
                pair("MAB_BUILD_ARG_NAMES", "VERSION MODE"),
                pair("MAB_BUILD_ARG_VERSION", "1.2.3"),
                pair("MAB_BUILD_ARG_MODE", "run"),
            ]
        );
        // No target anywhere: no MAB_TARGET at all (the last stage).
        spec.source.target = None;
        spec.platforms[0].target = None;
        assert!(
            env_of(&spec, Platform::LinuxArm64)
                .iter()
                .all(|(n, _)| n != "MAB_TARGET")
        );
        // Both platforms carry the same inputs hash, which covers the per-platform args.
        let hash_of = |platform| {
            submit_request(&build(), &spec, platform, "d")
                .unwrap()
                .environment
                .into_iter()
                .find(|(n, _)| n == "MAB_INPUT_HASH")
                .unwrap()
                .1
        };
        assert_eq!(hash_of(Platform::LinuxAmd64), hash_of(Platform::LinuxArm64));
        assert_ne!(
            hash_of(Platform::LinuxAmd64),
            crate::provenance::inputs_hash(&sample_spec())
        );
    }

    #[test]
    fn submit_request_rejects_unknown_platform_and_oversized_requests() {
        let spec = sample_spec();
        let err = submit_request(&build(), &spec, Platform::LinuxAmd64V3, "d").unwrap_err();
        assert_eq!(err.label(), "PlatformNotInSpec");

        let mut big = sample_spec();
        big.build_args = Some(
            (0..32)
                .map(|i| BuildArg::value(format!("ARG_{i}_{}", "N".repeat(100)), "v".repeat(1024)))
                .collect(),
        );
        let err = submit_request(&build(), &big, Platform::LinuxAmd64, "d").unwrap_err();
        assert_eq!(err.label(), "SubmitRequestTooLarge");
        assert!(err.to_string().contains("30 KiB"), "{err}");
    }

    #[test]
    fn ecr_hosts_are_detected() {
        for host in [
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli",
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/vecoli",
            "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com/a/b/c",
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app",
            "123456789012.DKR.ECR.us-west-2.amazonaws.com/app",
            "123456789012.dkr-ecr.us-east-1.on.aws/app",
        ] {
            assert_eq!(registry_auth(host), "ecr", "{host}");
        }
        for host in [
            "public.ecr.aws/team/app",
            "docker.io/library/alpine",
            "localhost:5000/app",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com/app",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example/app",
            "evil.example/123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr..amazonaws.com/app",
            "x.123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
        ] {
            assert_eq!(registry_auth(host), "none", "{host}");
        }
    }
}
