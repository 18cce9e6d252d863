//! The MultiArchBuild v1alpha1 resource: spec, status, and the rules that keep it valid.
//!
//! Doc comments on fields become the `kubectl explain` text. Rules are enforced three times, each
//! as early as it can be: the CRD's OpenAPI bounds and CEL rules (at `kubectl apply`), then
//! [`validate()`] (in `build` without a cluster and as a second guard in the controller).

mod platform;
mod policy;
mod validate;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use platform::{Platform, allowed_platforms};
pub use policy::{
    LabelOperator, LabelRequirement, MultiArchBuildPolicy, MultiArchBuildPolicySpec, NamespaceSelector,
    policy_crd_yaml, policy_violations, selects, violations,
};
pub use validate::{FieldError, GitSources, InvalidSpec, validate, validate_with};

use validate::patterns;

/// A request to build one container image natively for several platforms on AWS Batch and
/// publish the multi-platform image index. Like a batch/v1 Job it is an execution record: the spec
/// cannot change after creation, except `cancel` and `ttlSecondsAfterFinished`. To build again,
/// create a new object.
// Each printcolumn repeats `type_`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "multiarch.dev",
    version = "v1alpha1",
    kind = "MultiArchBuild",
    plural = "multiarchbuilds",
    shortname = "mab",
    namespaced,
    status = "MultiArchBuildStatus",
    derive = "PartialEq",
    doc = "A MultiArchBuild: build one image natively per platform on AWS Batch, then push the multi-platform image index and record its digest.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the build is: Waiting, Pending, Building, Assembling, Succeeded, Failed or Cancelled"
    ),
    printcolumn(
        name = "Platforms",
        type_ = "string",
        json_path = ".status.platformsPushed",
        description = "Platforms pushed / platforms requested"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.shortDigest",
        description = "The index digest, shortened"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the build is where it is (the Ready condition's reason), e.g. WaitingForDependencies"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1,
        description = "The Ready condition's message: what the build waits for, or why it failed"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.buildArgs) == has(oldSelf.buildArgs) && has(self.jobDefinition) == has(oldSelf.jobDefinition)").message("spec is immutable except spec.cancel: buildArgs and jobDefinition cannot be added or removed after creation; create a new MultiArchBuild to build again"))]
pub struct MultiArchBuildSpec {
    /// Where the source comes from.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.source is immutable; create a new MultiArchBuild to build again"))]
    pub source: Source,

    /// Docker build arguments (`--build-arg NAME=value`), the same for every platform, as a list
    /// of name/value pairs like a container's `env`. At most 32, names unique. An entry's value
    /// may come from another build's pinned image (`valueFrom.multiArchBuild`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.buildArgs is immutable; create a new MultiArchBuild to build again"))]
    pub build_args: Option<Vec<BuildArg>>,

    /// Where the images go.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.output is immutable; create a new MultiArchBuild to build again"))]
    pub output: Output,

    /// The platforms to build, one AWS Batch job each, on a queue whose compute is native to the
    /// platform. 1 to 8 entries, each platform at most once.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.platform == p.platform))").message("spec.platforms must list each platform at most once"))]
    #[x_kube(validation = Rule::new("!(self.exists(p, p.platform == 'linux/arm64') && self.exists(p, p.platform == 'linux/arm64/v8'))").message("spec.platforms: linux/arm64 and linux/arm64/v8 are the same platform; list one of them"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.platforms is immutable; create a new MultiArchBuild to build again"))]
    pub platforms: Vec<PlatformTarget>,

    /// The Batch job definition that runs the builder: a name, `name:revision` or an ARN.
    /// Defaults to the controller's `--default-job-definition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(patterns::JOB_DEFINITION))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.jobDefinition is immutable; create a new MultiArchBuild to build again"))]
    pub job_definition: Option<String>,

    /// How often Batch may try each platform's job. Only infrastructure failures (Spot reclaim,
    /// host loss) are retried; a failed build is not.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.retry is immutable; create a new MultiArchBuild to build again"))]
    pub retry: Retry,

    /// Time limit in seconds for each job attempt (Batch `attemptDurationSeconds`) and for the whole
    /// build; when it passes, live jobs are terminated and the build fails. 60 to 604800 (7 days).
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 60, max = 604_800))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.timeoutSeconds is immutable; create a new MultiArchBuild to build again"))]
    pub timeout_seconds: i64,

    /// Seconds after the build finished (Succeeded, Failed or Cancelled, from
    /// `status.completionTime`) when the controller deletes it, like a batch/v1 Job's field of the
    /// same name: 0 deletes it as soon as it finished, unset falls back to the controller's
    /// `--default-ttl-seconds-after-finished` (itself unset or 0: kept forever). 0 to 31536000
    /// (365 days). May be changed at any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 31536000").message("spec.ttlSecondsAfterFinished: must be 0 to 31536000 (365 days)"))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// Set to true to stop the build: live Batch jobs are terminated and the build ends Cancelled.
    /// One-way: it cannot be set back to false.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("spec.cancel can only change from false to true"))]
    pub cancel: bool,
}

