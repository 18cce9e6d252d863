//! The registry side of a build: read and verify each per-platform image, assemble and push the
//! image index (OCI index or Docker manifest list), prove its digest, and find an existing index
//! to reuse.
//!
//! What `docker manifest create` + `push` did in CI, done more carefully:
//! - each platform's manifest is read by the digest its job reported pushing, never by a tag;
//! - that manifest may itself be an index (buildx provenance): its platform entry is used and
//!   `unknown/unknown` attestation entries are skipped;
//! - every config blob is read and its `os`/`architecture`/`variant` checked against the platform
//!   the image was built for, so an image built on the wrong architecture fails the build, and its
//!   labels must name this build, its commit and its inputs;
//! - the index is serialised once, hashed, and exactly those bytes are sent; the registry's
//!   `Docker-Content-Digest` must equal our sha256 (re-reading the tag when the header is absent);
//! - every body read is bounded ([`MAX_MANIFEST_BYTES`], [`MAX_CONFIG_BYTES`]) and every digest
//!   checked, and 5xx/429/connection failures are retried with jittered exponential backoff.
//!
//! Parsing lives in [`parse`], free of I/O, and is fuzzed (`fuzz/`).

mod address;
mod artifacts;
mod auth;
mod client;
mod credentials;
mod error;
mod index;
mod observe;
pub mod parse;
mod retry;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use tracing::{debug, info, warn};

use crate::api::{IndexMediaType, Platform};
use crate::provenance::Expected;

pub use artifacts::{IndexChild, MAX_ARTIFACT_BLOB_BYTES, StoredManifest};
pub use auth::{RegistryAuth, is_ecr_host};
pub use credentials::{AuthFile, AuthHost, Credential, HostCredentials, HostPattern};
pub use error::RegistryError;
pub use index::{PlatformImage, build_index, index_media_type, pick_platform_entry};
pub use observe::{RegistryObject, RequestObserver};
pub use retry::RetryPolicy;

use client::{Repo, Request, Response, Transport};
use index::offered_platforms;
use parse::{
    ACCEPT_MANIFESTS, DOCKER_CONFIG, Descriptor, ImageConfig, ImageManifest, Manifest, OCI_CONFIG, is_sha256_digest,
    parse_config, parse_manifest,
};

/// Manifests and indexes larger than this are refused (the limit distribution and ECR apply too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Image config blobs larger than this are refused.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub auth: RegistryAuth,
    /// Registries (`host:port` as written in the repository, e.g. `127.0.0.1:5000`) to talk plain
    /// HTTP to instead of HTTPS (also the only hosts a token realm or redirect may use http for).
    pub plain_http_hosts: Vec<String>,
    /// Token server hosts a registry may send us to besides its own host.
    pub auth_hosts: Vec<AuthHost>,
    /// Contact loopback addresses (127.0.0.0/8, ::1): for a local stack and tests. Link-local and
    /// metadata addresses are never contacted, whatever this says.
    pub allow_loopback: bool,
    /// Told about every request (the controller's metrics).
    pub observer: Option<Arc<dyn RequestObserver>>,
}

/// What a reuse check may accept.
#[derive(Clone, Copy, Debug)]
pub enum ReuseExpectation<'a> {
    /// The revision is a full commit SHA: children must carry these labels.
    Pinned(&'a Expected),
    /// The revision (named here) is a branch or tag: nothing can be proven reusable.
    Unpinned(&'a str),
}

/// What `<tag>` holds, for reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Existing {
    /// No such tag or repository.
    Absent,
    /// Something this build cannot reuse; why.
    Differs(String),
    /// An index this input provably built.
    Reusable(PushedIndex),
}

/// What to assemble: each platform with the digest its job pushed.
#[derive(Clone, Debug)]
pub struct IndexRequest<'a> {
    pub media_type: IndexMediaType,
    pub children: &'a [(Platform, String)],
    /// The labels each child must carry; `None` checks none.
    pub expected: Option<&'a Expected>,
    /// The index's annotations (OCI indexes only).
    pub annotations: BTreeMap<String, String>,
}

/// An index in the registry: its digest and, per platform, the image manifest it points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedIndex {
    /// `sha256:…` of the index bytes.
    pub digest: String,
    /// Each requested platform, in the order requested, with its image manifest digest.
    pub platforms: Vec<(Platform, String)>,
}

