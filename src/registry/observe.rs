//! A hook told about every registry request, so the controller can count them in its metrics
//! (what an ECR policy must allow follows from the method and the object).

use reqwest::{Method, StatusCode};

/// What a distribution API request is about: `/v2/<name>/manifests/…`, `/v2/<name>/blobs/…` or
/// a blob upload, `/v2/<name>/blobs/uploads/…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistryObject {
    Manifest,
    Blob,
    Upload,
}

impl RegistryObject {
    /// The path segment after `/v2/<name>/`.
    pub fn path_segment(self) -> &'static str {
        match self {
            RegistryObject::Manifest => "manifests",
            RegistryObject::Blob => "blobs",
            RegistryObject::Upload => "blobs/uploads",
        }
    }

    /// The name used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryObject::Manifest => "manifest",
            RegistryObject::Blob => "blob",
            RegistryObject::Upload => "upload",
        }
    }
}

/// Told about each attempt of each registry request (retries and the unauthenticated first try
/// included; token-server requests excluded).
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    /// One attempt ended: the answer's status, or `None` when no answer came.
    fn attempted(&self, method: &Method, object: RegistryObject, status: Option<StatusCode>);
}
