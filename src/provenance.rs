//! What a build's images say about where they came from, and how that is checked.
//!
//! The builder labels every per-platform image with the commit it built, the git URL, the build's
//! uid and a hash of the build's inputs. The assembler accepts a child into the index only when
//! its labels name this build and this commit; reuse of an existing index needs the same commit
//! and the same input hash on every child.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::{BuildArg, MultiArchBuildSpec};

/// The commit the image was built from (OCI annotation key, used as a label).
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";
/// The git URL the image was built from.
pub const SOURCE_LABEL: &str = "org.opencontainers.image.source";
/// When the index was assembled (index annotation only).
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
/// The uid of the MultiArchBuild whose job built the image.
pub const BUILD_UID_LABEL: &str = "dev.multiarch.build-uid";
/// The hash of the build's inputs ([`inputs_hash`]).
pub const INPUTS_LABEL: &str = "dev.multiarch.inputs";
/// The builder image the platform's job ran in: its first RepoDigest (`repo@sha256:…`) when it
/// was pulled from a registry, else its image id (`sha256:…`); absent when builder/build.sh could
/// not find its own container (it says so in the job log).
pub const BUILDER_IMAGE_LABEL: &str = "dev.multiarch.builder-image";

/// What every child of an index must say about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The build that must have built it; `None` when any build may have (reuse).
    pub build_uid: Option<String>,
    /// The full commit SHA it must have been built from.
    pub commit: String,
    /// [`inputs_hash`] of the spec.
    pub inputs: String,
}

impl Expected {
    /// The first label that differs from what is expected, as `label: found X, expected Y`.
    pub fn mismatch(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        let mut wanted = vec![
            (REVISION_LABEL, self.commit.as_str()),
            (INPUTS_LABEL, self.inputs.as_str()),
        ];
        if let Some(uid) = &self.build_uid {
            wanted.push((BUILD_UID_LABEL, uid));
        }
        wanted.into_iter().find_map(|(label, expected)| {
            let found = labels.get(label).map(String::as_str);
            (found != Some(expected)).then(|| {
                format!(
                    "label {label} is {}, expected {expected}",
                    found.map_or_else(|| "absent".to_string(), |f| format!("{f:?}"))
                )
            })
        })
    }
}

/// Whether `commit` is a commit id as git prints it (and the builder reports it): 40 lowercase
/// hex digits.
pub fn is_commit_id(commit: &str) -> bool {
    commit.len() == 40 && commit.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `revision` is a full commit SHA (40 hex digits): only then is what it names known
/// before building.
pub fn is_full_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit a spec pins, lowercase, when its revision is a full SHA.
pub fn pinned_commit(spec: &MultiArchBuildSpec) -> Option<String> {
    let revision = &spec.source.git.revision;
    is_full_commit(revision).then(|| revision.to_ascii_lowercase())
}

/// The inputs that decide what a build produces from a given commit, in a fixed order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inputs<'a> {
    git_url: &'a str,
    context_dir: &'a str,
    dockerfile: &'a str,
    /// By name: the order in the spec does not change the build.
    build_args: BTreeMap<&'a str, &'a str>,
    /// Sorted: the order in the spec does not change the index's content.
    platforms: Vec<String>,
    /// `spec.source.target`; left out when unset, so that the hash of a build without targets or
    /// per-platform overrides is what it was before they existed (its indexes stay reusable).
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    /// By platform, what each platform that builds differently from the above builds instead:
    /// its effective stage and build args. Left out when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    variants: BTreeMap<String, Variant<'a>>,
}

/// What one platform builds when it is not the build's own stage and args.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Variant<'a> {
    target: Option<&'a str>,
    build_args: BTreeMap<&'a str, &'a str>,
}

/// Build args by name.
fn by_name(args: Vec<&BuildArg>) -> BTreeMap<&str, &str> {
    args.into_iter()
        .map(|a| (a.name.as_str(), a.value.as_deref().unwrap_or_default()))
        .collect()
}

