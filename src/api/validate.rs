//! `validate()`: the CRD's rules again, in Rust, with messages that name the field, the bad value
//! and what is allowed. The patterns here are the very ones the CRD schema carries.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::LazyLock,
};

use regex::Regex;

use super::{CACHE_TAG_PREFIX, CacheMode, MultiArchBuildSpec, Platform};

/// Patterns shared by the CRD schema (`#[schemars(pattern(..))]`) and [`validate()`]. They use
/// only syntax that ECMA-262 (OpenAPI), RE2 (CEL) and the `regex` crate read alike.
pub mod patterns {
    /// OCI tag grammar, leaving room for the longest `-<arch>-<variant>` suffix.
    pub const TAG: &str = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,118}$";
    /// [`REPOSITORY`] without its anchors, so [`CACHE_REPOSITORY`] is the same grammar.
    macro_rules! repository {
        () => {
            r"(localhost|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+)(:[0-9]{1,5})?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+"
        };
    }
    /// `host[:port]/path`, lower-case path components as the distribution spec allows.
    pub const REPOSITORY: &str = concat!("^", repository!(), "$");
    /// [`REPOSITORY`], or empty (`spec.output.cache.repository`: empty means the output repository).
    pub const CACHE_REPOSITORY: &str = concat!("^(", repository!(), ")?$");
    /// https, ssh:// or scp-like ssh; no credentials, no spaces, no leading `-` in the path.
    pub const GIT_URL: &str = r"^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~][A-Za-z0-9._~/-]*|ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~][A-Za-z0-9._~/-]*|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~][A-Za-z0-9._~/-]*)$";
    /// A commit SHA, branch or tag; never starting with `-`, so it can never read as an option.
    pub const GIT_REVISION: &str = r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$";
    /// A relative path inside the repository (`..` segments are refused separately).
    pub const RELATIVE_PATH: &str = r"^[A-Za-z0-9._][A-Za-z0-9._/-]{0,254}$";
    /// A Batch job queue name or ARN.
    pub const JOB_QUEUE: &str =
        r"^([A-Za-z0-9_-]{1,128}|arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-queue/[A-Za-z0-9_-]{1,128})$";
    /// A Batch job definition name, `name:revision` or ARN.
    pub const JOB_DEFINITION: &str = r"^([A-Za-z0-9_-]{1,128}(:[1-9][0-9]{0,8})?|arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-definition/[A-Za-z0-9_-]{1,128}(:[1-9][0-9]{0,8})?)$";
    /// A Secrets Manager secret ARN in any partition.
    pub const SECRET_ARN: &str =
        r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$";
    /// A `file:///` URL, accepted only where local sources are allowed (the local stack).
    pub const LOCAL_GIT_URL: &str = r"^file:///[A-Za-z0-9._][A-Za-z0-9._/-]*$";
    /// A docker build-arg name.
    pub const BUILD_ARG_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$";
    /// A Kubernetes object name (DNS subdomain, RFC 1123), the length checked apart.
    pub const BUILD_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
    /// A Dockerfile stage name (`docker build --target`), as the builder checks it.
    pub const TARGET: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.output.tag`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Every problem found in a spec, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec(pub Vec<FieldError>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(FieldError::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

const MAX_PLATFORMS: usize = 8;
const MAX_BUILD_ARGS: usize = 32;
const MAX_BUILD_ARG_VALUE: usize = 1024;
const MAX_BUILD_NAME: usize = 253;
const MAX_ADDITIONAL_TAGS: usize = 16;
const TARGET_ALLOWED: &str = "a Dockerfile stage name: [A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters";
const TIMEOUT_RANGE: std::ops::RangeInclusive<i64> = 60..=604_800;
/// `spec.ttlSecondsAfterFinished`: up to 365 days.
const TTL_RANGE: std::ops::RangeInclusive<i64> = 0..=31_536_000;
const ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 1..=10;

// The patterns are constants and `every_pattern_compiles` proves each one compiles.
#[allow(clippy::expect_used)]
fn compiled(pattern: &'static str) -> Regex {
    Regex::new(pattern).expect("constant pattern compiles")
}

struct Patterns {
    tag: Regex,
    repository: Regex,
    git_url: Regex,
    local_git_url: Regex,
    git_revision: Regex,
    relative_path: Regex,
    job_queue: Regex,
    job_definition: Regex,
    secret_arn: Regex,
    build_arg_name: Regex,
    build_name: Regex,
    target: Regex,
    dotdot_segment: Regex,
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    tag: compiled(patterns::TAG),
    repository: compiled(patterns::REPOSITORY),
    git_url: compiled(patterns::GIT_URL),
    local_git_url: compiled(patterns::LOCAL_GIT_URL),
    git_revision: compiled(patterns::GIT_REVISION),
    relative_path: compiled(patterns::RELATIVE_PATH),
    job_queue: compiled(patterns::JOB_QUEUE),
    job_definition: compiled(patterns::JOB_DEFINITION),
    secret_arn: compiled(patterns::SECRET_ARN),
    build_arg_name: compiled(patterns::BUILD_ARG_NAME),
    build_name: compiled(patterns::BUILD_NAME),
    target: compiled(patterns::TARGET),
    dotdot_segment: compiled(r"(^|/)\.\.(/|$)"),
});

/// Which git URLs a build may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GitSources {
    /// https and ssh only: what a cluster accepts.
    #[default]
    Remote,
    /// Also `file:///` paths, for a local stack whose builder has the repository mounted.
    AllowLocal,
}

