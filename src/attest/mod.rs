//! Signed provenance: every index the controller publishes carries an in-toto statement (SLSA
//! provenance v1) of how it was built, and with a signing key a cosign signature of the index and
//! a signed DSSE envelope of the statement, stored where cosign, Kyverno and policy-controller
//! look (`<repository>:sha256-<hex>.sig` / `.att`) and listed for the OCI 1.1 referrers API.
//!
//! [`attach`] pushes them and reads them back through [`check`], which is also what
//! `multiarch-operator verify` runs: nothing is recorded as attached unless it verifies.

pub mod layout;
pub mod statement;

use std::collections::BTreeMap;

use tracing::info;

use self::layout::{
    Descriptor, Envelope, IN_TOTO_PAYLOAD, Kind, OCI_MANIFEST, PREDICATE_TYPE_ANNOTATION, SIGNATURE_ANNOTATION,
};
use crate::{
    api::{ProvenanceStatus, SignatureStatus},
    registry::{MAX_ARTIFACT_BLOB_BYTES, RegistryClient, RegistryError, StoredManifest},
    signing::{PublicKey, Signer, SigningError},
};

/// Why attaching or checking could not be done. Each is worth retrying: registries and KMS
/// recover, and keys get enabled again.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// What was pushed does not read back as pushed.
    #[error("{0}")]
    ReadBack(String),
}

/// What is attached to an index, each part verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub provenance: ProvenanceStatus,
    pub signature: Option<SignatureStatus>,
}

/// What [`check`] found of an index's provenance: the statement, or why there is none that
/// verifies.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub signature: Result<SignatureStatus, String>,
    pub provenance: Result<(ProvenanceStatus, serde_json::Value), String>,
}

/// Push the provenance `statement` of the index `index` (and, with `signer`, the index's
/// signature), unless what is already attached verifies; then read both back. Signing happens
/// before anything is pushed, so a key that cannot sign leaves nothing behind.
pub async fn attach(
    registry: &RegistryClient,
    signer: Option<&Signer>,
    repository: &str,
    index: &StoredManifest,
    statement: &[u8],
) -> Result<Attached, AttestError> {
    let key = match signer {
        Some(signer) => Some((signer.public_key().await?, signer.uri().to_string())),
        None => None,
    };
    let public = key.as_ref().map(|(k, _)| k);
    if let Some(attached) = attached(check(registry, repository, &index.digest, public).await?, &key) {
        info!(index = %index.digest, "the index already carries verified provenance");
        return Ok(attached);
    }

    let subject = Descriptor {
        media_type: index
            .media_type
            .clone()
            .unwrap_or_else(|| layout::OCI_INDEX.to_string()),
        digest: index.digest.clone(),
        size: index.bytes.len() as u64,
    };
    let envelope_signature = match signer {
        Some(signer) => Some(signer.sign(&layout::pae(IN_TOTO_PAYLOAD, statement)).await?),
        None => None,
    };
    let payload = layout::simple_signing_payload(repository, &index.digest);
    let payload_signature = match signer {
        Some(signer) => Some(signer.sign(&payload).await?),
        None => None,
    };

    let envelope = Envelope::in_toto(statement, envelope_signature.as_deref());
    let envelope = serde_json::to_vec(&envelope).map_err(|e| AttestError::ReadBack(e.to_string()))?;
    let annotations = BTreeMap::from([
        (SIGNATURE_ANNOTATION.to_string(), String::new()),
        (
            PREDICATE_TYPE_ANNOTATION.to_string(),
            statement::PREDICATE_TYPE.to_string(),
        ),
    ]);
    publish(registry, repository, Kind::Attestation, envelope, annotations, &subject).await?;
    if let Some(signature) = payload_signature {
        let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), layout::b64(&signature))]);
        publish(registry, repository, Kind::Signature, payload, annotations, &subject).await?;
    }

    let found = check(registry, repository, &index.digest, public).await?;
    let problems = format!(
        "{}; {}",
        found
            .provenance
            .as_ref()
            .err()
            .map_or("provenance verified", String::as_str),
        found
            .signature
            .as_ref()
            .err()
            .map_or("signature verified", String::as_str)
    );
    attached(found, &key).ok_or_else(|| AttestError::ReadBack(format!("pushed, but read back: {problems}")))
}

