//! Pure parsing of what a registry returns: image manifests (OCI and Docker v2), image indexes
//! (OCI index and Docker manifest list), image configs and distribution error bodies.
//!
//! No I/O and no dependency on the rest of the crate (only `serde` and `serde_json`), so the fuzz
//! target in `fuzz/` compiles this file on its own. Every input is untrusted: any byte string gives
//! `Ok` or a [`ParseError`], never a panic. Size bounds are enforced by the caller before parsing.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// `application/vnd.oci.image.index.v1+json`
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.docker.distribution.manifest.list.v2+json`
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// `application/vnd.oci.image.manifest.v1+json`
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.docker.distribution.manifest.v2+json`
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1, which we recognise only to reject it clearly.
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// `application/vnd.oci.image.config.v1+json`
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.docker.container.image.v1+json`
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Annotation buildx puts on attestation entries of an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// The value of [`REFERENCE_TYPE_ANNOTATION`] on attestation entries.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// Every manifest media type we ask for, for the `Accept` header. Without the Docker v2 types a
/// registry may down-convert to schema 1.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Why a registry answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

/// A content descriptor with a validated digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: String,
    pub size: u64,
}

/// `os`/`architecture`/`variant` as written in an index entry or an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFields {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for PlatformFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    pub platform: Option<PlatformFields>,
    pub annotations: BTreeMap<String, String>,
}

impl IndexEntry {
    /// A buildx attestation entry (`unknown/unknown`, or annotated `attestation-manifest`).
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(REFERENCE_TYPE_ANNOTATION)
            .is_some_and(|t| t == ATTESTATION_MANIFEST)
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }

    /// Whether the entry points at an image manifest (not a nested index or an artifact).
    pub fn is_image_manifest(&self) -> bool {
        is_image_manifest_type(&self.descriptor.media_type)
    }
}

/// An image manifest: what we need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// [`OCI_MANIFEST`] or [`DOCKER_MANIFEST`].
    pub media_type: &'static str,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An index or manifest list: what we need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    /// [`OCI_INDEX`] or [`DOCKER_LIST`].
    pub media_type: &'static str,
    pub manifests: Vec<IndexEntry>,
}

/// A parsed manifest of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    pub fn media_type(&self) -> &'static str {
        match self {
            Manifest::Image(m) => m.media_type,
            Manifest::Index(i) => i.media_type,
        }
    }
}

/// One error of a distribution error body (`{"errors":[{"code":…,"message":…}]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryErrorBody {
    pub code: String,
    pub message: String,
}

pub fn is_image_manifest_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

fn known_manifest_type(media_type: &str) -> Option<&'static str> {
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
        .into_iter()
        .find(|t| *t == media_type)
}

/// The media type of a `Content-Type` header value, without parameters, lowercased.
pub fn base_media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<serde_json::Value>,
    digest: Option<serde_json::Value>,
    size: Option<serde_json::Value>,
    platform: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
}

fn string_field(value: Option<serde_json::Value>, what: &str) -> Result<Option<String>, ParseError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => err(format!("{what} must be a string, found {}", json_kind(&other))),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_descriptor(value: serde_json::Value, what: &str) -> Result<RawDescriptorParts, ParseError> {
    let raw: RawDescriptor =
        serde_json::from_value(value).map_err(|e| ParseError(format!("{what} is not a descriptor object: {e}")))?;
    let media_type = string_field(raw.media_type, &format!("{what}.mediaType"))?
        .ok_or_else(|| ParseError(format!("{what} has no mediaType")))?;
    let digest = string_field(raw.digest, &format!("{what}.digest"))?
        .ok_or_else(|| ParseError(format!("{what} has no digest")))?;
    if !is_sha256_digest(&digest) {
        return err(format!(
            "{what}.digest {} is not a sha256 digest (sha256: and 64 lowercase hex digits)",
            truncate(&digest)
        ));
    }
    let size = match raw.size {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| ParseError(format!("{what}.size {n} is not a non-negative integer")))?,
        Some(other) => {
            return err(format!("{what}.size must be a number, found {}", json_kind(&other)));
        }
        None => return err(format!("{what} has no size")),
    };
    Ok(RawDescriptorParts {
        descriptor: Descriptor {
            media_type,
            digest,
            size,
        },
        platform: raw.platform,
        annotations: raw.annotations,
    })
}