/// Checks a spec with the same rules as the CRD and returns every problem found.
pub fn validate(spec: &MultiArchBuildSpec) -> Result<(), InvalidSpec> {
    validate_with(spec, GitSources::Remote)
}

/// [`validate()`], choosing which git URLs are acceptable.
pub fn validate_with(spec: &MultiArchBuildSpec, sources: GitSources) -> Result<(), InvalidSpec> {
    let mut errors = Errors::default();
    let p = &*PATTERNS;

    let git = &spec.source.git;
    let local = sources == GitSources::AllowLocal && p.local_git_url.is_match(&git.url) && !git.url.contains("..");
    let credentials_in_url = git
        .url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|host| host.contains('@'));
    let url_ok = !credentials_in_url && (local || p.git_url.is_match(&git.url));
    if credentials_in_url {
        errors.push(
            "spec.source.git.url",
            "must not contain credentials; store a token in Secrets Manager and set credentialsSecretArn".into(),
        );
    } else if !url_ok {
        errors.bad_value(
            "spec.source.git.url",
            &git.url,
            "https://host/org/repo.git, ssh://git@host/org/repo.git or git@host:org/repo.git",
        );
    }
    if !p.git_revision.is_match(&git.revision) || git.revision.contains("..") {
        errors.bad_value("spec.source.git.revision", &git.revision, "a commit SHA, branch or tag: letters, digits, '.', '_', '/', '-', not starting with '-' and without '..', at most 255 characters");
    }
    if let Some(arn) = &git.credentials_secret_arn {
        if !p.secret_arn.is_match(arn) {
            errors.bad_value(
                "spec.source.git.credentialsSecretArn",
                arn,
                "a Secrets Manager secret ARN, arn:<partition>:secretsmanager:<region>:<account>:secret:<name>",
            );
        } else if url_ok && !git.url.starts_with("https://") {
            errors.push(
                "spec.source.git.credentialsSecretArn",
                "needs an https:// url: the builder sends the token as an HTTP header".into(),
            );
        }
    }
    for (field, value) in [
        ("spec.source.contextDir", &spec.source.context_dir),
        ("spec.source.dockerfile", &spec.source.dockerfile),
    ] {
        if p.dotdot_segment.is_match(value) {
            errors.bad_value(field, value, "a path inside the repository: no '..' segments");
        } else if !p.relative_path.is_match(value) {
            errors.bad_value(field, value, "a relative path of letters, digits, '.', '_', '/', '-', not starting with '/' or '-', at most 255 characters");
        }
    }

    if let Some(target) = &spec.source.target
        && !p.target.is_match(target)
    {
        errors.bad_value("spec.source.target", target, TARGET_ALLOWED);
    }

    if let Some(args) = &spec.build_args {
        check_build_args(&mut errors, "spec.buildArgs", args);
    }

    let out = &spec.output;
    if out.repository.contains('@') {
        errors.bad_value(
            "spec.output.repository",
            &out.repository,
            "a repository without a digest (@sha256:...): the index digest is an output, see status.image",
        );
    } else if has_tag(&out.repository) {
        errors.bad_value(
            "spec.output.repository",
            &out.repository,
            "a repository without a tag: put the tag in spec.output.tag",
        );
    } else if !p.repository.is_match(&out.repository) {
        errors.bad_value(
            "spec.output.repository",
            &out.repository,
            "host[:port]/path with lower-case path components, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
        );
    }
    let cache = &out.cache.repository;
    let cache_in_output = out.cache.mode != CacheMode::Off && (cache.is_empty() || *cache == out.repository);
    if !p.tag.is_match(&out.tag) {
        errors.bad_value("spec.output.tag", &out.tag, "the OCI tag grammar [A-Za-z0-9_][A-Za-z0-9._-]* with at most 119 characters, leaving room for the -<arch> suffix of the per-platform tags");
    } else if cache_in_output && is_cache_tag(&out.tag) {
        errors.push(
            "spec.output.tag",
            format!(
                "{:?} must not be {CACHE_TAG_PREFIX} or start with {CACHE_TAG_PREFIX}- while the layer cache is in the output repository: the cache images are tagged {CACHE_TAG_PREFIX}-<arch>[-<variant>]; use another tag, another spec.output.cache.repository, or spec.output.cache.mode off",
                out.tag
            ),
        );
    }
    if out.additional_tags.len() > MAX_ADDITIONAL_TAGS {
        errors.push(
            "spec.output.additionalTags",
            format!(
                "has {} entries; at most {MAX_ADDITIONAL_TAGS} are allowed",
                out.additional_tags.len()
            ),
        );
    }
    let mut tags = HashSet::new();
    for (i, tag) in out.additional_tags.iter().enumerate() {
        let field = format!("spec.output.additionalTags[{i}]");
        if !p.tag.is_match(tag) {
            errors.bad_value(
                &field,
                tag,
                "the OCI tag grammar [A-Za-z0-9_][A-Za-z0-9._-]* with at most 119 characters, as spec.output.tag",
            );
        } else if !tags.insert(tag.as_str()) {
            errors.push(
                &field,
                format!("{tag:?} is listed more than once; each tag may appear once"),
            );
        } else if *tag == out.tag {
            errors.push(
                &field,
                format!("{tag:?} must not repeat spec.output.tag: the index is pushed under it anyway"),
            );
        } else if let Some(platform) = Platform::ALL
            .into_iter()
            .find(|platform| *tag == format!("{}-{}", out.tag, platform.tag_suffix()))
        {
            errors.push(
                &field,
                format!(
                    "{tag:?} must not be a per-platform tag <tag>-<arch>[-<variant>]: the {platform} image of \
                     spec.output.tag {:?} is pushed under it",
                    out.tag
                ),
            );
        } else if cache_in_output && is_cache_tag(tag) {
            errors.push(
                &field,
                format!(
                    "{tag:?} must not be {CACHE_TAG_PREFIX} or start with {CACHE_TAG_PREFIX}- while the layer cache is in the output repository: the cache images are tagged {CACHE_TAG_PREFIX}-<arch>[-<variant>]; use another tag, another spec.output.cache.repository, or spec.output.cache.mode off"
                ),
            );
        }
    }
    if cache.is_empty() {
        // The output repository.
    } else if cache.contains('@') {
        errors.bad_value(
            "spec.output.cache.repository",
            cache,
            "a repository without a digest (@sha256:...): each platform's cache image is tagged buildcache-<arch>[-<variant>]",
        );
    } else if has_tag(cache) {
        errors.bad_value(
            "spec.output.cache.repository",
            cache,
            "a repository without a tag: each platform's cache image is tagged buildcache-<arch>[-<variant>]",
        );
    } else if !p.repository.is_match(cache) {
        errors.bad_value(
            "spec.output.cache.repository",
            cache,
            "empty (the output repository) or host[:port]/path with lower-case path components, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/app-cache",
        );
    } else if host_of(cache) != host_of(&out.repository) {
        errors.push(
            "spec.output.cache.repository",
            format!(
                "{cache:?} must be on the same registry host as spec.output.repository ({}): the builder logs in to one registry",
                host_of(&out.repository)
            ),
        );
    }

    if spec.platforms.is_empty() || spec.platforms.len() > MAX_PLATFORMS {
        errors.push(
            "spec.platforms",
            format!("has {} entries; 1 to {MAX_PLATFORMS} are allowed", spec.platforms.len()),
        );
    }
    // linux/arm64 is linux/arm64/v8 in an index: two entries would be ambiguous.
    let mut seen: HashMap<(&str, Option<&str>), Platform> = HashMap::new();
    for (i, target) in spec.platforms.iter().enumerate() {
        let platform = target.platform;
        let key = (platform.architecture(), platform.descriptor_variant());
        if let Some(earlier) = seen.insert(key, platform) {
            let problem = if earlier == platform {
                format!("{platform} is listed more than once; each platform may appear once")
            } else {
                format!("{platform} is the same platform as {earlier}, listed earlier; list one of them")
            };
            errors.push(&format!("spec.platforms[{i}].platform"), problem);
        }
        if !p.job_queue.is_match(&target.job_queue) {
            errors.bad_value(
                &format!("spec.platforms[{i}].jobQueue"),
                &target.job_queue,
                "a Batch job queue name (1-128 letters, digits, '-', '_') or job-queue ARN",
            );
        }
        if let Some(stage) = &target.target
            && !p.target.is_match(stage)
        {
            errors.bad_value(&format!("spec.platforms[{i}].target"), stage, TARGET_ALLOWED);
        }
        if let Some(args) = &target.build_args {
            check_build_args(&mut errors, &format!("spec.platforms[{i}].buildArgs"), args);
        }
    }

    if let Some(def) = &spec.job_definition
        && !p.job_definition.is_match(def)
    {
        errors.bad_value(
            "spec.jobDefinition",
            def,
            "a Batch job definition name, name:revision, or job-definition ARN",
        );
    }
    if !ATTEMPTS_RANGE.contains(&spec.retry.attempts) {
        errors.push(
            "spec.retry.attempts",
            format!("is {}; allowed: 1 to 10", spec.retry.attempts),
        );
    }
    if spec
        .ttl_seconds_after_finished
        .is_some_and(|ttl| !TTL_RANGE.contains(&ttl))
    {
        // The CRD's CEL rule says the same.
        errors.push(
            "spec.ttlSecondsAfterFinished",
            "must be 0 to 31536000 (365 days)".into(),
        );
    }
    if !TIMEOUT_RANGE.contains(&spec.timeout_seconds) {
        errors.push(
            "spec.timeoutSeconds",
            format!(
                "is {}; allowed: 60 (Batch's minimum attempt duration) to 604800 (7 days)",
                spec.timeout_seconds
            ),
        );
    }

    errors.into_result()
}