/// An OCI distribution client for index assembly. Cheap to clone; clones share connections and
/// credentials.
#[derive(Clone)]
pub struct RegistryClient {
    transport: Arc<Transport>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("auth", &self.transport.auth)
            .field("plain_http_hosts", &self.transport.plain_http_hosts)
            .field("retry", &self.transport.retry)
            .finish_non_exhaustive()
    }
}

/// What a manifest PUT left.
struct Stored {
    /// The registry answered `OCI-Subject`: it indexed the manifest's `subject` for the referrers
    /// API.
    subject_indexed: bool,
}

/// How a blob read is named in requests and errors.
#[derive(Clone, Copy)]
struct BlobRead {
    operation: &'static str,
    what: &'static str,
    mismatch: &'static str,
}

impl BlobRead {
    /// An image's config, checked against its platform.
    const CONFIG: BlobRead = BlobRead {
        operation: "reading the config of",
        what: "config blob",
        mismatch: "the sha256 of the config blob",
    };
    /// A signature's or an attestation's blob ([`RegistryClient::blob`]).
    const ATTACHED: BlobRead = BlobRead {
        operation: "reading a blob of",
        what: "blob",
        mismatch: "the sha256 of the blob",
    };
}

/// A manifest as read: the exact bytes, what the registry called them, and their sha256.
struct Fetched {
    bytes: Vec<u8>,
    content_type: Option<String>,
    digest: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = crate::crypto::sha256(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

impl RegistryClient {
    /// A client with the default retry policy (4 attempts, ≈ 2 s of backoff at most).
    pub fn new(options: RegistryOptions) -> Self {
        Self::with_retry_policy(options, RetryPolicy::default())
    }

    /// A client with its own retry policy (tests use short ones).
    pub fn with_retry_policy(options: RegistryOptions, retry: RetryPolicy) -> Self {
        RegistryClient {
            transport: Arc::new(Transport::new(options, retry)),
        }
    }

    fn repo(&self, repository: &str, tag: &str) -> Result<Repo, RegistryError> {
        Repo::parse(repository, tag, &self.transport.plain_http_hosts)
    }

    /// The repository of an index and `<repository>:<tag>` as messages name it; refuses an empty
    /// platform list.
    fn target(&self, repository: &str, tag: &str, platforms: &[Platform]) -> Result<(Repo, String), RegistryError> {
        let repo = self.repo(repository, tag)?;
        let image = repo.image(tag);
        if platforms.is_empty() {
            return Err(RegistryError::InvalidRequest {
                image,
                reason: "no platforms given".into(),
            });
        }
        Ok((repo, image))
    }

    /// What `<tag>` holds, judged for reuse: [`Existing::Reusable`] only when it is an index
    /// covering every platform in `platforms` whose every child verifies like an assembled one and
    /// carries the labels `expected` names (the commit and input hash; any build uid). With no
    /// `commit` pinned nothing is reusable: what a branch or tag names now is not known. The
    /// index's media type is not compared.
    pub async fn find_existing_index(
        &self,
        repository: &str,
        tag: &str,
        platforms: &[Platform],
        expected: ReuseExpectation<'_>,
    ) -> Result<Existing, RegistryError> {
        let (repo, image) = self.target(repository, tag, platforms)?;
        let fetched = match self.get_manifest(&repo, tag, &image).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(RegistryError::RepositoryMissing { .. }) => return Ok(Existing::Absent),
            Err(e) => return Err(e),
        };
        let parsed = parse_manifest(&fetched.bytes, fetched.content_type.as_deref()).map_err(|e| {
            RegistryError::InvalidManifest {
                image: image.clone(),
                reason: e.0,
            }
        })?;
        let Manifest::Index(index) = parsed else {
            debug!(%image, "existing tag is an image, not an index");
            return Ok(Existing::Differs("it is a single image, not an index".into()));
        };
        let mut entries = Vec::with_capacity(platforms.len());
        for &platform in platforms {
            match pick_platform_entry(&index, platform) {
                Some(entry) => entries.push((platform, entry.descriptor.clone())),
                None => {
                    let offered = offered_platforms(&index);
                    info!(%image, %platform, %offered, "existing index does not cover the platform");
                    return Ok(Existing::Differs(format!(
                        "it has no {platform} image (it has {offered})"
                    )));
                }
            }
        }
        let expected = match expected {
            ReuseExpectation::Pinned(expected) => expected,
            ReuseExpectation::Unpinned(revision) => {
                return Ok(Existing::Differs(format!(
                    "revision {revision:?} is not a full commit SHA, so whether the index was built from what it \
                     names now cannot be proven"
                )));
            }
        };
        let repo = &repo;
        let checks = entries.iter().map(|(platform, descriptor)| {
            let child = repo.image_at(&descriptor.digest);
            async move {
                let config = self.verify_child(repo, &child, descriptor, *platform).await?;
                Ok::<_, RegistryError>(
                    expected
                        .mismatch(&config.labels)
                        .map(|m| format!("its {platform} image's {m}")),
                )
            }
        });
        for result in futures::future::join_all(checks).await {
            match result {
                Ok(None) => {}
                Ok(Some(mismatch)) => return Ok(Existing::Differs(mismatch)),
                Err(e)
                    if e.is_transient()
                        || matches!(e, RegistryError::AuthFailed { .. } | RegistryError::EcrToken { .. }) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    warn!(%image, error = %e, "existing index has an entry that does not verify; not reusing it");
                    return Ok(Existing::Differs(format!("an entry does not verify: {e}")));
                }
            }
        }
        Ok(Existing::Reusable(PushedIndex {
            digest: fetched.digest,
            platforms: entries.into_iter().map(|(p, d)| (p, d.digest)).collect(),
        }))
    }

