//! The objects cosign reads, byte for byte, free of I/O: the simple-signing payload of an image
//! signature, the DSSE envelope of an attestation, the image manifests that carry them (tagged
//! `sha256-<hex>.sig` / `.att`, and with a `subject` for the OCI 1.1 referrers API), and the
//! referrers tag-fallback index.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::registry::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The layer of a cosign image signature: the simple-signing payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer of a cosign attestation: a DSSE envelope.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The layer annotation holding the base64 signature of the layer (empty for an attestation,
/// whose signatures are inside the envelope).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The layer annotation naming an attestation's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
/// The `artifactType` of a signature manifest in the referrers API (cosign's).
const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The two objects attached to an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Signature,
    Attestation,
}

impl Kind {
    /// The tag cosign looks for: `sha256-<hex>.sig` or `sha256-<hex>.att` of the image digest.
    pub fn tag(self, digest: &str) -> String {
        let suffix = match self {
            Kind::Signature => "sig",
            Kind::Attestation => "att",
        };
        format!("{}.{suffix}", referrers_tag(digest))
    }

    fn layer_media_type(self) -> &'static str {
        match self {
            Kind::Signature => SIMPLE_SIGNING,
            Kind::Attestation => DSSE_ENVELOPE,
        }
    }

    fn artifact_type(self) -> &'static str {
        match self {
            Kind::Signature => SIGNATURE_ARTIFACT,
            Kind::Attestation => DSSE_ENVELOPE,
        }
    }
}

/// The OCI referrers tag-fallback tag of `digest`: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// cosign's simple-signing payload: what an image signature signs, naming the image digest.
pub fn simple_signing_payload(repository: &str, digest: &str) -> Vec<u8> {
    json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    })
    .to_string()
    .into_bytes()
}

/// The image digest a simple-signing payload names, if it is one.
pub fn signed_digest(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if value.pointer("/critical/type")?.as_str()? != "cosign container image signature" {
        return None;
    }
    Some(
        value
            .pointer("/critical/image/docker-manifest-digest")?
            .as_str()?
            .to_string(),
    )
}

/// DSSE's pre-authentication encoding: what a DSSE signature signs.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope (payload and signatures base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

impl Envelope {
    /// An envelope of an in-toto statement with `signature` (DER) over its [`pae`], or none.
    pub fn in_toto(statement: &[u8], signature: Option<&[u8]>) -> Envelope {
        Envelope {
            payload_type: IN_TOTO_PAYLOAD.to_string(),
            payload: b64(statement),
            signatures: signature
                .map(|sig| EnvelopeSignature {
                    keyid: String::new(),
                    sig: b64(sig),
                })
                .into_iter()
                .collect(),
        }
    }

    /// The payload bytes, and the DER signatures in it.
    pub fn decode(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
        let payload = unb64(&self.payload).map_err(|e| format!("the envelope's payload is not base64: {e}"))?;
        let signatures = self.signatures.iter().filter_map(|s| unb64(&s.sig).ok()).collect();
        Ok((payload, signatures))
    }
}

/// The blobs and manifest of one signature or attestation, ready to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// The image manifest carrying `layer` for the index `subject`: cosign's layout (an image config
/// whose `rootfs` lists the layer, the signature in the layer's annotations), plus `subject` and
/// `artifactType` so a registry with the referrers API lists it.
pub fn artifact(kind: Kind, layer: Vec<u8>, annotations: BTreeMap<String, String>, subject: &Descriptor) -> Artifact {
    let layer_descriptor = Descriptor::of(kind.layer_media_type(), &layer);
    let config = json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_descriptor.digest]},
    })
    .to_string()
    .into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind.artifact_type(),
        "config": Descriptor::of(OCI_CONFIG, &config),
        "layers": [{
            "mediaType": layer_descriptor.media_type,
            "digest": layer_descriptor.digest,
            "size": layer_descriptor.size,
            "annotations": annotations,
        }],
        "subject": subject,
    })
    .to_string()
    .into_bytes();
    Artifact {
        config,
        layer,
        manifest,
    }
}

