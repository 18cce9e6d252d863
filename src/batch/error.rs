//! Batch and CloudWatch Logs errors, classified the way the controller requeues them.

use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::{ProvideErrorMetadata, SdkError};

use crate::api::Platform;

/// Error codes AWS services use for "slow down". Batch answers `TooManyRequestsException` (HTTP
/// 429); CloudWatch Logs `ThrottlingException`; the rest are spellings other AWS services and
/// proxies use for the same thing.
const THROTTLING_CODES: [&str; 8] = [
    "TooManyRequestsException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "SlowDown",
];

/// Why a Batch or CloudWatch Logs call failed. Each variant has a short [`label`](Self::label) for
/// the failures metric and the Warning event reason.
#[derive(thiserror::Error, Debug)]
pub enum BatchError {
    /// AWS asked us to slow down (HTTP 429, `TooManyRequestsException`, `ThrottlingException`):
    /// back off with jitter and try again; never a build failure.
    #[error("AWS throttled {operation}: {message}")]
    Throttled { operation: &'static str, message: String },

    /// A timeout, a connection failure, an unreadable answer or a 5xx: try again soon.
    #[error("{operation} failed, will retry: {message}")]
    Transient { operation: &'static str, message: String },

    /// AWS rejected the request (4xx other than throttling: `ClientException` for a queue or job
    /// definition that does not exist, `AccessDeniedException`, ...). Retrying the same request
    /// will not help until the configuration changes.
    #[error("{operation} was rejected by AWS: {code}: {message}")]
    Rejected {
        operation: &'static str,
        code: String,
        message: String,
    },

    /// The SubmitJob request is larger than Batch accepts.
    #[error(
        "the SubmitJob request for job {job_name} is {size} bytes, more than the {limit} bytes (30 KiB) \
         AWS Batch accepts; shorten or remove spec.buildArgs"
    )]
    RequestTooLarge {
        job_name: String,
        size: usize,
        limit: usize,
    },

    /// A request was asked for a platform the spec does not list.
    #[error("platform {platform} is not in spec.platforms")]
    PlatformNotInSpec { platform: Platform },

    /// A build argument's `valueFrom` was not resolved (a planner bug: it submits only after
    /// recording every resolved value).
    #[error("build argument {name} takes its value from another build and was not resolved")]
    UnresolvedBuildArg { name: String },

    /// AWS answered without a field it always sends (e.g. SubmitJob without `jobId`).
    #[error("{operation} answered without {field}")]
    InvalidResponse {
        operation: &'static str,
        field: &'static str,
    },
}

impl BatchError {
    /// A short, stable CamelCase name: the failures metric's label and the Warning event's reason.
    pub fn label(&self) -> &'static str {
        match self {
            BatchError::Throttled { .. } => "AwsThrottled",
            BatchError::Transient { .. } => "AwsUnavailable",
            BatchError::Rejected { .. } => "AwsRejected",
            BatchError::RequestTooLarge { .. } => "SubmitRequestTooLarge",
            BatchError::PlatformNotInSpec { .. } => "PlatformNotInSpec",
            BatchError::UnresolvedBuildArg { .. } => "UnresolvedBuildArg",
            BatchError::InvalidResponse { .. } => "AwsInvalidResponse",
        }
    }

    /// AWS asked to slow down: retry with exponential backoff and jitter.
    pub fn is_throttling(&self) -> bool {
        matches!(self, BatchError::Throttled { .. })
    }

    /// Worth a short retry (timeouts, connection errors, 5xx, malformed answers). Disjoint from
    /// [`is_throttling`](Self::is_throttling).
    pub fn is_transient(&self) -> bool {
        matches!(self, BatchError::Transient { .. } | BatchError::InvalidResponse { .. })
    }

    /// Either throttling or transient: the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.is_throttling() || self.is_transient()
    }

    /// The AWS error code of a service error, when AWS sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BatchError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Classifies an SDK error of `operation` (the AWS operation name, e.g. `DescribeJobs`).
    pub(crate) fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> BatchError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or_default().to_owned();
                let message = service
                    .err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| crate::util::error_chain(&err));
                classify(operation, status, code, message)
            }
            SdkError::ConstructionFailure(_) => BatchError::Rejected {
                operation,
                code: "ConstructionFailure".into(),
                message: crate::util::error_chain(&err),
            },
            // TimeoutError, DispatchFailure (connection refused, DNS, TLS), ResponseError
            // (unparseable answer) and anything newer.
            _ => BatchError::Transient {
                operation,
                message: crate::util::error_chain(&err),
            },
        }
    }
}

/// Classifies a service error by HTTP status and AWS error code.
fn classify(operation: &'static str, status: u16, code: String, message: String) -> BatchError {
    if status == 429 || THROTTLING_CODES.contains(&code.as_str()) {
        BatchError::Throttled { operation, message }
    } else if status >= 500 {
        BatchError::Transient { operation, message }
    } else {
        let code = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            code
        };
        BatchError::Rejected {
            operation,
            code,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_by_status_or_code() {
        let e = classify("DescribeJobs", 429, "TooManyRequestsException".into(), "slow".into());
        assert!(e.is_throttling() && !e.is_transient() && e.is_retryable());
        assert_eq!(e.label(), "AwsThrottled");
        let e = classify(
            "GetLogEvents",
            400,
            "ThrottlingException".into(),
            "Rate exceeded".into(),
        );
        assert!(e.is_throttling());
        let e = classify("DescribeJobs", 429, String::new(), "no code".into());
        assert!(e.is_throttling());
    }

    #[test]
    fn server_errors_are_transient_and_client_errors_are_rejections() {
        let e = classify("SubmitJob", 503, "ServerException".into(), "oops".into());
        assert!(e.is_transient() && !e.is_throttling());
        let e = classify(
            "SubmitJob",
            400,
            "ClientException".into(),
            "Job queue q does not exist".into(),
        );
        assert!(!e.is_retryable());
        assert_eq!(e.code(), Some("ClientException"));
        assert_eq!(
            e.to_string(),
            "SubmitJob was rejected by AWS: ClientException: Job queue q does not exist"
        );
        let e = classify("SubmitJob", 403, String::new(), "denied".into());
        assert_eq!(e.code(), Some("HTTP 403"));
    }
}