    /// Push the index `digest` of `repository` under each of `tags` as well: its exact bytes, read
    /// back by digest (and checked to hash to it), sent with its own media type, and each push
    /// verified against the digest like the first one. A tag that holds something else is moved
    /// (an immutable one fails with [`RegistryError::ImmutableTag`]); one that already holds this
    /// index stays as it is.
    pub async fn push_tags(&self, repository: &str, digest: &str, tags: &[String]) -> Result<(), RegistryError> {
        let Some(first) = tags.first() else {
            return Ok(());
        };
        // Each tag is checked as a reference, the way the first tag of an index is.
        let repo = self.repo(repository, first)?;
        for tag in tags {
            self.repo(repository, tag)?;
        }
        let image = repo.image_at(digest);
        if !is_sha256_digest(digest) {
            return Err(RegistryError::InvalidRequest {
                image,
                reason: format!("{digest:?} is not a sha256 digest"),
            });
        }
        let fetched =
            self.get_manifest(&repo, digest, &image)
                .await?
                .ok_or_else(|| RegistryError::InvalidManifest {
                    image: image.clone(),
                    reason: "the index to tag is not in the registry".into(),
                })?;
        let media_type = match parse_manifest(&fetched.bytes, fetched.content_type.as_deref()) {
            Ok(Manifest::Index(index)) => index.media_type,
            Ok(Manifest::Image(_)) => {
                return Err(RegistryError::InvalidManifest {
                    image,
                    reason: "it is a single image, not an index".into(),
                });
            }
            Err(e) => return Err(RegistryError::InvalidManifest { image, reason: e.0 }),
        };
        for tag in tags {
            let tagged = repo.image(tag);
            self.put_manifest(&repo, tag, &tagged, media_type, fetched.bytes.clone(), digest)
                .await?;
            info!(image = %tagged, %digest, "index tagged and verified");
        }
        Ok(())
    }

    /// Read and verify each platform's manifest by the digest its job pushed (never by a tag),
    /// assemble the index in `media_type` with `annotations` (OCI only: a Docker manifest list has
    /// none), push it as `<tag>`, and check the registry stored exactly our bytes. Each child must
    /// be an image for its platform whose labels match `expected` (`None` skips the label check).
    /// Pushing the same index again succeeds with the same digest.
    pub async fn assemble(
        &self,
        repository: &str,
        tag: &str,
        request: &IndexRequest<'_>,
    ) -> Result<PushedIndex, RegistryError> {
        let platforms: Vec<Platform> = request.children.iter().map(|(p, _)| *p).collect();
        let (repo, image) = self.target(repository, tag, &platforms)?;
        let mut seen = HashSet::new();
        if let Some(dup) = platforms.iter().find(|p| !seen.insert(**p)) {
            return Err(RegistryError::InvalidRequest {
                image,
                reason: format!("{dup} is listed twice"),
            });
        }

        let reads = request
            .children
            .iter()
            .map(|(platform, digest)| self.read_child(&repo, *platform, digest, request.expected));
        let images = futures::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;

        let annotations = match request.media_type {
            IndexMediaType::Oci => &request.annotations,
            IndexMediaType::Docker => &BTreeMap::new(),
        };
        let bytes =
            build_index(request.media_type, &images, annotations).map_err(|e| RegistryError::InvalidRequest {
                image: image.clone(),
                reason: format!("cannot serialise the index: {e}"),
            })?;
        let digest = sha256_digest(&bytes);
        self.put_manifest(&repo, tag, &image, index_media_type(request.media_type), bytes, &digest)
            .await?;
        info!(%image, %digest, platforms = images.len(), "index pushed and verified");
        Ok(PushedIndex {
            digest,
            platforms: images.into_iter().map(|i| (i.platform, i.descriptor.digest)).collect(),
        })
    }