/// Build-arg names the builder sets itself (from the platform, and from the cache mode).
pub const RESERVED_BUILD_ARGS: [&str; 9] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "BUILDKIT_INLINE_CACHE",
];

/// One docker build argument: a name and exactly one of `value` and `valueFrom`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("spec.buildArgs: set exactly one of value and valueFrom in each entry"))]
pub struct BuildArg {
    /// The argument's name, an identifier: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters. The
    /// builder sets TARGETPLATFORM, TARGETOS, TARGETARCH, TARGETVARIANT, BUILDPLATFORM, BUILDOS,
    /// BUILDARCH, BUILDVARIANT (from the platform) and BUILDKIT_INLINE_CACHE (from the cache mode):
    /// those names are refused.
    #[schemars(length(min = 1, max = 128), pattern(patterns::BUILD_ARG_NAME))]
    #[x_kube(validation = Rule::new("!(self in ['TARGETPLATFORM', 'TARGETOS', 'TARGETARCH', 'TARGETVARIANT', 'BUILDPLATFORM', 'BUILDOS', 'BUILDARCH', 'BUILDVARIANT', 'BUILDKIT_INLINE_CACHE'])").message("buildArgs: this name is set by the builder (from the platform or the cache mode) and cannot be overridden"))]
    pub name: String,
    /// The argument's value, at most 1024 characters (`""` for an empty value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
    /// Where the value comes from, instead of `value`: the pinned image of another build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<BuildArgSource>,
}

impl BuildArg {
    /// An argument with a literal value.
    pub fn value(name: impl Into<String>, value: impl Into<String>) -> BuildArg {
        BuildArg {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    /// The build whose image this argument takes (`valueFrom.multiArchBuild.name`), if any.
    pub fn dependency(&self) -> Option<&str> {
        Some(self.value_from.as_ref()?.multi_arch_build.name.as_str())
    }
}

/// Where a build argument's value comes from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildArgSource {
    /// Another MultiArchBuild in the same namespace. The value is its `status.image`, the pinned
    /// `<repository>@sha256:<digest>` it pushed and verified, so `FROM ${ARG}` builds on exactly
    /// that index. The build waits (phase `Waiting`) until that build has Succeeded, also while it
    /// does not exist yet (at most `spec.timeoutSeconds`), and fails with `DependencyFailed` if it
    /// fails or is cancelled. The value is recorded in `status.inputs.buildArgs` before anything is
    /// built and never changes afterwards.
    pub multi_arch_build: BuildReference,
}

/// A MultiArchBuild in the same namespace, by name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct BuildReference {
    /// The MultiArchBuild's name (a DNS subdomain: lower-case letters, digits, '-' and '.', at
    /// most 253 characters).
    #[schemars(length(min = 1, max = 253), pattern(patterns::BUILD_NAME))]
    pub name: String,
}

/// Where the source comes from.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The git repository and revision to build.
    pub git: GitSource,

    /// The build context, relative to the repository root, without `..`. Default `.`.
    #[serde(default = "default_context_dir")]
    #[schemars(length(min = 1, max = 255), pattern(patterns::RELATIVE_PATH))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.source.contextDir must stay inside the repository: no '..' segments"))]
    pub context_dir: String,

    /// The Dockerfile, relative to the repository root, without `..`. Default `Dockerfile`.
    #[serde(default = "default_dockerfile")]
    #[schemars(length(min = 1, max = 255), pattern(patterns::RELATIVE_PATH))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.source.dockerfile must stay inside the repository: no '..' segments"))]
    pub dockerfile: String,

    /// The Dockerfile stage to build (`docker build --target`), e.g. `runtime`: a stage name,
    /// [A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters. Default: the last stage. A platform
    /// may choose another one (`spec.platforms[].target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(patterns::TARGET))]
    pub target: Option<String>,
}