/// What `found` proves is attached: the provenance, signed when there is a key, and then the
/// index's signature too.
fn attached(found: Checked, key: &Option<(PublicKey, String)>) -> Option<Attached> {
    let (provenance, _) = found.provenance.ok()?;
    match key {
        None => Some(Attached {
            provenance,
            signature: None,
        }),
        Some((_, uri)) => {
            let mut signature = found.signature.ok()?;
            signature.key.clone_from(uri);
            provenance.signed.then_some(Attached {
                provenance,
                signature: Some(signature),
            })
        }
    }
}

/// Push one signature or attestation: its blobs, then its manifest as `sha256-<hex>.<kind>`, and
/// list it in the referrers tag-fallback index when the registry has no referrers API.
async fn publish(
    registry: &RegistryClient,
    repository: &str,
    kind: Kind,
    layer: Vec<u8>,
    annotations: BTreeMap<String, String>,
    subject: &Descriptor,
) -> Result<(), AttestError> {
    let artifact = layout::artifact(kind, layer, annotations, subject);
    registry.push_blob(repository, artifact.config).await?;
    registry.push_blob(repository, artifact.layer).await?;
    let entry = Descriptor::of(OCI_MANIFEST, &artifact.manifest);
    let tag = kind.tag(&subject.digest);
    let subject_indexed = registry
        .put_tagged(repository, &tag, OCI_MANIFEST, artifact.manifest)
        .await?;
    if !subject_indexed {
        let fallback = layout::referrers_tag(&subject.digest);
        let existing = registry.manifest(repository, &fallback).await?;
        let index = layout::with_referrer(
            existing.as_ref().map(|m| m.bytes.as_slice()),
            &entry,
            layout::referrer_type(kind),
        );
        if existing.is_none_or(|m| m.bytes != index) {
            registry
                .put_tagged(repository, &fallback, layout::OCI_INDEX, index)
                .await?;
        }
    }
    info!(%tag, digest = %entry.digest, "pushed");
    Ok(())
}

/// What is attached to the index `digest` of `repository`: its signature verified with `key` over
/// a payload naming the digest, and its provenance statement (with `key`, its envelope verified)
/// naming the digest as a subject. Registry failures are errors; anything missing or not verifying
/// is a reason in [`Checked`].
pub async fn check(
    registry: &RegistryClient,
    repository: &str,
    digest: &str,
    key: Option<&PublicKey>,
) -> Result<Checked, AttestError> {
    let signature = match key {
        None => Err("no key to check a signature with".to_string()),
        Some(key) => check_signature(registry, repository, digest, key).await?,
    };
    let provenance = check_provenance(registry, repository, digest, key).await?;
    Ok(Checked { signature, provenance })
}

/// The manifest at `sha256-<hex>.<kind>` and its layers of `media_type`, each with its blob.
async fn attached_layers(
    registry: &RegistryClient,
    repository: &str,
    digest: &str,
    kind: Kind,
    media_type: &str,
) -> Result<Result<(StoredManifest, Vec<(layout::Layer, Vec<u8>)>), String>, AttestError> {
    let tag = kind.tag(digest);
    let Some(manifest) = registry.manifest(repository, &tag).await? else {
        return Ok(Err(format!("nothing at {repository}:{tag}")));
    };
    let layers = match layout::layers(&manifest.bytes) {
        Ok(layers) => layers,
        Err(e) => return Ok(Err(format!("{repository}:{tag} is {e}"))),
    };
    let mut read = Vec::new();
    for layer in layers.into_iter().filter(|l| l.media_type == media_type) {
        if layer.size > MAX_ARTIFACT_BLOB_BYTES as u64 {
            continue;
        }
        let blob = registry
            .blob(repository, &layer.digest, MAX_ARTIFACT_BLOB_BYTES)
            .await?;
        read.push((layer, blob));
    }
    Ok(Ok((manifest, read)))
}