    /// Read the manifest `digest` that `platform`'s job pushed and verify it: when it is an index
    /// (buildx provenance), its entry for the platform (attestations skipped); then the config's
    /// os/architecture/variant and, with `expected`, its labels.
    async fn read_child(
        &self,
        repo: &Repo,
        platform: Platform,
        digest: &str,
        expected: Option<&Expected>,
    ) -> Result<PlatformImage, RegistryError> {
        let image = repo.image_at(digest);
        if !is_sha256_digest(digest) {
            return Err(RegistryError::InvalidRequest {
                image,
                reason: format!("{platform}: {digest:?} is not a sha256 digest"),
            });
        }
        let fetched =
            self.get_manifest(repo, digest, &image)
                .await?
                .ok_or_else(|| RegistryError::PlatformImageMissing {
                    image: image.clone(),
                    platform: platform.to_string(),
                })?;
        let invalid = |reason: String| RegistryError::InvalidManifest {
            image: image.clone(),
            reason,
        };
        let parsed = parse_manifest(&fetched.bytes, fetched.content_type.as_deref()).map_err(|e| invalid(e.0))?;
        let (descriptor, shown, config) = match parsed {
            Manifest::Image(manifest) => {
                let config = self.verify_config(repo, &image, &manifest, platform).await?;
                let descriptor = Descriptor {
                    media_type: manifest.media_type.to_string(),
                    digest: fetched.digest,
                    size: fetched.bytes.len() as u64,
                };
                (descriptor, image.clone(), config)
            }
            Manifest::Index(index) => {
                let entry = pick_platform_entry(&index, platform).ok_or_else(|| RegistryError::PlatformMismatch {
                    image: image.clone(),
                    found: format!("an index of {}", offered_platforms(&index)),
                    expected: platform.to_string(),
                    hint: "the index pushed for this platform has no image for it".into(),
                })?;
                let child = format!("{image} ({})", entry.descriptor.digest);
                let config = self.verify_child(repo, &child, &entry.descriptor, platform).await?;
                (entry.descriptor.clone(), child, config)
            }
        };
        if let Some(mismatch) = expected.and_then(|e| e.mismatch(&config.labels)) {
            return Err(RegistryError::ProvenanceMismatch {
                image: shown,
                platform: platform.to_string(),
                mismatch,
            });
        }
        Ok(PlatformImage {
            platform,
            image: shown,
            descriptor,
            config: config.platform,
        })
    }

    /// Verify an index entry: the manifest it names exists, hashes to its digest, has its size and
    /// media type, and its config is `platform`.
    async fn verify_child(
        &self,
        repo: &Repo,
        image: &str,
        descriptor: &Descriptor,
        platform: Platform,
    ) -> Result<ImageConfig, RegistryError> {
        let manifest = self.get_child_manifest(repo, image, descriptor).await?;
        self.verify_config(repo, image, &manifest, platform).await
    }