/// A layer of a signature or attestation manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ArtifactManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

/// The layers of a signature or attestation manifest (cosign may have appended several).
pub fn layers(manifest: &[u8]) -> Result<Vec<Layer>, String> {
    serde_json::from_slice::<ArtifactManifest>(manifest)
        .map(|m| m.layers)
        .map_err(|e| format!("not an image manifest: {e}"))
}

/// The referrers tag-fallback index with `entry` added (once): `existing` is what the tag holds
/// (`None` when nothing).
pub fn with_referrer(existing: Option<&[u8]>, entry: &Descriptor, artifact_type: &str) -> Vec<u8> {
    let mut manifests: Vec<serde_json::Value> = existing
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
        .and_then(|index| index.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default();
    if !manifests.iter().any(|m| m["digest"] == entry.digest.as_str()) {
        manifests.push(json!({
            "mediaType": entry.media_type,
            "digest": entry.digest,
            "size": entry.size,
            "artifactType": artifact_type,
        }));
    }
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        .to_string()
        .into_bytes()
}

/// The `artifactType` the referrers index lists for `kind`.
pub fn referrer_type(kind: Kind) -> &'static str {
    kind.artifact_type()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_are_where_cosign_looks() {
        assert_eq!(
            Kind::Signature.tag(DIGEST),
            "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.sig"
        );
        assert!(Kind::Attestation.tag(DIGEST).ends_with("abcdef.att"));
        assert_eq!(referrers_tag(DIGEST).len(), 71);
    }

    #[test]
    fn pae_is_the_dsse_v1_encoding() {
        // The example of the DSSE protocol specification.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn the_simple_signing_payload_names_the_digest_it_signs() {
        let payload = simple_signing_payload("reg.example/app", DIGEST);
        assert_eq!(signed_digest(&payload).as_deref(), Some(DIGEST));
        assert_eq!(signed_digest(b"{\"critical\":{}}"), None);
        assert_eq!(signed_digest(b"not json"), None);
    }

    #[test]
    fn an_artifact_lists_its_layer_with_the_signature_and_names_its_subject() {
        let subject = Descriptor::of(OCI_INDEX, b"{}");
        let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), "c2ln".to_string())]);
        let made = artifact(Kind::Signature, b"payload".to_vec(), annotations, &subject);
        let manifest: serde_json::Value = serde_json::from_slice(&made.manifest).expect("json");
        assert_eq!(manifest["subject"]["digest"], subject.digest.as_str());
        assert_eq!(manifest["config"]["digest"], sha256_digest(&made.config).as_str());
        let found = layers(&made.manifest).expect("layers");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].digest, sha256_digest(b"payload"));
        assert_eq!(found[0].media_type, SIMPLE_SIGNING);
        assert_eq!(found[0].annotations[SIGNATURE_ANNOTATION], "c2ln");
    }

    #[test]
    fn the_referrers_fallback_index_gains_each_entry_once() {
        let a = Descriptor::of(OCI_MANIFEST, b"a");
        let b = Descriptor::of(OCI_MANIFEST, b"b");
        let one = with_referrer(None, &a, DSSE_ENVELOPE);
        let two = with_referrer(Some(&one), &b, SIGNATURE_ARTIFACT);
        let again = with_referrer(Some(&two), &a, DSSE_ENVELOPE);
        assert_eq!(two, again);
        let index: serde_json::Value = serde_json::from_slice(&two).expect("json");
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(2));
        assert_eq!(index["manifests"][1]["artifactType"], SIGNATURE_ARTIFACT);
    }

    #[test]
    fn an_envelope_round_trips_its_payload_and_signature() {
        let envelope = Envelope::in_toto(b"{\"a\":1}", Some(b"sig"));
        let (payload, sigs) = envelope.decode().expect("decodes");
        assert_eq!(payload, b"{\"a\":1}");
        assert_eq!(sigs, vec![b"sig".to_vec()]);
        assert!(Envelope::in_toto(b"x", None).signatures.is_empty());
    }
}