async fn check_signature(
    registry: &RegistryClient,
    repository: &str,
    digest: &str,
    key: &PublicKey,
) -> Result<Result<SignatureStatus, String>, AttestError> {
    let (manifest, layers) =
        match attached_layers(registry, repository, digest, Kind::Signature, layout::SIMPLE_SIGNING).await? {
            Ok(found) => found,
            Err(reason) => return Ok(Err(format!("not signed: {reason}"))),
        };
    let verified = layers.iter().any(|(layer, payload)| {
        let signature = layer
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .and_then(|s| layout::unb64(s).ok());
        signature.is_some_and(|s| key.verifies(payload, &s))
            && layout::signed_digest(payload).as_deref() == Some(digest)
    });
    if !verified {
        return Ok(Err(format!(
            "{}: no signature of this index by this key (signed by another key?)",
            Kind::Signature.tag(digest)
        )));
    }
    Ok(Ok(SignatureStatus {
        image: format!("{repository}:{}", Kind::Signature.tag(digest)),
        digest: manifest.digest,
        key: String::new(),
    }))
}

async fn check_provenance(
    registry: &RegistryClient,
    repository: &str,
    digest: &str,
    key: Option<&PublicKey>,
) -> Result<Result<(ProvenanceStatus, serde_json::Value), String>, AttestError> {
    let (manifest, layers) =
        match attached_layers(registry, repository, digest, Kind::Attestation, layout::DSSE_ENVELOPE).await? {
            Ok(found) => found,
            Err(reason) => return Ok(Err(format!("no provenance: {reason}"))),
        };
    let mut reasons = Vec::new();
    for (layer, blob) in &layers {
        if layer.annotations.get(PREDICATE_TYPE_ANNOTATION).map(String::as_str) != Some(statement::PREDICATE_TYPE) {
            continue;
        }
        match read_statement(blob, digest, key) {
            Ok((statement, signed)) => {
                let status = ProvenanceStatus {
                    image: format!("{repository}:{}", Kind::Attestation.tag(digest)),
                    digest: manifest.digest.clone(),
                    predicate_type: statement::PREDICATE_TYPE.to_string(),
                    signed,
                };
                return Ok(Ok((status, statement)));
            }
            Err(reason) => reasons.push(reason),
        }
    }
    Ok(Err(match reasons.first() {
        Some(reason) => reason.clone(),
        None => format!(
            "no provenance: {} has no SLSA provenance v1 attestation",
            Kind::Attestation.tag(digest)
        ),
    }))
}

/// The statement in a DSSE envelope, if it names `digest` as a subject and, with `key`, the
/// envelope carries a signature `key` verifies; and whether it was signed.
fn read_statement(envelope: &[u8], digest: &str, key: Option<&PublicKey>) -> Result<(serde_json::Value, bool), String> {
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|e| format!("the provenance is not a DSSE envelope: {e}"))?;
    if envelope.payload_type != IN_TOTO_PAYLOAD {
        return Err(format!(
            "the provenance's payload type is {:?}, not {IN_TOTO_PAYLOAD}",
            envelope.payload_type
        ));
    }
    let (payload, signatures) = envelope.decode()?;
    let signed = match key {
        Some(key) => {
            let pae = layout::pae(IN_TOTO_PAYLOAD, &payload);
            if !signatures.iter().any(|s| key.verifies(&pae, s)) {
                return Err(if signatures.is_empty() {
                    "the provenance is not signed".into()
                } else {
                    "the provenance is not signed by this key (signed by another key?)".into()
                });
            }
            true
        }
        None => false,
    };
    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| format!("the provenance statement is not JSON: {e}"))?;
    if statement["predicateType"] != statement::PREDICATE_TYPE {
        return Err(format!(
            "the provenance's predicate type is {}, not {}",
            statement["predicateType"],
            statement::PREDICATE_TYPE
        ));
    }
    if !statement::names_subject(&statement, digest) {
        return Err(format!("the provenance does not name {digest} as a subject"));
    }
    Ok((statement, signed))
}
