//! The command line. Every flag can also be set by an environment variable (shown in `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "multiarch-operator",
    version,
    about = "Builds one container image natively for several platforms on AWS Batch and publishes the multi-platform image index",
    long_about = "Builds one container image natively for several platforms on AWS Batch and publishes the multi-platform image index.\n\n\
        A MultiArchBuild names a git revision, a target repository and the platforms; one Batch job per platform builds and \
        pushes <tag>-<arch> on a queue whose compute is native to that platform, then the operator assembles and pushes the \
        image index as <tag> and records its digest.\n\n\
        Run `controller` in a cluster, or `build -f FILE` to run one build from a file without a cluster."
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "MAB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Kubernetes controller: reconcile MultiArchBuilds in the cluster of the current
    /// kubeconfig context (or the in-cluster service account).
    Controller(ControllerArgs),
    /// Run one build described by a MultiArchBuild YAML file, without a cluster.
    Build(BuildArgs),
    /// Print a build's logs (its Batch jobs' CloudWatch Logs streams), each line prefixed by its
    /// platform; `-f` follows them until every job has ended. Reads the MultiArchBuild from the
    /// cluster of the current kubeconfig context.
    Logs(LogsArgs),
    /// Check an image's signature and SLSA provenance with a public key: the signature of the
    /// index, the provenance's subjects (the index and every platform image) and the commit it
    /// names. Exits 1 with a one-line reason when anything does not verify.
    Verify(VerifyArgs),
    /// Print the CustomResourceDefinition YAML (what `crds/` holds).
    Crd,
    /// Print the version.
    Version,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "MAB_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Job definition used when a build sets no spec.jobDefinition.
    #[arg(long, env = "MAB_DEFAULT_JOB_DEFINITION", default_value = "multiarch-builder")]
    pub default_job_definition: String,

    /// Seconds between two DescribeJobs sweeps over all live jobs.
    #[arg(long, env = "MAB_POLL_INTERVAL_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_interval_seconds: u64,

    /// Builds reconciled at the same time.
    #[arg(long, env = "MAB_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "MAB_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,

    /// Seconds after a build's deletion during which the controller tries to terminate its live
    /// Batch jobs; after that the finalizer is released anyway, with a Warning event, so an
    /// unreachable AWS never blocks a deletion for ever.
    #[arg(long, env = "MAB_CLEANUP_GRACE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub cleanup_grace_seconds: u64,

    /// Seconds after a build finished when it is deleted, for builds that set no
    /// `spec.ttlSecondsAfterFinished`; 0 keeps them forever.
    #[arg(long, env = "MAB_DEFAULT_TTL_SECONDS_AFTER_FINISHED", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub default_ttl_seconds_after_finished: u64,

    /// Seconds the reconcile loop may make no progress while builds wait for it before `/healthz`
    /// answers 503 (so the kubelet restarts a stuck replica); at least 1. Far above a reconcile's
    /// time: its slowest calls time out well before.
    #[arg(long, env = "MAB_HEALTH_STALL_SECONDS", default_value_t = crate::controller::http::DEFAULT_STALL_BOUND.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub health_stall_seconds: u64,

    /// Namespace of the leader-election Lease (in a pod: its own namespace, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease; replicas sharing it never reconcile at the same time.
    #[arg(long, env = "MAB_LEASE_NAME", default_value = "multiarch-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease (in a pod: the pod name). Default: the host name and a
    /// random suffix.
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub allow: AllowArgs,

    #[command(flatten)]
    pub signing: SigningArgs,
}

/// How each index and its provenance are signed.
#[derive(Args, Debug, Clone, Default)]
pub struct SigningArgs {
    /// The key that signs each index and its SLSA provenance, in the formats cosign, Kyverno and
    /// policy-controller verify: `awskms:///KEY` (the key id, key ARN, `alias/NAME` or alias ARN of
    /// an ECC_NIST_P256 SIGN_VERIFY KMS key; `awskms://HOST/KEY` for another KMS endpoint) or
    /// `file:///path/key.pem` (an unencrypted EC P-256 private key). Without a key the provenance
    /// is attached unsigned. With one, status.image is written only once both are pushed and read
    /// back verified.
    #[arg(long, env = "MAB_SIGNING_KEY", value_name = "URI", value_parser = parse_key_uri)]
    pub signing_key: Option<crate::signing::KeyUri>,
}

