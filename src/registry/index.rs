//! Pure index logic: pick a platform's entry from an index, check coverage, and serialise the
//! index we push.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::{IndexMediaType, Platform};

use super::parse::{DOCKER_LIST, Descriptor, ImageIndex, IndexEntry, OCI_INDEX, PlatformFields};

/// The `mediaType` / `Content-Type` of an index of this kind.
pub fn index_media_type(media_type: IndexMediaType) -> &'static str {
    match media_type {
        IndexMediaType::Oci => OCI_INDEX,
        IndexMediaType::Docker => DOCKER_LIST,
    }
}

/// One verified per-platform image, as it goes into the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformImage {
    pub platform: Platform,
    /// The reference it was read from, e.g. `127.0.0.1:5000/demo:v1-arm64`.
    pub image: String,
    /// The image manifest: its media type, digest and size in bytes.
    pub descriptor: Descriptor,
    /// What its config says.
    pub config: PlatformFields,
}

/// Whether an index entry's declared platform is `platform`. Entries without a platform never
/// match; arm64 without a variant matches `linux/arm64/v8` (and `linux/arm64`).
fn entry_matches(entry: &IndexEntry, platform: Platform) -> bool {
    entry.is_image_manifest()
        && !entry.is_attestation()
        && entry
            .platform
            .as_ref()
            .is_some_and(|p| platform.matches_config(&p.os, &p.architecture, p.variant.as_deref()))
}

/// The entry of `index` for `platform`: attestation entries (`unknown/unknown`) and nested indexes
/// are skipped; an entry whose variant equals the platform's descriptor variant wins over one that
/// names none.
pub fn pick_platform_entry(index: &ImageIndex, platform: Platform) -> Option<&IndexEntry> {
    let mut candidates = index.manifests.iter().filter(|e| entry_matches(e, platform));
    let first = candidates.next()?;
    let exact =
        |e: &&IndexEntry| e.platform.as_ref().and_then(|p| p.variant.as_deref()) == platform.descriptor_variant();
    if exact(&first) {
        return Some(first);
    }
    candidates.find(exact).or(Some(first))
}

/// The platforms an index offers, attestations left out, for messages: `linux/amd64, linux/arm64/v8`.
pub fn offered_platforms(index: &ImageIndex) -> String {
    let offered: Vec<String> = index
        .manifests
        .iter()
        .filter(|e| !e.is_attestation())
        .map(|e| match &e.platform {
            Some(p) => p.to_string(),
            None => format!("{} without platform", e.descriptor.digest),
        })
        .collect();
    if offered.is_empty() {
        "no platform".into()
    } else {
        offered.join(", ")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexOut<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<DescriptorOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorOut<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    platform: PlatformOut<'a>,
}

#[derive(Serialize)]
struct PlatformOut<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// Serialise the index (compact JSON, no trailing newline), entries in the order given. These bytes
/// are hashed and sent as they are. The variant is the platform's descriptor variant (arm64 → `v8`),
/// else the one the image config names, else none.
pub fn build_index(
    media_type: IndexMediaType,
    images: &[PlatformImage],
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<u8>, serde_json::Error> {
    let index = IndexOut {
        schema_version: 2,
        media_type: index_media_type(media_type),
        manifests: images
            .iter()
            .map(|i| DescriptorOut {
                media_type: &i.descriptor.media_type,
                digest: &i.descriptor.digest,
                size: i.descriptor.size,
                platform: PlatformOut {
                    architecture: i.platform.architecture(),
                    os: i.platform.os(),
                    variant: i.platform.descriptor_variant().or(i.config.variant.as_deref()),
                },
            })
            .collect(),
        annotations,
    };
    serde_json::to_vec(&index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::parse::{Manifest, OCI_MANIFEST, parse_manifest};

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(platform: Platform, c: char, variant: Option<&str>) -> PlatformImage {
        PlatformImage {
            platform,
            image: format!("r/x:t-{}", platform.tag_suffix()),
            descriptor: Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: digest(c),
                size: 123,
            },
            config: PlatformFields {
                os: "linux".into(),
                architecture: platform.architecture().into(),
                variant: variant.map(String::from),
            },
        }
    }

    #[test]
    fn builds_an_oci_index_that_parses_back() {
        let images = [
            image(Platform::LinuxAmd64, 'a', None),
            image(Platform::LinuxArm64, 'b', None),
        ];
        let bytes = build_index(IndexMediaType::Oci, &images, &BTreeMap::new()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":123,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":123,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
                digest('a'),
                digest('b')
            )
        );
        let Manifest::Index(parsed) = parse_manifest(&bytes, Some(OCI_INDEX)).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            pick_platform_entry(&parsed, Platform::LinuxArm64V8)
                .unwrap()
                .descriptor
                .digest,
            digest('b')
        );
        assert!(pick_platform_entry(&parsed, Platform::LinuxArm64V9).is_none());
        assert_eq!(offered_platforms(&parsed), "linux/amd64, linux/arm64/v8");

        let docker = build_index(IndexMediaType::Docker, &images[..1], &BTreeMap::new()).unwrap();
        assert!(String::from_utf8(docker).unwrap().contains(DOCKER_LIST));
    }

    #[test]
    fn variant_comes_from_the_config_when_the_platform_has_none() {
        let bytes = build_index(
            IndexMediaType::Oci,
            &[image(Platform::LinuxAmd64, 'a', Some("v3"))],
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(String::from_utf8(bytes).unwrap().contains(r#""variant":"v3""#));
    }

    #[test]
    fn picks_the_platform_entry_and_skips_attestations() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}},
              {{"mediaType":"{OCI_INDEX}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
            digest('1'),
            digest('2'),
            digest('3'),
            digest('4')
        );
        let Manifest::Index(index) = parse_manifest(body.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            pick_platform_entry(&index, Platform::LinuxArm64)
                .unwrap()
                .descriptor
                .digest,
            digest('4'),
            "exact variant preferred"
        );
        assert!(pick_platform_entry(&index, Platform::LinuxAmd64).is_none());
        assert_eq!(offered_platforms(&index), "linux/arm64, linux/arm64, linux/arm64/v8");
    }
}