/// A git repository and revision.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretArn) || self.url.startsWith('https://')").message("spec.source.git.credentialsSecretArn needs an https:// url: the builder sends the token as an HTTP header"))]
pub struct GitSource {
    /// The repository URL: `https://host/org/repo.git`, `ssh://git@host/org/repo.git` or
    /// `git@host:org/repo.git`. Never put credentials in it: use `credentialsSecretArn`.
    #[schemars(length(min = 1, max = 2048), pattern(patterns::GIT_URL))]
    #[x_kube(validation = Rule::new("!self.matches('^https://[^/]*@')").message("spec.source.git.url must not contain credentials; store a token in Secrets Manager and set credentialsSecretArn"))]
    pub url: String,

    /// The commit SHA, branch or tag to build. A full commit SHA makes the build reproducible.
    #[schemars(length(min = 1, max = 255), pattern(patterns::GIT_REVISION))]
    #[x_kube(validation = Rule::new("!self.contains('..')").message("spec.source.git.revision must not contain '..'"))]
    pub revision: String,

    /// Optional ARN of a Secrets Manager secret holding a token for an https repository. The
    /// builder sends it as an HTTP header; it never appears in a URL, an argument or a log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::SECRET_ARN))]
    pub credentials_secret_arn: Option<String>,
}

/// Where the images go.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.cache) || !has(self.cache.repository) || self.cache.repository == '' || self.cache.repository.split('/')[0] == self.repository.split('/')[0]").message("spec.output.cache.repository must be on the same registry host as spec.output.repository: the builder logs in to one registry"))]
#[x_kube(validation = Rule::new("!(self.tag == 'buildcache' || self.tag.startsWith('buildcache-')) || (has(self.cache) && ((has(self.cache.mode) && self.cache.mode == 'off') || (has(self.cache.repository) && self.cache.repository != '' && self.cache.repository != self.repository)))").message("spec.output.tag must not be buildcache or start with buildcache- while the layer cache is in the output repository: the cache images are tagged buildcache-<arch>[-<variant>]"))]
#[x_kube(validation = Rule::new("!has(self.additionalTags) || !(self.tag in self.additionalTags)").message("spec.output.additionalTags must not repeat spec.output.tag: the index is pushed under it anyway"))]
#[x_kube(validation = Rule::new("!has(self.additionalTags) || !self.additionalTags.exists(t, t in [self.tag + '-amd64', self.tag + '-amd64-v2', self.tag + '-amd64-v3', self.tag + '-amd64-v4', self.tag + '-arm64', self.tag + '-arm64-v8', self.tag + '-arm64-v9'])").message("spec.output.additionalTags must not be a per-platform tag <tag>-<arch>[-<variant>]: each platform's image is pushed under it"))]
#[x_kube(validation = Rule::new("!has(self.additionalTags) || !self.additionalTags.exists(t, t == 'buildcache' || t.startsWith('buildcache-')) || (has(self.cache) && ((has(self.cache.mode) && self.cache.mode == 'off') || (has(self.cache.repository) && self.cache.repository != '' && self.cache.repository != self.repository)))").message("spec.output.additionalTags must not be buildcache or start with buildcache- while the layer cache is in the output repository: the cache images are tagged buildcache-<arch>[-<variant>]"))]
pub struct Output {
    /// The image repository, registry host included, without tag or digest, e.g.
    /// `123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli`.
    #[schemars(length(min = 1, max = 512), pattern(patterns::REPOSITORY))]
    #[x_kube(validation = Rule::new("!self.contains('@')").message("spec.output.repository must not include a digest (@sha256:...): the index digest is an output, see status.image"))]
    #[x_kube(validation = Rule::new("!self.matches('/[^/]*:')").message("spec.output.repository must not include a tag: put it in spec.output.tag"))]
    pub repository: String,

    /// The tag of the image index. Each platform is pushed first as `<tag>-<arch>[-<variant>]`, so
    /// the tag is at most 119 characters: [A-Za-z0-9_][A-Za-z0-9._-]{0,118}. While the layer cache
    /// is in this repository, the tag cannot be `buildcache` or start with `buildcache-`.
    #[schemars(length(min = 1, max = 119), pattern(patterns::TAG))]
    pub tag: String,

    /// The kind of index to push: `oci` (OCI image index, the default) or `docker` (Docker manifest
    /// list, for old clients).
    #[serde(default)]
    pub media_type: IndexMediaType,

    /// When `<tag>` already is an index that this very input built, succeed at once with it
    /// (reason `Reused`) instead of building: every platform is covered and every child's labels
    /// name the commit `revision` pins and the same inputs (context, Dockerfile, build args,
    /// platforms). Only a full commit SHA revision can be reused. Default true.
    #[serde(default = "default_true")]
    pub reuse_existing: bool,

