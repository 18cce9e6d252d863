//! What the signing side needs of a repository beside indexes: small blobs (pushed and read back
//! by digest), manifests by tag with or without a `subject`, and the labels of an index's images.

use reqwest::{Method, StatusCode, Url};

use super::{
    BlobRead, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, RegistryClient, RegistryError, RegistryObject,
    client::{Repo, Request},
    index::pick_platform_entry,
    parse::{Manifest, is_sha256_digest, parse_manifest},
    sha256_digest,
};
use crate::api::Platform;

/// A manifest as the registry served it, its digest checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: Option<String>,
}

/// One image of an index and the labels of its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexChild {
    pub platform: Platform,
    pub digest: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RegistryClient {
    /// The manifest `reference` (a tag or digest) of `repository`, `None` when there is none.
    pub async fn manifest(&self, repository: &str, reference: &str) -> Result<Option<StoredManifest>, RegistryError> {
        let repo = self.repo(repository, "latest")?;
        let image = shown(&repo, reference);
        let fetched = match self.get_manifest(&repo, reference, &image).await {
            Err(RegistryError::RepositoryMissing { .. }) => None,
            other => other?,
        };
        Ok(fetched.map(|f| StoredManifest {
            bytes: f.bytes,
            digest: f.digest,
            media_type: f.content_type,
        }))
    }

    /// PUT `bytes` as `<tag>` of `repository` with `media_type`, checking the registry stored
    /// exactly them. True when the registry says it indexed the manifest's `subject` for the
    /// referrers API (the `OCI-Subject` answer header).
    pub async fn put_tagged(
        &self,
        repository: &str,
        tag: &str,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<bool, RegistryError> {
        let repo = self.repo(repository, tag)?;
        let image = repo.image(tag);
        let digest = sha256_digest(&bytes);
        let stored = self
            .put_manifest(&repo, tag, &image, media_type, bytes, &digest)
            .await?;
        Ok(stored.subject_indexed)
    }

    /// Push `bytes` as a blob of `repository` (a monolithic upload: POST, then one PUT) and return
    /// its digest. A blob the registry already has is not sent again.
    pub async fn push_blob(&self, repository: &str, bytes: Vec<u8>) -> Result<String, RegistryError> {
        let repo = self.repo(repository, "latest")?;
        let digest = sha256_digest(&bytes);
        let image = repo.image_at(&digest);
        let request = |method, object, reference, body: Option<Vec<u8>>| Request {
            method,
            repo: &repo,
            object,
            reference,
            image: &image,
            operation: "pushing a blob to",
            push: true,
            accept: None,
            content_type: body.as_ref().map(|_| "application/octet-stream"),
            body,
            limit: MAX_MANIFEST_BYTES,
            what: "answer",
        };
        let head = self
            .transport
            .send(&request(Method::HEAD, RegistryObject::Blob, &digest, None))
            .await?;
        if head.status.is_success() {
            return Ok(digest);
        }
        let started = self
            .transport
            .send(&request(Method::POST, RegistryObject::Upload, "", None))
            .await?;
        if started.status != StatusCode::ACCEPTED {
            return Err(self.status_error(&repo, &image, "pushing a blob to", &started));
        }
        let location = started.header("location").unwrap_or_default();
        let session = upload_session(&repo, location).map_err(|reason| RegistryError::InvalidRequest {
            image: image.clone(),
            reason,
        })?;
        let separator = if session.contains('?') { '&' } else { '?' };
        let reference = format!("{session}{separator}digest={digest}");
        let done = self
            .transport
            .send(&request(Method::PUT, RegistryObject::Upload, &reference, Some(bytes)))
            .await?;
        if done.status != StatusCode::CREATED {
            return Err(self.status_error(&repo, &image, "pushing a blob to", &done));
        }
        if let Some(answered) = done.header("docker-content-digest").filter(|d| *d != digest) {
            return Err(RegistryError::DigestMismatch {
                image,
                what: "the Docker-Content-Digest the registry answered for the blob",
                found: answered.to_string(),
                expected: digest,
            });
        }
        Ok(digest)
    }

    /// The blob `digest` of `repository`, at most `limit` bytes, its sha256 checked.
    pub async fn blob(&self, repository: &str, digest: &str, limit: usize) -> Result<Vec<u8>, RegistryError> {
        let repo = self.repo(repository, "latest")?;
        let image = repo.image_at(digest);
        if !is_sha256_digest(digest) {
            return Err(RegistryError::InvalidRequest {
                image,
                reason: format!("{digest:?} is not a sha256 digest"),
            });
        }
        self.get_blob(&repo, &image, digest, limit, BlobRead::ATTACHED)
            .await?
            .map_err(|resp| self.status_error(&repo, &image, BlobRead::ATTACHED.operation, &resp))
    }

    /// Each platform image of `index` (a manifest of `repository`, as [`Self::manifest`] read it)
    /// with its config's labels, every manifest and config checked against its digest and platform.
    pub async fn index_children(
        &self,
        repository: &str,
        index: &StoredManifest,
    ) -> Result<Vec<IndexChild>, RegistryError> {
        let repo = self.repo(repository, "latest")?;
        let image = repo.image_at(&index.digest);
        let invalid = |reason: String| RegistryError::InvalidManifest {
            image: image.clone(),
            reason,
        };
        let Manifest::Index(index) =
            parse_manifest(&index.bytes, index.media_type.as_deref()).map_err(|e| invalid(e.0))?
        else {
            return Err(invalid("it is a single image, not an index".into()));
        };
        let mut children = Vec::new();
        for entry in index.manifests.iter().filter(|e| !e.is_attestation()) {
            let Some(platform) = entry.platform.as_ref().and_then(|p| {
                Platform::ALL
                    .into_iter()
                    .find(|q| q.matches_config(&p.os, &p.architecture, p.variant.as_deref()))
            }) else {
                continue;
            };
            if pick_platform_entry(&index, platform).map(|e| &e.descriptor.digest) != Some(&entry.descriptor.digest) {
                continue;
            }
            let child = repo.image_at(&entry.descriptor.digest);
            let config = self.verify_child(&repo, &child, &entry.descriptor, platform).await?;
            children.push(IndexChild {
                platform,
                digest: entry.descriptor.digest.clone(),
                labels: config.labels,
            });
        }
        Ok(children)
    }
}

/// `<repository>:<tag>` or `<repository>@<digest>`.
fn shown(repo: &Repo, reference: &str) -> String {
    if reference.starts_with("sha256:") {
        repo.image_at(reference)
    } else {
        repo.image(reference)
    }
}

/// What follows `/v2/<name>/blobs/uploads/` in an upload's `Location` (relative, or absolute on
/// the registry's own origin): the session and its query. Anything else is refused, so the blob
/// and the credentials only ever go to this repository's upload path.
fn upload_session(repo: &Repo, location: &str) -> Result<String, String> {
    let url = Url::options()
        .base_url(Some(&repo.url))
        .parse(location)
        .map_err(|e| format!("the registry answered an upload location that is not a URL ({e})"))?;
    if url.origin() != repo.url.origin() {
        return Err(format!(
            "the registry answered an upload location on another host ({}); refused",
            url.origin().ascii_serialization()
        ));
    }
    let prefix = format!("{}/blobs/uploads/", repo.url.path());
    let session = url
        .path()
        .strip_prefix(&prefix)
        .filter(|s| !s.is_empty() && !s.contains(['/', '\\']) && !s.contains(".."))
        .ok_or_else(|| format!("the registry answered an upload location outside {prefix}; refused"))?;
    Ok(match url.query() {
        Some(query) => format!("{session}?{query}"),
        None => session.to_string(),
    })
}

/// The largest signature or provenance blob read back (a DSSE envelope of a provenance statement
/// is a few kilobytes).
pub const MAX_ARTIFACT_BLOB_BYTES: usize = MAX_CONFIG_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_stay_on_the_repositorys_upload_path() {
        let repo = Repo::parse("127.0.0.1:5000/team/app", "v1", &["127.0.0.1:5000".into()]).expect("repo");
        let ok = |l: &str| upload_session(&repo, l);
        assert_eq!(
            ok("/v2/team/app/blobs/uploads/abc-1?_state=x%3D").as_deref(),
            Ok("abc-1?_state=x%3D")
        );
        assert_eq!(
            ok("http://127.0.0.1:5000/v2/team/app/blobs/uploads/u").as_deref(),
            Ok("u")
        );
        for bad in [
            "http://evil.example/v2/team/app/blobs/uploads/u",
            "https://127.0.0.1:5000/v2/team/app/blobs/uploads/u",
            "/v2/team/other/blobs/uploads/u",
            "/v2/team/app/blobs/uploads/",
            "/v2/team/app/blobs/uploads/a/../../../x",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} accepted");
        }
    }
}