fn parse_key_uri(uri: &str) -> Result<crate::signing::KeyUri, String> {
    uri.parse().map_err(|e| match e {
        crate::signing::SigningError::BadUri { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Which registries builds may push to.
#[derive(Args, Debug, Clone, Default)]
pub struct AllowArgs {
    /// Registry hosts (`host[:port]`, as written in spec.output.repository) builds may use besides
    /// the ECR registries of the controller's own AWS account and partition, comma-separated. A
    /// build naming any other host fails before any request is made to it.
    #[arg(long, env = "MAB_ALLOWED_REGISTRIES", value_delimiter = ',')]
    pub allowed_registries: Vec<String>,
}

/// How to reach the image registry (ECR needs nothing: its token comes from the AWS credentials).
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry hosts to talk to over plain http (e.g. a local `127.0.0.1:5000`), comma-separated.
    /// Also the only hosts a token realm or a redirect may send the client to over plain http.
    #[arg(long, env = "MAB_REGISTRY_PLAIN_HTTP", value_delimiter = ',')]
    pub registry_plain_http: Vec<String>,

    /// Registry credentials: a Docker config.json (`{"auths": {"HOST": {"auth": "base64(user:password)"}}}`,
    /// or `username`/`password`), e.g. a kubernetes.io/dockerconfigjson Secret. Each credential is
    /// sent only for the registry host it is listed under (`https://host/v1/` keys count as `host`),
    /// never to another host. Read at start; ECR hosts use the ECR token instead.
    #[arg(long, env = "MAB_REGISTRY_AUTH_FILE", value_name = "PATH", value_parser = crate::registry::AuthFile::parse)]
    pub registry_auth_file: Option<crate::registry::AuthFile>,

    /// `REGISTRY=AUTHHOST`: a Bearer token server host the registry may send the client to besides
    /// its own host (e.g. `registry.gitlab.com=gitlab.com`); repeatable, comma-separated in the
    /// environment. Either side may carry a `:port`. Docker Hub's `auth.docker.io` is built in.
    #[arg(
        long = "registry-auth-host",
        env = "MAB_REGISTRY_AUTH_HOSTS",
        value_name = "REGISTRY=AUTHHOST",
        value_delimiter = ',',
        value_parser = crate::registry::AuthHost::parse
    )]
    pub registry_auth_hosts: Vec<crate::registry::AuthHost>,

    /// Let the registry client contact loopback addresses (127.0.0.0/8, ::1), for a local stack.
    /// Link-local and metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::/64) are never
    /// contacted.
    #[arg(long, env = "MAB_REGISTRY_ALLOW_LOOPBACK")]
    pub registry_allow_loopback: bool,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The MultiArchBuild YAML file to build (`-` for standard input).
    #[arg(short = 'f', long = "file", env = "MAB_BUILD_FILE")]
    pub file: PathBuf,

    /// Wait until the build ends and print the pinned image (`repository@sha256:...`).
    #[arg(long, env = "MAB_WAIT")]
    pub wait: bool,

    /// With --wait: stream the jobs' logs (CloudWatch Logs) to stderr as they come, each line
    /// prefixed by its platform. Without it each platform's latest line is shown: on a terminal
    /// in a live line, elsewhere whenever it changes.
    #[arg(long, env = "MAB_FOLLOW_LOGS", requires = "wait")]
    pub follow_logs: bool,

    /// Print the Batch requests the build would send, and send none.
    #[arg(long, env = "MAB_DRY_RUN")]
    pub dry_run: bool,

    /// Job definition used when the file sets no spec.jobDefinition.
    #[arg(long, env = "MAB_DEFAULT_JOB_DEFINITION", default_value = "multiarch-builder")]
    pub default_job_definition: String,

    /// Also accept `file:///` git URLs: for a local stack whose builder has the repository mounted.
    #[arg(long, env = "MAB_ALLOW_LOCAL_GIT")]
    pub allow_local_git: bool,

    /// AWS region of the Batch queues (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's
    /// region; without one the command stops before contacting AWS).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Seconds between two looks at the jobs while waiting.
    #[arg(long, env = "MAB_POLL_INTERVAL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_interval_seconds: u64,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub allow: AllowArgs,

    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The image: `repository@sha256:...` (what status.image names) or `repository:tag`.
    #[arg(env = "MAB_VERIFY_IMAGE")]
    pub image: String,

    /// The public key that must have signed it: a PEM file (`cosign.pub`, or the PEM of `aws kms
    /// get-public-key`), `file:///path`, or `awskms:///KEY` (read with kms:GetPublicKey).
    #[arg(long, env = "MAB_VERIFY_KEY", value_name = "KEY")]
    pub key: String,

    /// Also refuse unless the provenance and every platform image name this commit (40 hex digits).
    #[arg(long, env = "MAB_VERIFY_COMMIT", value_name = "SHA")]
    pub commit: Option<String>,

    /// AWS region of an ECR registry or a KMS key (default: AWS_REGION, AWS_DEFAULT_REGION or the
    /// profile's); not needed for other registries and PEM keys.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The MultiArchBuild's name.
    #[arg(env = "MAB_BUILD_NAME")]
    pub name: String,

    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, env = "MAB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Keep printing new lines until every job has ended.
    #[arg(short = 'f', long, env = "MAB_FOLLOW")]
    pub follow: bool,

    /// Only this platform's lines (e.g. `linux/arm64`).
    #[arg(long, env = "MAB_PLATFORM")]
    pub platform: Option<String>,

    /// AWS region of the logs (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Seconds between two looks at the logs and the build with `-f`.
    #[arg(long, env = "MAB_POLL_INTERVAL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_interval_seconds: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    /// The `controller` command's `--health-stall-seconds` as parsed from `args`.
    fn health_stall_seconds(args: &[&str]) -> Result<u64, String> {
        let argv = ["multiarch-operator", "controller"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            Command::Controller(controller) => Ok(controller.health_stall_seconds),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn health_stall_seconds_defaults_to_ten_minutes_and_refuses_zero() {
        assert_eq!(health_stall_seconds(&[]), Ok(600));
        assert_eq!(health_stall_seconds(&["--health-stall-seconds", "90"]), Ok(90));
        let zero = health_stall_seconds(&["--health-stall-seconds", "0"]).unwrap_err();
        assert!(
            zero.starts_with(
                "error: invalid value '0' for '--health-stall-seconds <HEALTH_STALL_SECONDS>': 0 is not in 1..=86400"
            ),
            "{zero}"
        );
        assert!(health_stall_seconds(&["--health-stall-seconds", "ten"]).is_err());
    }

    #[test]
    fn every_flag_is_also_an_env_var() {
        let cli = Cli::command();
        for sub in cli.get_subcommands().chain(std::iter::once(&cli)) {
            for arg in sub.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(
                    builtin || arg.get_env().is_some(),
                    "{} --{} has no env var",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
