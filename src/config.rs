//! Wiring from command-line settings to clients: the AWS SDK configuration and the registry client.

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};

use crate::{
    batch::{BatchExecutor, registry_auth},
    cli::{AllowArgs, RegistryArgs, SigningArgs},
    engine::Engine,
    registry::{RegistryAuth, RegistryClient, RegistryOptions, RequestObserver},
    signing::Signer,
    tenancy::AllowedRegistries,
};

/// The AWS configuration from the usual chain (env, profile, IRSA web identity, instance role).
/// `AWS_ENDPOINT_URL` points every client at another endpoint (the local stack uses it). In a
/// `fips` build every AWS connection, the credential providers' included, is on the FIPS module.
pub async fn aws() -> Result<SdkConfig, String> {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    #[cfg(feature = "fips")]
    let loader = loader.http_client(crate::crypto::aws_http_client());
    let config = loader.load().await;
    if config.region().is_none() {
        return Err("no AWS region: set AWS_REGION (or a profile with a region)".into());
    }
    Ok(config)
}

/// [`aws`] for the command line: the region comes from `region` (`--region`), else the
/// environment or the profile, and without one the command stops here with one line, before the
/// SDK would probe the EC2 instance metadata service (a laptop has none: seconds of retries and
/// warnings for an answer that is only "no region").
pub async fn aws_for_cli(region: Option<&str>) -> Result<SdkConfig, String> {
    use aws_config::meta::region::ProvideRegion;
    let region = match region.filter(|r| !r.trim().is_empty()) {
        Some(r) => Some(aws_config::Region::new(r.trim().to_owned())),
        None => match aws_config::environment::EnvironmentVariableRegionProvider::new()
            .region()
            .await
        {
            Some(r) => Some(r),
            None => aws_config::profile::ProfileFileRegionProvider::new().region().await,
        },
    };
    let Some(region) = region else {
        return Err(NO_REGION.into());
    };
    let loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    #[cfg(feature = "fips")]
    let loader = loader.http_client(crate::crypto::aws_http_client());
    Ok(loader.load().await)
}

/// What the command line says when no region is set anywhere.
pub const NO_REGION: &str = "no AWS region: set AWS_REGION or --region (or a profile with a region)";

/// The registry client for a repository: ECR's token for ECR hosts, else the credentials of
/// `--registry-auth-file` (each sent only for its own host) or anonymous.
pub fn registry(args: &RegistryArgs, repository: &str, aws: &SdkConfig) -> RegistryClient {
    registry_with(args, repository, || aws_sdk_ecr::Client::new(aws), None)
}

/// [`registry`] with the ECR client to use for an ECR host and an observer of every request (the
/// controller counts both in its metrics).
pub fn registry_with(
    args: &RegistryArgs,
    repository: &str,
    ecr: impl FnOnce() -> aws_sdk_ecr::Client,
    observer: Option<Arc<dyn RequestObserver>>,
) -> RegistryClient {
    let auth = if registry_auth(repository) == "ecr" {
        RegistryAuth::Ecr(ecr())
    } else {
        match &args.registry_auth_file {
            Some(file) => RegistryAuth::Basic(file.credentials.clone()),
            None => RegistryAuth::Anonymous,
        }
    };
    RegistryClient::new(RegistryOptions {
        auth,
        plain_http_hosts: args.registry_plain_http.clone(),
        auth_hosts: args.registry_auth_hosts.clone(),
        allow_loopback: args.registry_allow_loopback,
        observer,
    })
}

/// The signer of `--signing-key`, if one is set: a file key is read now, so an unusable one stops
/// the command at start; a KMS key is first used when something is signed, by a client of `kms`.
pub fn signer(args: &SigningArgs, kms: aws_sdk_kms::config::Builder) -> Result<Option<Arc<Signer>>, String> {
    let Some(uri) = &args.signing_key else {
        return Ok(None);
    };
    let signer = Signer::open(uri.clone(), kms).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(signer)))
}

/// An engine for builds that push to `repository`.
pub fn engine(
    aws: &SdkConfig,
    args: &RegistryArgs,
    signer: Option<Arc<Signer>>,
    default_job_definition: &str,
    repository: &str,
) -> Engine {
    Engine {
        batch: BatchExecutor::new(
            aws_sdk_batch::Client::new(aws),
            aws_sdk_cloudwatchlogs::Client::new(aws),
        ),
        registry: registry(args, repository, aws),
        default_job_definition: default_job_definition.into(),
        signer,
    }
}

/// The registries builds may use: the ECR registries of the account the AWS credentials belong
/// to (STS GetCallerIdentity, which needs no IAM permission) in their region's partition, and the
/// hosts listed in `args`.
pub async fn allowed_registries(aws: &SdkConfig, args: &AllowArgs) -> Result<AllowedRegistries, String> {
    let region = aws.region().map(ToString::to_string).unwrap_or_default();
    let identity = aws_sdk_sts::Client::new(aws)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot learn the AWS account (STS GetCallerIdentity), so the allowed registries are unknown: {}",
                crate::util::error_chain(&e)
            )
        })?;
    let account = identity.account().unwrap_or_default().to_string();
    Ok(AllowedRegistries {
        own: (!account.is_empty()).then_some((account, region)),
        listed: args
            .allowed_registries
            .iter()
            .filter(|h| !h.is_empty())
            .cloned()
            .collect(),
    })
}