/// `sha256:<hex>` of the build's inputs (git URL, context, Dockerfile, build args, target,
/// platforms, and what each platform builds differently: its effective target and build args).
/// One hash for the whole build, labelled on every child: any platform's variant changes it.
/// The commit is not in it: it is compared on its own label. Nor is `spec.output` (tags, cache):
/// where the image goes and how fast it is built do not change what is built.
pub fn inputs_hash(spec: &MultiArchBuildSpec) -> String {
    let mut platforms: Vec<String> = spec.platforms.iter().map(|p| p.platform.to_string()).collect();
    platforms.sort();
    let variants = spec
        .platforms
        .iter()
        .filter(|p| spec.is_variant(p.platform))
        .map(|p| {
            let variant = Variant {
                target: spec.target_of(p.platform),
                build_args: by_name(spec.build_args_of(p.platform)),
            };
            (p.platform.to_string(), variant)
        })
        .collect();
    let inputs = Inputs {
        git_url: &spec.source.git.url,
        context_dir: &spec.source.context_dir,
        dockerfile: &spec.source.dockerfile,
        build_args: by_name(spec.build_args.iter().flatten().collect()),
        platforms,
        target: spec.source.target.as_deref(),
        variants,
    };
    // Serialising plain strings and maps cannot fail; an empty input would still hash.
    let bytes = serde_json::to_vec(&inputs).unwrap_or_default();
    crate::registry::sha256_digest(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MultiArchBuild;

    fn spec() -> MultiArchBuildSpec {
        let build: MultiArchBuild = serde_yaml::from_str(include_str!("../config/samples/vecoli.yaml")).unwrap();
        build.spec
    }

    #[test]
    fn the_inputs_hash_changes_with_each_input_and_not_with_order() {
        let base = spec();
        let hash = inputs_hash(&base);
        assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
        assert_eq!(inputs_hash(&base), hash, "deterministic");

        let mut other = base.clone();
        other.build_args = Some(vec![BuildArg::value("PYTHON_VERSION", "3.13")]);
        assert_ne!(inputs_hash(&other), hash, "build args");
        let mut other = base.clone();
        other.source.dockerfile = "Dockerfile.other".into();
        assert_ne!(inputs_hash(&other), hash, "dockerfile");
        let mut other = base.clone();
        other.source.context_dir = "sub".into();
        assert_ne!(inputs_hash(&other), hash, "context");
        let mut other = base.clone();
        other.platforms.pop();
        assert_ne!(inputs_hash(&other), hash, "platforms");

        let mut reordered = base.clone();
        reordered.platforms.reverse();
        assert_eq!(inputs_hash(&reordered), hash, "platform order");
        let mut retagged = base.clone();
        retagged.output.tag = "other".into();
        retagged.source.git.revision = "main".into();
        assert_eq!(inputs_hash(&retagged), hash, "tag and revision are not inputs");
        // The layer cache makes a build faster, not different: an index built with any cache is
        // reused by a build with another.
        let mut cached = base.clone();
        cached.output.cache.mode = crate::api::CacheMode::Off;
        cached.output.cache.repository = format!("{}-cache", base.output.repository);
        assert_eq!(inputs_hash(&cached), hash, "the cache is not an input");
    }

    #[test]
    fn the_inputs_hash_covers_what_value_from_resolved_to() {
        use crate::api::{BuildArgSource, BuildReference, InputsStatus, MultiArchBuildStatus, ResolvedBuildArg};
        let mut spec = spec();
        spec.build_args = Some(vec![BuildArg {
            name: "BASE".into(),
            value: None,
            value_from: Some(BuildArgSource {
                multi_arch_build: BuildReference { name: "base".into() },
            }),
        }]);
        let resolved_to = |value: &str| {
            let status = MultiArchBuildStatus {
                inputs: Some(InputsStatus {
                    build_args: vec![ResolvedBuildArg {
                        name: "BASE".into(),
                        value: value.into(),
                    }],
                }),
                ..Default::default()
            };
            inputs_hash(&crate::plan::resolved_spec(&spec, &status).unwrap())
        };
        let a = resolved_to("r.example/base@sha256:aa");
        assert_eq!(a, resolved_to("r.example/base@sha256:aa"));
        assert_ne!(a, resolved_to("r.example/base@sha256:bb"), "another digest of the base");
        let mut literal = spec.clone();
        literal.build_args = Some(vec![BuildArg::value("BASE", "r.example/base@sha256:aa")]);
        assert_eq!(inputs_hash(&literal), a, "the same as passing the pinned value by hand");
    }

    #[test]
    fn the_inputs_hash_covers_targets_and_per_platform_args_by_their_effect() {
        let base = spec();
        let hash = inputs_hash(&base);
        // Unchanged from before targets existed: the sample's hash is a fixed value.
        assert_eq!(
            hash, BASE_HASH,
            "a spec without targets or per-platform args hashes as it always did"
        );

        let mut targeted = base.clone();
        targeted.source.target = Some("runtime".into());
        assert_ne!(inputs_hash(&targeted), hash, "the build's target");

        let mut arm_target = base.clone();
        arm_target.platforms[0].target = Some("submit".into());
        assert_ne!(inputs_hash(&arm_target), hash, "a platform's target");
        let mut amd_target = base.clone();
        amd_target.platforms[1].target = Some("submit".into());
        assert_ne!(
            inputs_hash(&amd_target),
            inputs_hash(&arm_target),
            "which platform has the target"
        );

        // The same target on every platform: no child differs from another, but the hash follows
        // the spelling (a reuse missed is a rebuild, never a wrong image).
        let mut everywhere = base.clone();
        for p in &mut everywhere.platforms {
            p.target = Some("runtime".into());
        }
        assert_ne!(inputs_hash(&everywhere), hash);
        assert_eq!(everywhere.platform_differences(), None);

        let arg = BuildArg::value;
        let mut own = base.clone();
        own.platforms[1].build_args = Some(vec![arg("WITH_NEXTFLOW", "1")]);
        assert_ne!(inputs_hash(&own), hash, "a platform's added arg");
        let mut other_value = own.clone();
        other_value.platforms[1].build_args = Some(vec![arg("WITH_NEXTFLOW", "2")]);
        assert_ne!(inputs_hash(&other_value), inputs_hash(&own), "its value");
        let mut replaced = base.clone();
        replaced.platforms[1].build_args = Some(vec![arg("PYTHON_VERSION", "3.13")]);
        assert_ne!(inputs_hash(&replaced), hash, "a platform's replaced arg");
        // Replacing an arg by the same value builds the same thing.
        let mut same = base.clone();
        same.platforms[1].build_args = Some(vec![arg("PYTHON_VERSION", "3.12")]);
        assert_eq!(inputs_hash(&same), hash, "an override with the same value");
        assert_eq!(same.platform_differences(), None);

        // The platform order still does not matter.
        let mut reordered = own.clone();
        reordered.platforms.reverse();
        assert_eq!(inputs_hash(&reordered), inputs_hash(&own));
        // Additional tags are where the index goes, not what it is.
        let mut tagged = base.clone();
        tagged.output.additional_tags = vec!["latest".into()];
        assert_eq!(inputs_hash(&tagged), hash, "additional tags are not inputs");
    }

    /// [`inputs_hash`] of `config/samples/vecoli.yaml`, as computed before targets existed (the
    /// sha256 of `{"gitUrl":…,"contextDir":".","dockerfile":"Dockerfile","buildArgs":{…},"platforms":[…]}`).
    const BASE_HASH: &str = "sha256:1d711c976181be7209afd514c1570fa6ea6656cec3326d97913693b0fb062d0a";

    #[test]
    fn only_a_full_sha_pins_the_commit() {
        let mut s = spec();
        s.source.git.revision = "3F2A9C1E0B5D4C3B2A1908F7E6D5C4B3A2918070".into();
        assert_eq!(
            pinned_commit(&s).as_deref(),
            Some("3f2a9c1e0b5d4c3b2a1908f7e6d5c4b3a2918070")
        );
        s.source.git.revision = "3f2a9c1".into();
        assert_eq!(pinned_commit(&s), None);
        s.source.git.revision = "main".into();
        assert_eq!(pinned_commit(&s), None);
    }

    #[test]
    fn mismatch_names_the_first_label_that_differs() {
        let expected = Expected {
            build_uid: Some("uid-1".into()),
            commit: "a".repeat(40),
            inputs: "sha256:x".into(),
        };
        let mut labels: BTreeMap<String, String> = [
            (REVISION_LABEL, "a".repeat(40)),
            (INPUTS_LABEL, "sha256:x".into()),
            (BUILD_UID_LABEL, "uid-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(expected.mismatch(&labels), None);
        labels.insert(BUILD_UID_LABEL.into(), "uid-2".into());
        assert_eq!(
            expected.mismatch(&labels).unwrap(),
            "label dev.multiarch.build-uid is \"uid-2\", expected uid-1"
        );
        let any_build = Expected {
            build_uid: None,
            ..expected.clone()
        };
        assert_eq!(any_build.mismatch(&labels), None, "reuse accepts any build");
        labels.remove(REVISION_LABEL);
        assert_eq!(
            expected.mismatch(&labels).unwrap(),
            format!("label {REVISION_LABEL} is absent, expected {}", "a".repeat(40))
        );
    }
}