/// The count, names (valid, unique) and value lengths of a list of build args at `field`.
fn check_build_args(errors: &mut Errors, field: &str, args: &[super::BuildArg]) {
    let p = &*PATTERNS;
    if args.len() > MAX_BUILD_ARGS {
        errors.push(
            field,
            format!("has {} entries; at most {MAX_BUILD_ARGS} are allowed", args.len()),
        );
    }
    let mut names = HashSet::new();
    for (i, arg) in args.iter().enumerate() {
        if !p.build_arg_name.is_match(&arg.name) {
            errors.bad_value(
                &format!("{field}[{i}].name"),
                &arg.name,
                "an identifier: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters",
            );
        } else if super::RESERVED_BUILD_ARGS.contains(&arg.name.as_str()) {
            errors.push(
                &format!("{field}[{i}].name"),
                format!(
                    "{:?} is set by the builder (from the platform or the cache mode) and cannot be overridden",
                    arg.name
                ),
            );
        } else if !names.insert(arg.name.as_str()) {
            errors.push(
                &format!("{field}[{i}].name"),
                format!("{:?} is listed more than once; each name may appear once", arg.name),
            );
        }
        match (&arg.value, &arg.value_from) {
            (Some(_), Some(_)) | (None, None) => errors.push(
                &format!("{field}[{i}]"),
                format!(
                    "{:?} must set exactly one of value and valueFrom in each entry (an empty value is value: \"\")",
                    arg.name
                ),
            ),
            (Some(value), None) => {
                let length = value.chars().count();
                if length > MAX_BUILD_ARG_VALUE {
                    errors.push(
                        &format!("{field}[{i}].value"),
                        format!("is {length} characters long; at most {MAX_BUILD_ARG_VALUE} are allowed"),
                    );
                }
            }
            (None, Some(_)) if field != "spec.buildArgs" => errors.push(
                &format!("{field}[{i}].valueFrom"),
                format!(
                    "{:?}: valueFrom is only resolved in spec.buildArgs; put it there (a platform's own value may then replace it)",
                    arg.name
                ),
            ),
            (None, Some(from)) => {
                let name = &from.multi_arch_build.name;
                if name.len() > MAX_BUILD_NAME || !p.build_name.is_match(name) {
                    errors.bad_value(
                        &format!("{field}[{i}].valueFrom.multiArchBuild.name"),
                        name,
                        "the name of a MultiArchBuild in the same namespace: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters",
                    );
                }
            }
        }
    }
}