struct RawDescriptorParts {
    descriptor: Descriptor,
    platform: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
}

fn parse_platform(value: Option<serde_json::Value>, what: &str) -> Result<Option<PlatformFields>, ParseError> {
    let obj = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Object(obj)) => obj,
        Some(other) => {
            return err(format!(
                "{what}.platform must be an object, found {}",
                json_kind(&other)
            ));
        }
    };
    let mut obj = obj;
    let os = string_field(obj.remove("os"), &format!("{what}.platform.os"))?
        .ok_or_else(|| ParseError(format!("{what}.platform has no os")))?;
    let architecture = string_field(obj.remove("architecture"), &format!("{what}.platform.architecture"))?
        .ok_or_else(|| ParseError(format!("{what}.platform has no architecture")))?;
    let variant = string_field(obj.remove("variant"), &format!("{what}.platform.variant"))?.filter(|v| !v.is_empty());
    Ok(Some(PlatformFields {
        os,
        architecture,
        variant,
    }))
}

fn parse_annotations(value: Option<serde_json::Value>, what: &str) -> Result<BTreeMap<String, String>, ParseError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(serde_json::Value::Object(obj)) => obj
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => err(format!(
                    "{what}.annotations[{}] must be a string, found {}",
                    truncate(&k),
                    json_kind(&other)
                )),
            })
            .collect(),
        Some(other) => err(format!(
            "{what}.annotations must be an object, found {}",
            json_kind(&other)
        )),
    }
}

/// At most 80 characters of `s`, for messages about untrusted input.
fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Parse a manifest body. `content_type` is the response's `Content-Type`, used when the body has
/// no `mediaType` (OCI allows that). The body's `mediaType` must agree with a known manifest
/// `Content-Type`; schema 1 and unknown media types are rejected.
pub fn parse_manifest(body: &[u8], content_type: Option<&str>) -> Result<Manifest, ParseError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ParseError(format!("manifest is not valid JSON: {e}")))?;

    let header_type = content_type.map(base_media_type).filter(|t| !t.is_empty());
    if let Some(t) = &header_type
        && DOCKER_SCHEMA1.contains(&t.as_str())
    {
        return err(
            "manifest is Docker schema 1, which is not supported: push it again with a current docker or buildx",
        );
    }
    match raw.schema_version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(2) => {}
        Some(serde_json::Value::Number(n)) => {
            return err(format!("manifest schemaVersion is {n}, expected 2"));
        }
        Some(other) => {
            return err(format!(
                "manifest schemaVersion must be the number 2, found {}",
                json_kind(&other)
            ));
        }
        None => return err("manifest has no schemaVersion"),
    }
    let body_type = string_field(raw.media_type, "manifest mediaType")?;

    let media_type: &'static str = match (&body_type, &header_type) {
        (Some(b), h) => {
            let known = known_manifest_type(b).ok_or_else(|| {
                ParseError(format!(
                    "manifest mediaType {} is not an image manifest or index",
                    truncate(b)
                ))
            })?;
            if let Some(h) = h
                && known_manifest_type(h).is_some()
                && h != b
            {
                return err(format!(
                    "manifest mediaType {b} does not match the Content-Type {h} the registry sent"
                ));
            }
            known
        }
        // OCI allows omitting mediaType: use the header, else the shape.
        (None, Some(h)) if known_manifest_type(h).is_some() => known_manifest_type(h).unwrap_or(OCI_MANIFEST),
        (None, _) => match (&raw.manifests, &raw.config) {
            (Some(_), None) => OCI_INDEX,
            (None, Some(_)) => OCI_MANIFEST,
            _ => {
                return err(
                    "manifest has no mediaType and is neither an index (manifests) nor an image manifest (config)",
                );
            }
        },
    };

    if is_index_type(media_type) {
        if raw.config.is_some() {
            return err(format!("{media_type} must not have a config"));
        }
        let entries = match raw.manifests {
            Some(serde_json::Value::Array(entries)) => entries,
            Some(other) => {
                return err(format!("index manifests must be an array, found {}", json_kind(&other)));
            }
            None => return err("index has no manifests"),
        };
        let manifests = entries
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let what = format!("manifests[{i}]");
                let parts = parse_descriptor(value, &what)?;
                Ok(IndexEntry {
                    descriptor: parts.descriptor,
                    platform: parse_platform(parts.platform, &what)?,
                    annotations: parse_annotations(parts.annotations, &what)?,
                })
            })
            .collect::<Result<Vec<_>, ParseError>>()?;
        Ok(Manifest::Index(ImageIndex { media_type, manifests }))
    } else {
        if raw.manifests.is_some() {
            return err(format!("{media_type} must not have manifests"));
        }
        let config = parse_descriptor(
            raw.config
                .ok_or_else(|| ParseError("image manifest has no config".into()))?,
            "config",
        )?
        .descriptor;
        let layers = match raw.layers {
            Some(serde_json::Value::Array(layers)) => layers
                .into_iter()
                .enumerate()
                .map(|(i, v)| parse_descriptor(v, &format!("layers[{i}]")).map(|p| p.descriptor))
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return err(format!(
                    "image manifest layers must be an array, found {}",
                    json_kind(&other)
                ));
            }
            None => return err("image manifest has no layers"),
        };
        Ok(Manifest::Image(ImageManifest {
            media_type,
            config,
            layers,
        }))
    }
}