    /// More tags for the same index, e.g. `[latest, v6.0.0]`: once the index is pushed as `<tag>`
    /// and its digest verified, the very same bytes are pushed under each of these (also when the
    /// index is reused), and `status.tags` lists every tag pushed. A tag that already points to
    /// something else is moved to this index (an immutable tag that holds another image fails the
    /// build). At most 16, unique, the grammar of `tag`; none equal to `tag`, none a per-platform
    /// tag `<tag>-<arch>[-<variant>]`, and, while the layer cache is in this repository, none
    /// `buildcache` or starting with `buildcache-`. Not an input of the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 119), pattern(patterns::TAG)))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))").message("spec.output.additionalTags must list each tag at most once"))]
    pub additional_tags: Vec<String>,

    /// The registry layer cache of each platform's build: each build reads and writes the cache
    /// image `<cache repository>:buildcache-<arch>[-<variant>]`. A cache that is missing,
    /// unreadable or foreign makes the build slower, never failed. Default: mode `max`, in the
    /// output repository. Not an input of the build: an index built with one cache setting is
    /// reused by a build with another.
    #[serde(default, skip_serializing_if = "Cache::is_default")]
    pub cache: Cache,
}

/// The registry layer cache of each platform's build.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// What is cached: `max` (the default) every stage's layers, which needs an engine that can
    /// export a registry cache (otherwise the builder falls back to an inline cache and says so in
    /// the job log); `min` only the final image's layers (an inline cache); `off` no cache flags
    /// at all (and no cache image).
    #[serde(default)]
    pub mode: CacheMode,

    /// The repository of the cache images, registry host included, without tag or digest. Empty
    /// (the default): `spec.output.repository`. It must be on the same registry host as
    /// `spec.output.repository` (the builder logs in to one registry), and it is held to the same
    /// allowed registries and MultiArchBuildPolicy repository prefixes.
    #[serde(default)]
    #[schemars(length(max = 512), pattern(patterns::CACHE_REPOSITORY))]
    #[x_kube(validation = Rule::new("!self.contains('@')").message("spec.output.cache.repository must not include a digest (@sha256:...): each platform's cache image is tagged buildcache-<arch>[-<variant>]"))]
    #[x_kube(validation = Rule::new("!self.matches('/[^/]*:')").message("spec.output.cache.repository must not include a tag: each platform's cache image is tagged buildcache-<arch>[-<variant>]"))]
    pub repository: String,
}

impl Cache {
    fn is_default(&self) -> bool {
        *self == Cache::default()
    }
}

/// The tag prefix of the cache images, `buildcache-<arch>[-<variant>]`.
pub const CACHE_TAG_PREFIX: &str = "buildcache";

/// What a build caches in the registry.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Every stage's layers (BuildKit `mode=max`), in a separate cache image.
    #[default]
    Max,
    /// Only the final image's layers (an inline cache).
    Min,
    /// No cache.
    Off,
}

impl CacheMode {
    /// The name in the spec and in `MAB_CACHE_MODE`: `max`, `min` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Max => "max",
            CacheMode::Min => "min",
            CacheMode::Off => "off",
        }
    }
}

/// The media type of the pushed index.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexMediaType {
    /// `application/vnd.oci.image.index.v1+json`
    #[default]
    Oci,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    Docker,
}

/// One platform and the Batch queue that builds it.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlatformTarget {
    /// The platform, `os/arch[/variant]`: linux/amd64, linux/amd64/v2, linux/amd64/v3,
    /// linux/amd64/v4, linux/arm64, linux/arm64/v8 or linux/arm64/v9.
    pub platform: Platform,

    /// The AWS Batch job queue (name or ARN) whose compute environment is native to this platform.
    #[schemars(length(min = 1, max = 256), pattern(patterns::JOB_QUEUE))]
    pub job_queue: String,

    /// The Dockerfile stage this platform builds, instead of `spec.source.target`: a stage name,
    /// [A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters. The index then holds images that
    /// differ by more than their architecture, and the build's `Ready` message says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(patterns::TARGET))]
    pub target: Option<String>,

    /// Build arguments for this platform only, like `spec.buildArgs`: one with the name of a
    /// `spec.buildArgs` entry replaces it for this platform, the others are added. At most 32,
    /// names unique. Plain values only: `valueFrom` is resolved in `spec.buildArgs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(a, !has(a.valueFrom))").message("spec.platforms[].buildArgs[].valueFrom is only resolved in spec.buildArgs; put it there (a platform's own value may then replace it)"))]
    pub build_args: Option<Vec<BuildArg>>,
}

/// Batch retry settings.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Batch attempts per platform, 1 to 10 (default 3). An attempt is retried only when its host
    /// went away (`Host EC2*`: Spot reclaim, instance loss).
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: default_attempts(),
        }
    }
}

