//! What can go wrong talking to a registry, each case with a label and a transient/permanent class.

/// A registry failure. Messages name the image reference and say what was expected and what was
/// found; they are meant for `status.message` and Warning events as they are.
#[derive(thiserror::Error, Debug)]
pub enum RegistryError {
    /// The repository string cannot be parsed as `host[:port]/name`.
    #[error("{repository:?} is not a valid image repository: {reason}")]
    InvalidReference { repository: String, reason: String },

    /// The caller asked for something that cannot be assembled (no platforms, a platform twice).
    #[error("cannot assemble {image}: {reason}")]
    InvalidRequest { image: String, reason: String },

    /// The registry refused our credentials (401) or denied access (403).
    #[error("{operation} {image} was refused by {registry} (HTTP {status}{detail}): {hint}")]
    AuthFailed {
        operation: &'static str,
        image: String,
        registry: String,
        status: u16,
        detail: String,
        hint: &'static str,
    },

    /// GetAuthorizationToken failed or returned no usable token.
    #[error("cannot get an ECR authorization token for {registry}: {reason}")]
    EcrToken {
        registry: String,
        reason: String,
        transient: bool,
    },

    /// The repository does not exist (`NAME_UNKNOWN`).
    #[error(
        "repository {repository} does not exist{detail}: create it first (ECR does not create repositories on push)"
    )]
    RepositoryMissing { repository: String, detail: String },

    /// The manifest a platform's job pushed is not in the repository.
    #[error("{image} does not exist: the {platform} job reported pushing it, but the registry does not have it")]
    PlatformImageMissing { image: String, platform: String },

    /// The manifest a platform's job pushed does not carry this build's labels.
    #[error("{image} is not what this build's {platform} job built: {mismatch}")]
    ProvenanceMismatch {
        image: String,
        platform: String,
        mismatch: String,
    },

    /// The per-platform image is not the platform it was pushed for.
    #[error("{image} is {found}, expected {expected}: {hint}")]
    PlatformMismatch {
        image: String,
        found: String,
        expected: String,
        hint: String,
    },

    /// The tag exists with other content and the repository does not allow overwriting it.
    #[error(
        "{image} already exists as {existing} and the repository's tags are immutable: expected to push {ours}; use a new tag or delete the old image"
    )]
    ImmutableTag {
        image: String,
        existing: String,
        ours: String,
    },

    /// Content does not hash to the digest that names it, or the registry stored other bytes.
    #[error("{image}: {what} is {found}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: &'static str,
        found: String,
        expected: String,
    },

    /// A manifest or config the registry returned cannot be used (malformed JSON, wrong media
    /// type, schema 1, not a container image).
    #[error("{image}: {reason}")]
    InvalidManifest { image: String, reason: String },

    /// A body larger than we accept: refused, never buffered.
    #[error("{image}: the {what} is larger than the {limit} bytes accepted{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    BodyTooLarge {
        image: String,
        what: &'static str,
        /// The size, when the registry said it (descriptor or Content-Length).
        size: Option<u64>,
        limit: usize,
    },

    /// The registry kept answering 5xx or 429, or could not be reached, after the in-client retries.
    #[error("{operation} {image} failed after {attempts} attempts: {last}")]
    Unavailable {
        operation: &'static str,
        image: String,
        attempts: u32,
        last: String,
    },

    /// The registry answered a TLS handshake in plain HTTP: it is a plain-http registry the
    /// client was not told about. Retrying cannot help.
    #[error("registry {host} answered plain HTTP; if it is a plain-http registry, pass --registry-plain-http {host}")]
    PlainHttp { host: String },

    /// Any other 4xx answer.
    #[error("{operation} {image} was rejected by the registry (HTTP {status}{detail})")]
    Rejected {
        operation: &'static str,
        image: String,
        status: u16,
        detail: String,
    },
}

impl RegistryError {
    /// Short CamelCase name used as the event reason and the failures metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RegistryError::InvalidReference { .. } => "InvalidReference",
            RegistryError::InvalidRequest { .. } => "InvalidRequest",
            RegistryError::AuthFailed { .. } => "RegistryAuthFailed",
            RegistryError::EcrToken { .. } => "EcrTokenFailed",
            RegistryError::RepositoryMissing { .. } => "RepositoryMissing",
            RegistryError::PlatformImageMissing { .. } => "PlatformImageMissing",
            RegistryError::PlatformMismatch { .. } => "PlatformMismatch",
            RegistryError::ProvenanceMismatch { .. } => "ProvenanceMismatch",
            RegistryError::ImmutableTag { .. } => "ImmutableTagConflict",
            RegistryError::DigestMismatch { .. } => "DigestMismatch",
            RegistryError::InvalidManifest { .. } => "InvalidManifest",
            RegistryError::BodyTooLarge { .. } => "ResponseTooLarge",
            RegistryError::Unavailable { .. } => "RegistryUnavailable",
            RegistryError::Rejected { .. } => "RegistryRejected",
            RegistryError::PlainHttp { .. } => "RegistryPlainHttp",
        }
    }

    /// True when trying again later may succeed (5xx, 429, network, after the client's own
    /// retries); false when the build should fail with this message.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unavailable { .. } => true,
            RegistryError::EcrToken { transient, .. } => *transient,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_camel_case_and_only_unavailable_is_transient() {
        let e = RegistryError::PlatformMismatch {
            image: "127.0.0.1:5000/demo:v1-arm64".into(),
            found: "linux/amd64".into(),
            expected: "linux/arm64".into(),
            hint: "the build ran on the wrong architecture".into(),
        };
        assert_eq!(
            e.to_string(),
            "127.0.0.1:5000/demo:v1-arm64 is linux/amd64, expected linux/arm64: the build ran on the wrong architecture"
        );
        assert_eq!(e.label(), "PlatformMismatch");
        assert!(!e.is_transient());
        let u = RegistryError::Unavailable {
            operation: "GET",
            image: "x".into(),
            attempts: 4,
            last: "HTTP 503".into(),
        };
        assert!(u.is_transient());
        assert!(u.label().chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