/// Whether `tag` is `buildcache` or starts with `buildcache-`: the cache images' tags.
fn is_cache_tag(tag: &str) -> bool {
    tag.strip_prefix(CACHE_TAG_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Whether a repository ends in `:tag` (a `:` in its last path segment; the host's port is not).
fn has_tag(repository: &str) -> bool {
    repository.contains('/') && repository.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

/// The registry host of a repository, `host[:port]`: what comes before the first `/`.
fn host_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or_default()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: &str, problem: String) {
        self.0.push(FieldError {
            field: field.into(),
            problem,
        });
    }

    fn bad_value(&mut self, field: &str, value: &str, allowed: &str) {
        self.push(field, format!("{value:?} is not valid; allowed: {allowed}"));
    }

    fn into_result(self) -> Result<(), InvalidSpec> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for pattern in [
            patterns::TAG,
            patterns::REPOSITORY,
            patterns::CACHE_REPOSITORY,
            patterns::GIT_URL,
            patterns::LOCAL_GIT_URL,
            patterns::GIT_REVISION,
            patterns::RELATIVE_PATH,
            patterns::JOB_QUEUE,
            patterns::JOB_DEFINITION,
            patterns::SECRET_ARN,
            patterns::BUILD_ARG_NAME,
            patterns::BUILD_NAME,
            patterns::TARGET,
        ] {
            Regex::new(pattern).unwrap();
        }
    }

    #[test]
    fn patterns_accept_the_usual_values() {
        let p = &*PATTERNS;
        for repo in [
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli",
            "127.0.0.1:5000/demo/app",
            "localhost:5000/a-b",
            "ghcr.io/org/my_app",
        ] {
            assert!(p.repository.is_match(repo), "{repo}");
        }
        for url in [
            "https://github.com/CovertLab/vEcoli.git",
            "git@github.com:org/repo.git",
            "ssh://git@host:2222/org/repo.git",
        ] {
            assert!(p.git_url.is_match(url), "{url}");
        }
        for bad in [
            "http://github.com/a",
            "https://github.com/-upload-pack",
            "ext::sh -c",
            "file:///etc",
        ] {
            assert!(!p.git_url.is_match(bad), "{bad}");
        }
        assert!(p.job_definition.is_match("multiarch-builder:3"));
        assert!(
            p.job_definition
                .is_match("arn:aws-us-gov:batch:us-gov-west-1:123456789012:job-definition/multiarch-builder:1")
        );
        assert!(
            p.job_queue
                .is_match("arn:aws:batch:us-east-1:123456789012:job-queue/build-arm64")
        );
        assert!(p.tag.is_match(&"a".repeat(119)));
        assert!(!p.tag.is_match(&"a".repeat(120)));
        assert!(!p.git_revision.is_match("--upload-pack=x"));
    }

    #[test]
    fn file_urls_only_where_local_sources_are_allowed() {
        let build: crate::api::MultiArchBuild =
            serde_yaml::from_str(include_str!("../../config/samples/vecoli.yaml")).unwrap();
        let mut spec = build.spec;
        spec.source.git.url = "file:///tmp/mab-local-stack/git/sample.git".into();
        spec.source.git.credentials_secret_arn = None;
        assert!(validate(&spec).unwrap_err().to_string().contains("spec.source.git.url"));
        validate_with(&spec, GitSources::AllowLocal).unwrap();
        spec.source.git.url = "file:///tmp/../etc".into();
        assert!(validate_with(&spec, GitSources::AllowLocal).is_err());
    }
}