/// What the controller has seen and done. Written only by the controller, and only forward: the
/// API server refuses a write that changes a terminal phase, rewrites `digest` or `image`, or
/// changes a platform's `jobId`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.phase) || !(oldSelf.phase in ['Succeeded', 'Failed', 'Cancelled']) || (has(self.phase) && self.phase == oldSelf.phase)").message("status.phase: a build that ended (Succeeded, Failed, Cancelled) never changes phase"))]
#[x_kube(validation = Rule::new("!has(oldSelf.digest) || (has(self.digest) && self.digest == oldSelf.digest)").message("status.digest is written once"))]
#[x_kube(validation = Rule::new("!has(oldSelf.image) || (has(self.image) && self.image == oldSelf.image)").message("status.image is written once"))]
#[x_kube(validation = Rule::new("!has(oldSelf.platforms) || (has(self.platforms) && self.platforms.size() >= oldSelf.platforms.size())").message("status.platforms: an entry is never removed"))]
#[x_kube(validation = Rule::new("!has(oldSelf.inputs) || (has(self.inputs) && self.inputs == oldSelf.inputs)").message("status.inputs is written once"))]
pub struct MultiArchBuildStatus {
    /// Where the build is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the first job was submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the build reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// What was built: the commit the revision resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,

    /// What the build arguments taken from other builds (`valueFrom`) resolved to. Written once,
    /// before anything is built: the jobs get exactly these values, and the inputs hash covers
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputsStatus>,

    /// One entry per platform: its Batch job and what it pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["platform".into()]))]
    pub platforms: Vec<PlatformStatus>,

    /// Platforms pushed / platforms requested, e.g. `1/2` (the PLATFORMS column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms_pushed: Option<String>,

    /// The index digest: sha256 of the exact bytes pushed. Written once, after the push was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// The first 12 hex digits of the index digest (the DIGEST column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,

    /// What a downstream Job pins: `<repository>@<digest>`. Written once, with `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Every tag that holds the index (`digest`), as pushed and verified: `spec.output.tag` first,
    /// then `spec.output.additionalTags` in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 17), inner(length(max = 128)))]
    pub tags: Vec<String>,

    /// The SLSA provenance attached to the index (an in-toto statement in a DSSE envelope),
    /// pushed and read back before `image` is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenanceStatus>,

    /// The cosign signature of the index, when the controller has a signing key: pushed, read
    /// back and verified with the key's public key before `image` is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,

    /// Conditions. `Ready` is True only when `image` is final
    /// (`kubectl wait --for=condition=Ready mab/NAME`). `Succeeded` is Unknown while the build
    /// runs, then True or False for good, as in Tekton, Knative and Shipwright
    /// (`kubectl wait --for=condition=Succeeded mab/NAME` returns once it succeeded,
    /// `--for=condition=Succeeded=False` once it failed or was cancelled). For kstatus (Flux,
    /// kpt): `Reconciling` is True while the build runs and `Stalled` True once it failed or was
    /// cancelled, each absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The last failure or progress line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The provenance attached to an index.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProvenanceStatus {
    /// Where it is: `<repository>:sha256-<hex>.att`, where cosign looks for attestations.
    pub image: String,
    /// The digest of the attestation manifest.
    pub digest: String,
    /// `https://slsa.dev/provenance/v1`.
    pub predicate_type: String,
    /// Whether its envelope is signed (with the key `signature.key` names).
    pub signed: bool,
}

/// The signature of an index.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SignatureStatus {
    /// Where it is: `<repository>:sha256-<hex>.sig`, where cosign looks for signatures.
    pub image: String,
    /// The digest of the signature manifest.
    pub digest: String,
    /// The key that signed: `awskms:///…` or `file:///…`.
    pub key: String,
}

/// What the build's jobs built.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The full commit SHA `spec.source.git.revision` resolved to, as the jobs reported it. Every
    /// platform was built from this commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub commit: Option<String>,
}

/// What a build's inputs resolved to.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InputsStatus {
    /// Each build argument with `valueFrom`, and the value it resolved to (the other build's
    /// `status.image`), in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub build_args: Vec<ResolvedBuildArg>,
}