#[derive(Deserialize)]
struct RawConfig {
    os: Option<serde_json::Value>,
    architecture: Option<serde_json::Value>,
    variant: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

/// What an image config says: its platform and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub platform: PlatformFields,
    /// `config.Labels`; values that are not strings are left out.
    pub labels: BTreeMap<String, String>,
}

/// Parse the platform fields (`os`, `architecture`, `variant`) and labels of an image config blob.
pub fn parse_config(body: &[u8]) -> Result<ImageConfig, ParseError> {
    let raw: RawConfig = serde_json::from_slice(body)
        .map_err(|e| ParseError(format!("image config is not a valid JSON object: {e}")))?;
    let os = string_field(raw.os, "image config os")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ParseError("image config has no os".into()))?;
    let architecture = string_field(raw.architecture, "image config architecture")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ParseError("image config has no architecture".into()))?;
    let variant = string_field(raw.variant, "image config variant")?.filter(|v| !v.is_empty());
    let labels = match raw.config.as_ref().and_then(|c| c.get("Labels")) {
        Some(serde_json::Value::Object(labels)) => labels
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(ImageConfig {
        platform: PlatformFields {
            os,
            architecture,
            variant,
        },
        labels,
    })
}

#[derive(Deserialize)]
struct RawErrors {
    errors: Vec<RawErrorEntry>,
}

#[derive(Deserialize)]
struct RawErrorEntry {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
}