    /// Fetch the image manifest an index entry names and check it against the entry.
    async fn get_child_manifest(
        &self,
        repo: &Repo,
        image: &str,
        descriptor: &Descriptor,
    ) -> Result<ImageManifest, RegistryError> {
        if descriptor.size > MAX_MANIFEST_BYTES as u64 {
            return Err(RegistryError::BodyTooLarge {
                image: image.to_string(),
                what: "manifest",
                size: Some(descriptor.size),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let fetched = self
            .get_manifest(repo, &descriptor.digest, image)
            .await?
            .ok_or_else(|| RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: "the index names this manifest but the registry does not have it".into(),
            })?;
        if fetched.bytes.len() as u64 != descriptor.size {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                what: "the manifest size",
                found: fetched.bytes.len().to_string(),
                expected: format!("{} as the index says", descriptor.size),
            });
        }
        match parse_manifest(&fetched.bytes, fetched.content_type.as_deref()) {
            Ok(Manifest::Image(m)) if m.media_type == descriptor.media_type => Ok(m),
            Ok(m) => Err(RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: format!(
                    "the manifest is {}, but the index entry says {}",
                    m.media_type(),
                    descriptor.media_type
                ),
            }),
            Err(e) => Err(RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: e.0,
            }),
        }
    }

    /// Read the config blob of `manifest` and check it is `platform`.
    async fn verify_config(
        &self,
        repo: &Repo,
        image: &str,
        manifest: &ImageManifest,
        platform: Platform,
    ) -> Result<ImageConfig, RegistryError> {
        let config = &manifest.config;
        if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
            return Err(RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: format!(
                    "not a container image: its config media type is {:?}, expected {OCI_CONFIG} or {DOCKER_CONFIG}",
                    config.media_type
                ),
            });
        }
        if config.size > MAX_CONFIG_BYTES as u64 {
            return Err(RegistryError::BodyTooLarge {
                image: image.to_string(),
                what: "config blob",
                size: Some(config.size),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let body = match self
            .get_blob(repo, image, &config.digest, MAX_CONFIG_BYTES, BlobRead::CONFIG)
            .await?
        {
            Ok(body) => body,
            Err(resp) if resp.status == StatusCode::NOT_FOUND && !resp.has_code("NAME_UNKNOWN") => {
                return Err(RegistryError::InvalidManifest {
                    image: image.to_string(),
                    reason: format!("its config blob {} is missing from the registry", config.digest),
                });
            }
            Err(resp) => return Err(self.status_error(repo, image, BlobRead::CONFIG.operation, &resp)),
        };
        let parsed = parse_config(&body).map_err(|e| RegistryError::InvalidManifest {
            image: image.to_string(),
            reason: e.0,
        })?;
        let fields = &parsed.platform;
        if !platform.matches_config(&fields.os, &fields.architecture, fields.variant.as_deref()) {
            let hint = if fields.os == platform.os() && fields.architecture == platform.architecture() {
                "the image was built for another variant"
            } else {
                "the build ran on the wrong architecture"
            };
            return Err(RegistryError::PlatformMismatch {
                image: image.to_string(),
                found: fields.to_string(),
                expected: platform.to_string(),
                hint: hint.into(),
            });
        }
        Ok(parsed)
    }

    /// GET a manifest by tag or digest. `Ok(None)` when the registry says the manifest is unknown;
    /// [`RegistryError::RepositoryMissing`] when the repository is.
    async fn get_manifest(&self, repo: &Repo, reference: &str, image: &str) -> Result<Option<Fetched>, RegistryError> {
        let resp = self
            .transport
            .send(&Request {
                method: Method::GET,
                repo,
                object: RegistryObject::Manifest,
                reference,
                image,
                operation: "reading",
                push: false,
                accept: Some(ACCEPT_MANIFESTS),
                content_type: None,
                body: None,
                limit: MAX_MANIFEST_BYTES,
                what: "manifest",
            })
            .await?;
        if resp.status == StatusCode::NOT_FOUND && !resp.has_code("NAME_UNKNOWN") {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(self.status_error(repo, image, "reading", &resp));
        }
        let digest = sha256_digest(&resp.body);
        let by_digest = reference.starts_with("sha256:");
        let claimed = if by_digest {
            Some(reference.to_string())
        } else {
            resp.header("docker-content-digest")
                .filter(|d| is_sha256_digest(d))
                .map(str::to_string)
        };
        if let Some(claimed) = claimed
            && claimed != digest
        {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                what: "the sha256 of the manifest served",
                found: digest,
                expected: if by_digest {
                    claimed
                } else {
                    format!("{claimed} (its Docker-Content-Digest)")
                },
            });
        }
        Ok(Some(Fetched {
            content_type: resp.header("content-type").map(str::to_string),
            bytes: resp.body,
            digest,
        }))
    }

    /// PUT the manifest bytes as `<tag>` and prove the registry stored them.
    async fn put_manifest(
        &self,
        repo: &Repo,
        tag: &str,
        image: &str,
        media_type: &'static str,
        bytes: Vec<u8>,
        digest: &str,
    ) -> Result<Stored, RegistryError> {
        let resp = self
            .transport
            .send(&Request {
                method: Method::PUT,
                repo,
                object: RegistryObject::Manifest,
                reference: tag,
                image,
                operation: "pushing",
                push: true,
                accept: None,
                content_type: Some(media_type),
                body: Some(bytes),
                limit: MAX_MANIFEST_BYTES,
                what: "answer",
            })
            .await?;
        if resp.status.is_success() {
            let stored = Stored {
                subject_indexed: resp.header("oci-subject").is_some(),
            };
            return match resp.header("docker-content-digest") {
                Some(answered) if answered == digest => Ok(stored),
                Some(answered) => Err(RegistryError::DigestMismatch {
                    image: image.to_string(),
                    what: "the Docker-Content-Digest the registry answered",
                    found: answered.to_string(),
                    expected: format!("{digest} (the sha256 of the bytes sent)"),
                }),
                None => {
                    // Some registries answer without the header: read the tag back.
                    debug!(%image, "no Docker-Content-Digest in the PUT answer; reading the tag back");
                    match self.get_manifest(repo, tag, image).await? {
                        Some(f) if f.digest == digest => Ok(stored),
                        Some(f) => Err(RegistryError::DigestMismatch {
                            image: image.to_string(),
                            what: "the digest of what the registry serves after the push",
                            found: f.digest,
                            expected: format!("{digest} (the sha256 of the bytes sent)"),
                        }),
                        None => Err(RegistryError::DigestMismatch {
                            image: image.to_string(),
                            what: "the tag after the push",
                            found: "absent".into(),
                            expected: digest.to_string(),
                        }),
                    }
                }
            };
        }
        // ECR: 400 TAG_INVALID "… already exists … cannot be overwritten because the tag is
        // immutable" (also when the content is the same); others: 409 TAG_IMMUTABLE, 412.
        let immutable = resp.has_code("TAG_IMMUTABLE")
            || resp.errors().iter().any(|e| {
                e.message.contains("immutable") || (e.code == "TAG_INVALID" && e.message.contains("already exists"))
            });
        if immutable && matches!(resp.status.as_u16(), 400 | 409 | 412) {
            // An immutable tag may already hold exactly this index: that is success.
            return match self.get_manifest(repo, tag, image).await? {
                Some(existing) if existing.digest == digest => {
                    info!(%image, %digest, "immutable tag already holds this manifest");
                    Ok(Stored { subject_indexed: false })
                }
                existing => Err(RegistryError::ImmutableTag {
                    image: image.to_string(),
                    existing: existing.map_or_else(|| "another image".to_string(), |e| e.digest),
                    ours: digest.to_string(),
                }),
            };
        }
        Err(self.status_error(repo, image, "pushing", &resp))
    }

    /// The error for a non-success answer that is not handled more specifically.
    /// GET the blob `digest` of `repo`, at most `limit` bytes: its body, its sha256 checked, or
    /// the registry's answer when it is not a success, for the caller to read.
    async fn get_blob(
        &self,
        repo: &Repo,
        image: &str,
        digest: &str,
        limit: usize,
        read: BlobRead,
    ) -> Result<Result<Vec<u8>, Response>, RegistryError> {
        let resp = self
            .transport
            .send(&Request {
                method: Method::GET,
                repo,
                object: RegistryObject::Blob,
                reference: digest,
                image,
                operation: read.operation,
                push: false,
                accept: None,
                content_type: None,
                body: None,
                limit,
                what: read.what,
            })
            .await?;
        if !resp.status.is_success() {
            return Ok(Err(resp));
        }
        let found = sha256_digest(&resp.body);
        if found != digest {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                what: read.mismatch,
                found,
                expected: digest.to_string(),
            });
        }
        Ok(Ok(resp.body))
    }

    fn status_error(&self, repo: &Repo, image: &str, operation: &'static str, resp: &Response) -> RegistryError {
        let status = resp.status.as_u16();
        if resp.has_code("NAME_UNKNOWN") {
            return RegistryError::RepositoryMissing {
                repository: repo.display.clone(),
                detail: format!(" (HTTP {status}{})", resp.detail()),
            };
        }
        if status == 401 || status == 403 {
            return self
                .transport
                .auth_failed(operation, image, &repo.api_host, status, resp.detail());
        }
        RegistryError::Rejected {
            operation,
            image: image.to_string(),
            status,
            detail: resp.detail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_digest_is_lowercase_hex() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + 'static>() {}
        fn check_clone<T: Clone>() {}
        check::<RegistryClient>();
        check_clone::<RegistryClient>();
        check::<RegistryError>();
    }
}