/// A build argument's resolved value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBuildArg {
    /// The argument's name.
    #[schemars(length(max = 128))]
    pub name: String,
    /// The value the jobs got.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// The phase of a build. Succeeded, Failed and Cancelled are terminal and never change again.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the builds its arguments take their values from (`valueFrom`) to succeed;
    /// nothing submitted yet.
    Waiting,
    /// Accepted, no job submitted yet.
    Pending,
    /// Batch jobs submitted and not all pushed.
    Building,
    /// Every platform pushed; the index is being assembled.
    Assembling,
    /// The index was pushed and verified; `status.image` is final.
    Succeeded,
    /// A platform failed, the deadline passed, or the index could not be pushed.
    Failed,
    /// `spec.cancel` was set; live jobs were terminated.
    Cancelled,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }
}

/// The state of one platform's Batch job.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.jobId) || (has(self.jobId) && self.jobId == oldSelf.jobId)").message("status.platforms[].jobId never changes once set"))]
pub struct PlatformStatus {
    /// The platform this entry is for.
    pub platform: Platform,

    /// The deterministic Batch job name (unique per build and platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,

    /// The Batch job id, recorded as soon as the job was submitted. Never changes once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub job_id: Option<String>,

    /// The Batch job's ARN (recorded in the build's provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_arn: Option<String>,

    /// The ARN of the job queue the job ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_queue: Option<String>,

    /// The ARN of the job definition the job ran, with its revision (`…:job-definition/NAME:REV`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_definition: Option<String>,

    /// When the controller last asked Batch to submit this platform's job (recorded before the
    /// request, so a restart knows a job may exist that Batch does not list yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Time>,

    /// The Batch job status, verbatim: SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED
    /// or FAILED; or LOST when Batch no longer knew the job (it is then never asked about again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,

    /// How many attempts Batch has made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    /// Batch's reason for the current state, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,

    /// The container exit code of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// The CloudWatch Logs stream of the last attempt (log group `/aws/batch/job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_stream_name: Option<String>,

    /// The per-platform image, `<repository>:<tag>-<arch>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The manifest digest this platform's job pushed, read from the job's own log (never from
    /// what a tag points to), and listed as such in the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// The full commit SHA this platform's job built, read from its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,

    /// When the job's current attempt started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the job stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,

    /// Seconds from the Batch job's creation to its current attempt starting to run: the wait in
    /// the queue, for compute to scale up and for the builder image (set once the job started).
    /// With `runSeconds`, it shows where a build's time went (`kubectl get mab NAME -o yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub queued_seconds: Option<i64>,

    /// Seconds the job's current attempt ran, from `startedAt` to `stoppedAt`: the clone, the
    /// build and the push (set once the job stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_seconds: Option<i64>,
}

impl From<Platform> for PlatformStatus {
    /// An entry for a platform nothing is known about yet.
    fn from(platform: Platform) -> Self {
        PlatformStatus {
            platform,
            job_name: None,
            job_id: None,
            job_arn: None,
            job_queue: None,
            job_definition: None,
            submitted_at: None,
            state: None,
            attempts: None,
            status_reason: None,
            exit_code: None,
            log_stream_name: None,
            image: None,
            digest: None,
            commit: None,
            started_at: None,
            stopped_at: None,
            queued_seconds: None,
            run_seconds: None,
        }
    }
}

fn default_timeout_seconds() -> i64 {
    3600
}