/// The errors of a distribution error body; empty when the body is not one.
pub fn parse_error_body(body: &[u8]) -> Vec<RegistryErrorBody> {
    let Ok(raw) = serde_json::from_slice::<RawErrors>(body) else {
        return Vec::new();
    };
    raw.errors
        .into_iter()
        .map(|e| RegistryErrorBody {
            code: match e.code {
                Some(serde_json::Value::String(s)) => s,
                _ => String::new(),
            },
            message: match e.message {
                Some(serde_json::Value::String(s)) => s,
                _ => String::new(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn oci_manifest() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":20}}]}}"#
        )
    }

    #[test]
    fn parses_oci_and_docker_image_manifests() {
        let m = parse_manifest(oci_manifest().as_bytes(), Some(OCI_MANIFEST)).unwrap();
        let Manifest::Image(m) = m else { panic!("not an image") };
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.config.digest, D1);
        assert_eq!(m.config.size, 10);
        assert_eq!(m.layers.len(), 1);

        let docker = oci_manifest()
            .replace(OCI_MANIFEST, DOCKER_MANIFEST)
            .replace(OCI_CONFIG, DOCKER_CONFIG);
        let m = parse_manifest(docker.as_bytes(), Some(&format!("{DOCKER_MANIFEST}; charset=utf-8"))).unwrap();
        assert_eq!(m.media_type(), DOCKER_MANIFEST);
    }

    #[test]
    fn media_type_falls_back_to_header_then_shape() {
        let no_type = oci_manifest().replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert_eq!(
            parse_manifest(no_type.as_bytes(), None).unwrap().media_type(),
            OCI_MANIFEST
        );
        assert_eq!(
            parse_manifest(no_type.as_bytes(), Some(DOCKER_MANIFEST))
                .unwrap()
                .media_type(),
            DOCKER_MANIFEST
        );
        let index = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            parse_manifest(index.as_bytes(), Some("application/json"))
                .unwrap()
                .media_type(),
            OCI_INDEX
        );
    }

    #[test]
    fn parses_a_buildx_index_with_an_attestation_entry() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":2,"annotations":{{"vnd.docker.reference.digest":"{D1}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let Manifest::Index(i) = parse_manifest(body.as_bytes(), Some(OCI_INDEX)).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(i.manifests.len(), 2);
        assert!(!i.manifests[0].is_attestation());
        assert!(i.manifests[1].is_attestation());
        assert_eq!(i.manifests[0].platform.as_ref().unwrap().to_string(), "linux/arm64/v8");
    }

    #[test]
    fn rejects_malformed_answers_with_a_reason() {
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            (oci_manifest()[..40].to_string(), None, "not valid JSON"),
            ("[]".into(), None, "not valid JSON"),
            (
                oci_manifest().replace(r#""schemaVersion":2"#, r#""schemaVersion":1"#),
                None,
                "schemaVersion is 1",
            ),
            (
                oci_manifest().replace(OCI_MANIFEST, "text/html"),
                None,
                "not an image manifest or index",
            ),
            (oci_manifest(), Some(DOCKER_MANIFEST), "does not match the Content-Type"),
            (oci_manifest(), Some(DOCKER_SCHEMA1[1]), "schema 1"),
            (oci_manifest().replace(D1, "sha256:abc"), None, "not a sha256 digest"),
            (
                oci_manifest().replace(r#""size":10"#, r#""size":-1"#),
                None,
                "not a non-negative integer",
            ),
            (
                oci_manifest().replace(r#""size":10"#, r#""size":"10""#),
                None,
                "size must be a number",
            ),
            (
                oci_manifest().replace(OCI_MANIFEST, OCI_INDEX),
                None,
                "must not have a config",
            ),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":{{}}}}"#),
                None,
                "must be an array",
            ),
        ];
        for (body, header, want) in cases {
            let e = parse_manifest(body.as_bytes(), header).unwrap_err();
            assert!(e.0.contains(want), "{body}: {e} does not contain {want}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024), ct in 0usize..6) {
            let header = [None, Some(OCI_MANIFEST), Some(OCI_INDEX), Some(DOCKER_LIST), Some(DOCKER_SCHEMA1[0]), Some("text/plain")][ct];
            let _ = parse_manifest(&bytes, header);
            let _ = parse_config(&bytes);
            let _ = parse_error_body(&bytes);
        }

        #[test]
        fn damaged_manifests_give_errors_not_panics(cut in 0usize..400, at in 0usize..400, byte in proptest::prelude::any::<u8>()) {
            let good = oci_manifest().into_bytes();
            let _ = parse_manifest(&good[..cut.min(good.len())], None);
            let mut flipped = good.clone();
            let i = at % flipped.len();
            flipped[i] = byte;
            if let Ok(Manifest::Image(m)) = parse_manifest(&flipped, Some(OCI_MANIFEST)) {
                proptest::prop_assert!(is_sha256_digest(&m.config.digest));
            }
        }
    }

    #[test]
    fn parses_configs_and_error_bodies() {
        let c = parse_config(br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{}}"#).unwrap();
        assert_eq!(c.platform.to_string(), "linux/arm64/v8");
        assert!(c.labels.is_empty());
        let labelled = parse_config(
            br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"a":"1","n":2,"org.opencontainers.image.revision":"abc"}}}"#,
        )
        .unwrap();
        let labels: Vec<(&str, &str)> = labelled.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [("a", "1"), ("org.opencontainers.image.revision", "abc")],
            "non-strings left out"
        );
        let null_labels = parse_config(br#"{"architecture":"amd64","os":"linux","config":{"Labels":null}}"#).unwrap();
        assert!(null_labels.labels.is_empty());
        assert!(
            parse_config(br#"{"os":"linux"}"#)
                .unwrap_err()
                .0
                .contains("no architecture")
        );
        assert!(parse_config(br#"{"os":"linux","architecture":7}"#).is_err());
        assert!(parse_config(b"\xff").is_err());

        let e =
            parse_error_body(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#);
        assert_eq!(e[0].code, "MANIFEST_UNKNOWN");
        assert!(parse_error_body(b"<html>").is_empty());
    }
}