fn default_context_dir() -> String {
    ".".into()
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_true() -> bool {
    true
}

fn default_attempts() -> i32 {
    3
}

impl MultiArchBuildSpec {
    /// The per-platform image reference, `<repository>:<tag>-<suffix>`.
    pub fn platform_image(&self, platform: Platform) -> String {
        format!(
            "{}:{}-{}",
            self.output.repository,
            self.output.tag,
            platform.tag_suffix()
        )
    }

    /// The repository of the cache images: `spec.output.cache.repository`, or the output
    /// repository when that is empty.
    pub fn cache_repository(&self) -> &str {
        match self.output.cache.repository.as_str() {
            "" => &self.output.repository,
            repository => repository,
        }
    }

    /// The repositories this build pushes to, with their field paths: the output repository and,
    /// when set, the cache repository. What the allowed registries and the policies check.
    pub fn pushed_repositories(&self) -> Vec<(&'static str, &str)> {
        let mut repositories = vec![("spec.output.repository", self.output.repository.as_str())];
        if !self.output.cache.repository.is_empty() {
            repositories.push(("spec.output.cache.repository", self.output.cache.repository.as_str()));
        }
        repositories
    }

    /// This platform's cache image, `<cache repository>:buildcache-<suffix>`; `None` when the
    /// cache is off.
    pub fn cache_image(&self, platform: Platform) -> Option<String> {
        (self.output.cache.mode != CacheMode::Off).then(|| {
            format!(
                "{}:{CACHE_TAG_PREFIX}-{}",
                self.cache_repository(),
                platform.tag_suffix()
            )
        })
    }

    /// The index image reference, `<repository>:<tag>`.
    pub fn index_image(&self) -> String {
        format!("{}:{}", self.output.repository, self.output.tag)
    }

    /// Every tag the index is pushed under: `spec.output.tag`, then the additional tags.
    pub fn index_tags(&self) -> Vec<String> {
        std::iter::once(&self.output.tag)
            .chain(&self.output.additional_tags)
            .cloned()
            .collect()
    }

    fn platform_target(&self, platform: Platform) -> Option<&PlatformTarget> {
        self.platforms.iter().find(|p| p.platform == platform)
    }

    /// The Dockerfile stage `platform` builds: its own `target`, else `spec.source.target`; `None`
    /// builds the last stage.
    pub fn target_of(&self, platform: Platform) -> Option<&str> {
        self.platform_target(platform)
            .and_then(|p| p.target.as_deref())
            .or(self.source.target.as_deref())
    }

    /// The build args `platform` builds with: `spec.buildArgs` in order, an entry replaced where
    /// the platform's own `buildArgs` has its name, then the platform's other entries in order.
    pub fn build_args_of(&self, platform: Platform) -> Vec<&BuildArg> {
        let own: &[BuildArg] = self
            .platform_target(platform)
            .and_then(|p| p.build_args.as_deref())
            .unwrap_or_default();
        let common: &[BuildArg] = self.build_args.as_deref().unwrap_or_default();
        let mut args: Vec<&BuildArg> = common
            .iter()
            .map(|arg| own.iter().find(|o| o.name == arg.name).unwrap_or(arg))
            .collect();
        args.extend(own.iter().filter(|o| !common.iter().any(|c| c.name == o.name)));
        args
    }

    /// Whether `platform` builds another stage or other build args than the build's own.
    pub fn is_variant(&self, platform: Platform) -> bool {
        let common: Vec<&BuildArg> = self.build_args.iter().flatten().collect();
        self.target_of(platform) != self.source.target.as_deref() || self.build_args_of(platform) != common
    }

    /// When the platforms do not all build the same stage with the same build args: one line that
    /// says so and what each platform builds differently (names, not values). `None` when the
    /// children of the index differ by their architecture only.
    pub fn platform_differences(&self) -> Option<String> {
        let first = self.platforms.first()?.platform;
        let same = self.platforms.iter().all(|p| {
            self.target_of(p.platform) == self.target_of(first)
                && self.build_args_of(p.platform) == self.build_args_of(first)
        });
        if same {
            return None;
        }
        let each: Vec<String> = self
            .platforms
            .iter()
            .map(|p| {
                let mut what = vec![match self.target_of(p.platform) {
                    Some(target) => format!("target {target}"),
                    None => "the last stage".to_string(),
                }];
                let own: Vec<&str> = p.build_args.iter().flatten().map(|a| a.name.as_str()).collect();
                if !own.is_empty() {
                    what.push(format!("its own build args {}", own.join(", ")));
                }
                format!("{} {}", p.platform, what.join(" with "))
            })
            .collect();
        Some(format!(
            "the children differ by more than architecture (per-platform target or build args): {}",
            each.join("; ")
        ))
    }
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    crd_to_yaml(&MultiArchBuild::crd())
}

/// A CRD as committed: its descriptions as flowing text (see [`flow_descriptions`]), as YAML that
/// YAML 1.1 readers load the same way.
pub(crate) fn crd_to_yaml<T: serde::Serialize>(crd: &T) -> Result<String, serde_yaml::Error> {
    let mut value = serde_json::to_value(crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    flow_descriptions(&mut value);
    to_yaml_for_kubernetes(&value)
}

/// Every `description` in `value` as flowing text: the doc comments' hard line breaks (which
/// `kubectl explain` would show as sentences cut mid-line) become spaces; paragraph breaks (blank
/// lines) and list items (lines starting with `- `, `* ` or `1. `) stay.
pub(crate) fn flow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                match field {
                    serde_json::Value::String(text) if key == "description" => *text = flowing(text),
                    _ => flow_descriptions(field),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(flow_descriptions),
        _ => {}
    }
}

fn flowing(text: &str) -> String {
    let starts_item = |line: &str| {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        line.starts_with("- ") || line.starts_with("* ") || (digits > 0 && line[digits..].starts_with(". "))
    };
    text.split("\n\n")
        .map(|paragraph| {
            let mut out = String::with_capacity(paragraph.len());
            for (i, line) in paragraph.split('\n').enumerate() {
                let line = line.trim_end();
                if i > 0 {
                    out.push(if starts_item(line.trim_start()) { '\n' } else { ' ' });
                    out.push_str(line.trim_start());
                } else {
                    out.push_str(line);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `value` as YAML that YAML 1.1 readers load the same way. serde_yaml writes YAML 1.2, where an
/// enum value such as `off` is a plain string; kubectl and Helm read YAML 1.1 (go-yaml), where
/// `off`, `on`, `yes`, `no`, `y` and `n` are booleans, so those scalars are quoted.
pub(crate) fn to_yaml_for_kubernetes<T: serde::Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(value)?;
    let mut out = String::with_capacity(yaml.len());
    // The indentation of the line that opened a block scalar (`|`, `>`): its text is not touched.
    let mut block_parent: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if block_parent.is_some_and(|parent| line.trim().is_empty() || indent > parent) {
            out.push_str(line);
        } else {
            block_parent = None;
            let opens_block = line
                .trim_end()
                .rsplit(' ')
                .next()
                .is_some_and(|last| ["|", "|-", "|+", ">", ">-", ">+"].contains(&last));
            if opens_block {
                block_parent = Some(indent);
            }
            out.push_str(&quote_yaml11_boolean(line));
        }
        out.push('\n');
    }
    Ok(out)
}

/// `line` with its plain scalar value (after `- ` or `: `) quoted when YAML 1.1 reads it as a boolean.
fn quote_yaml11_boolean(line: &str) -> std::borrow::Cow<'_, str> {
    const YAML11_BOOLEANS: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];
    let start = line.rfind(": ").map(|i| i + 2).or_else(|| {
        let trimmed = line.trim_start();
        trimmed.starts_with("- ").then(|| line.len() - trimmed.len() + 2)
    });
    match start {
        Some(start) if YAML11_BOOLEANS.contains(&line[start..].to_ascii_lowercase().as_str()) => {
            format!("{}'{}'", &line[..start], &line[start..]).into()
        }
        _ => line.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::{flow_descriptions, quote_yaml11_boolean, to_yaml_for_kubernetes};

    #[test]
    fn descriptions_flow_and_keep_paragraphs_and_lists() {
        let mut value = serde_json::json!({
            "description": "The time limit in seconds for each job\nattempt and for the whole build.\n\nSecond paragraph\ncontinues here.",
            "properties": {
                "mode": {"description": "What is cached:\n- max every stage\n- min only the last\n1. first\nstill first", "type": "string"},
                "description": {"type": "string", "description": "a field named\ndescription"}
            },
            "enum": ["a\nb"]
        });
        flow_descriptions(&mut value);
        assert_eq!(
            value["description"],
            "The time limit in seconds for each job attempt and for the whole build.\n\nSecond paragraph continues here."
        );
        assert_eq!(
            value["properties"]["mode"]["description"],
            "What is cached:\n- max every stage\n- min only the last\n1. first still first"
        );
        assert_eq!(
            value["properties"]["description"]["description"],
            "a field named description"
        );
        assert_eq!(value["enum"][0], "a\nb", "only descriptions change");
    }

    #[test]
    fn the_committed_crd_has_no_hard_line_breaks() {
        let yaml = super::crd_yaml().unwrap();
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let mut stack = vec![&crd];
        let mut seen = 0;
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::Object(fields) => {
                    if let Some(serde_json::Value::String(text)) = fields.get("description") {
                        seen += 1;
                        for paragraph in text.split("\n\n") {
                            assert!(
                                paragraph.lines().skip(1).all(|l| l.starts_with("- ")),
                                "a hard line break in {text:?}"
                            );
                        }
                    }
                    stack.extend(fields.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        assert!(seen > 50, "{seen} descriptions");
    }

    #[test]
    fn block_scalars_are_left_alone() {
        let value = serde_json::json!({"description": "first line\n- no\nlast", "enum": ["max", "off"]});
        let yaml = to_yaml_for_kubernetes(&value).unwrap();
        assert!(yaml.contains("\n  - no\n"), "{yaml}");
        assert!(yaml.contains("- 'off'"), "{yaml}");
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn yaml11_booleans_are_quoted_and_nothing_else() {
        for (line, want) in [
            ("  - off", "  - 'off'"),
            ("    - On", "    - 'On'"),
            ("  default: no", "  default: 'no'"),
            ("  - y", "  - 'y'"),
            ("  - max", "  - max"),
            ("  - offline", "  - offline"),
            ("  description: turn it off", "  description: turn it off"),
            ("  default: 'off'", "  default: 'off'"),
            ("  off:", "  off:"),
        ] {
            assert_eq!(quote_yaml11_boolean(line), want, "{line}");
        }
    }
}
