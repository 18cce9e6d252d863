//! The API contract: the committed CRD matches the types, every CEL rule compiles within the cost
//! budget, and the samples are accepted or rejected with their own specific messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use kube::{
    CustomResourceExt,
    core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema},
};
use multiarch_operator::api::{self, MultiArchBuild};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema() -> Value {
    let crd = MultiArchBuild::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

fn as_object(build: &MultiArchBuild) -> Value {
    serde_json::to_value(build).unwrap()
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(repo("crds/multiarch.dev_multiarchbuilds.yaml")).unwrap();
    assert!(
        committed == api::crd_yaml().unwrap(),
        "crds/multiarch.dev_multiarchbuilds.yaml is stale: run `make crds`"
    );
}

/// Every `x-kubernetes-validations` rule with the schema node it sits on.
fn rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(list) = node.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in list {
            out.push((path.to_string(), rule["rule"].as_str().unwrap().to_string()));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            rules(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        rules(items, &format!("{path}[]"), out);
    }
}

fn node_at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .fold(schema, |node, part| match part.strip_suffix("[]") {
            Some(name) => &node["properties"][name]["items"],
            None => &node["properties"][part],
        })
}

#[test]
fn every_cel_rule_compiles_and_stays_within_the_cost_budget() {
    let schema = schema();
    let compiled = compile_schema(&schema);
    let mut found = Vec::new();
    rules(&schema, "", &mut found);
    assert!(
        found.len() >= 15,
        "expected the CRD to carry its CEL rules, found {}",
        found.len()
    );
    for (path, rule) in &found {
        let node = node_at(&schema, path);
        let node_compiled = compile_schema(node);
        assert!(
            !node_compiled.has_errors(),
            "rule at {path} does not compile: {rule}: {:?}",
            node_compiled.compilation_errors()
        );
        let warnings = analyze_rule(rule, &node_compiled, ScopeContext::CrdValidation);
        // kube-cel's scope check does not know macro-bound variables (`self.all(p, ...)`).
        let bound_by_macro = |message: &str| {
            message
                .split('\'')
                .nth(1)
                .is_some_and(|var| rule.contains(&format!("({var}, ")))
        };
        let serious: Vec<_> = warnings
            .iter()
            .filter(|w| match w.kind {
                WarningKind::WrongScope => !bound_by_macro(&w.message),
                WarningKind::CostExceeded | WarningKind::MissingBounds => true,
                _ => false,
            })
            .collect();
        assert!(serious.is_empty(), "rule at {path}: {rule}: {serious:?}");
    }
    assert!(!compiled.has_errors());
}

struct Sample {
    path: PathBuf,
    text: String,
}

impl Sample {
    fn header(&self, key: &str) -> Option<String> {
        self.text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
    }
}

fn samples(dir: &str) -> Vec<Sample> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| Sample {
            text: std::fs::read_to_string(&path).unwrap(),
            path,
        })
        .collect()
}

#[test]
fn the_good_samples_pass_validate_and_the_cel_rules() {
    let good: Vec<Sample> = samples("config/samples")
        .into_iter()
        .filter(|s| s.text.contains("\nkind: MultiArchBuild\n"))
        .collect();
    assert!(good.len() >= 2, "only {} MultiArchBuild samples", good.len());
    for sample in good {
        let build: MultiArchBuild = serde_yaml::from_str(&sample.text).unwrap();
        api::validate(&build.spec).unwrap_or_else(|e| panic!("{}: {e}", sample.path.display()));
        Validator::new()
            .validate(&schema(), &as_object(&build), None)
            .unwrap_or_else(|e| panic!("{}: {e:?}", sample.path.display()));
    }
}

#[test]
fn every_bad_sample_is_rejected_with_its_own_message() {
    let bad = samples("config/samples/bad");
    assert!(bad.len() >= 20, "only {} bad samples", bad.len());
    let mut messages = std::collections::HashSet::new();
    for sample in &bad {
        let name = sample.path.file_name().unwrap().to_string_lossy();
        let expect = sample
            .header("expect")
            .unwrap_or_else(|| panic!("{name} has no '# expect:' line"));
        let error = match serde_yaml::from_str::<MultiArchBuild>(&sample.text) {
            Err(parse) => parse.to_string(),
            Ok(build) => match api::validate(&build.spec) {
                Ok(()) => panic!("{name} was accepted by validate()"),
                Err(invalid) => {
                    assert_eq!(invalid.0.len(), 1, "{name} should break exactly one rule: {invalid}");
                    if let Some(cel) = sample.header("cel") {
                        let errors = Validator::new()
                            .validate(&schema(), &as_object(&build), None)
                            .expect_err(&name);
                        assert!(
                            errors.iter().any(|e| e.message.contains(&cel)),
                            "{name}: no CEL error containing {cel:?}: {errors:?}"
                        );
                    }
                    invalid.to_string()
                }
            },
        };
        assert!(
            error.contains(&expect),
            "{name}:\n  expected: {expect}\n  got:      {error}"
        );
        assert!(
            messages.insert(error.clone()),
            "{name} repeats another sample's message: {error}"
        );
    }
}

fn vecoli() -> MultiArchBuild {
    serde_yaml::from_str(&std::fs::read_to_string(repo("config/samples/vecoli.yaml")).unwrap()).unwrap()
}

fn update_errors(old: &MultiArchBuild, new: &MultiArchBuild) -> Vec<String> {
    match Validator::new().validate(&schema(), &as_object(new), Some(&as_object(old))) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn the_spec_is_immutable_except_a_one_way_cancel() {
    let old = vecoli();

    let mut cancelled = old.clone();
    cancelled.spec.cancel = true;
    assert_eq!(update_errors(&old, &cancelled), Vec::<String>::new());
    assert!(
        update_errors(&cancelled, &old)
            .iter()
            .any(|m| m.contains("spec.cancel can only change from false to true"))
    );

    let mut retagged = old.clone();
    retagged.spec.output.tag = "other".into();
    assert!(
        update_errors(&old, &retagged)
            .iter()
            .any(|m| m.contains("spec.output is immutable"))
    );

    let mut more_platforms = old.clone();
    more_platforms.spec.platforms.truncate(1);
    assert!(
        update_errors(&old, &more_platforms)
            .iter()
            .any(|m| m.contains("spec.platforms is immutable"))
    );

    let mut no_args = old.clone();
    no_args.spec.build_args = None;
    assert!(
        update_errors(&old, &no_args)
            .iter()
            .any(|m| m.contains("cannot be added or removed"))
    );

    let mut new_revision = old.clone();
    new_revision.spec.source.git.revision = "main".into();
    assert!(
        update_errors(&old, &new_revision)
            .iter()
            .any(|m| m.contains("spec.source is immutable"))
    );
}

/// A build with the status the controller writes, phase by phase.
fn with_status(status: serde_json::Value) -> MultiArchBuild {
    let mut build = vecoli();
    build.status = Some(serde_json::from_value(status).unwrap());
    build
}

fn status_update_errors(old: serde_json::Value, new: serde_json::Value) -> Vec<String> {
    update_errors(&with_status(old), &with_status(new))
}

fn platform(job_id: Option<&str>, state: &str) -> serde_json::Value {
    let mut entry = serde_json::json!({"platform": "linux/arm64", "state": state});
    if let Some(id) = job_id {
        entry["jobId"] = id.into();
    }
    entry
}

/// The status only moves forward, and the API server says so: CEL transition rules on the status
/// schema refuse a terminal phase changing, a digest or image rewritten or removed, and a job id
/// changed; the writes a build makes on its way are accepted.
#[test]
fn the_status_only_moves_forward() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let image = format!("r.example/app@{digest}");
    // Normal progress: nothing, Pending, Building with a job, Assembling, Succeeded.
    let steps = [
        serde_json::json!({}),
        serde_json::json!({"phase": "Pending"}),
        serde_json::json!({"phase": "Building", "platforms": [platform(None, "SUBMITTED")]}),
        serde_json::json!({"phase": "Building", "platforms": [platform(Some("job-1"), "RUNNING")]}),
        serde_json::json!({"phase": "Assembling", "platforms": [platform(Some("job-1"), "SUCCEEDED")]}),
        serde_json::json!({"phase": "Succeeded", "digest": digest, "image": image,
                           "platforms": [platform(Some("job-1"), "SUCCEEDED")]}),
    ];
    for pair in steps.windows(2) {
        assert_eq!(
            status_update_errors(pair[0].clone(), pair[1].clone()),
            Vec::<String>::new(),
            "{} -> {}",
            pair[0],
            pair[1]
        );
    }
    let succeeded = steps[5].clone();
    // Rewriting the same succeeded status (e.g. observedGeneration) is accepted.
    let mut observed = succeeded.clone();
    observed["observedGeneration"] = 2.into();
    assert_eq!(status_update_errors(succeeded.clone(), observed), Vec::<String>::new());

    let refused = |new: serde_json::Value, message: &str| {
        let errors = status_update_errors(succeeded.clone(), new.clone());
        assert!(
            errors.iter().any(|m| m.contains(message)),
            "{new} was not refused with {message:?}: {errors:?}"
        );
    };
    let mut regressed = succeeded.clone();
    regressed["phase"] = "Assembling".into();
    refused(regressed, "never changes phase");
    let mut failed = succeeded.clone();
    failed["phase"] = "Failed".into();
    refused(failed, "never changes phase");
    let mut no_phase = succeeded.clone();
    no_phase.as_object_mut().unwrap().remove("phase");
    refused(no_phase, "never changes phase");
    let mut other_digest = succeeded.clone();
    other_digest["digest"] = format!("sha256:{}", "b".repeat(64)).into();
    refused(other_digest, "status.digest is written once");
    let mut no_digest = succeeded.clone();
    no_digest.as_object_mut().unwrap().remove("digest");
    refused(no_digest, "status.digest is written once");
    let mut other_image = succeeded.clone();
    other_image["image"] = "r.example/other@sha256:0".into();
    refused(other_image, "status.image is written once");
    // The resolved build arguments are written once.
    let inputs = serde_json::json!({"buildArgs": [{"name": "BASE", "value": image.clone()}]});
    let mut resolved = serde_json::json!({"phase": "Pending", "inputs": inputs});
    assert_eq!(
        status_update_errors(serde_json::json!({"phase": "Waiting"}), resolved.clone()),
        Vec::<String>::new()
    );
    let mut changed = resolved.clone();
    changed["inputs"]["buildArgs"][0]["value"] = "r.example/other@sha256:0".into();
    assert!(
        status_update_errors(resolved.clone(), changed)
            .iter()
            .any(|m| m.contains("status.inputs is written once"))
    );
    resolved.as_object_mut().unwrap().remove("inputs");
    assert!(
        status_update_errors(serde_json::json!({"phase": "Pending", "inputs": inputs}), resolved)
            .iter()
            .any(|m| m.contains("status.inputs is written once"))
    );
    let mut other_job = succeeded.clone();
    other_job["platforms"] = serde_json::json!([platform(Some("job-2"), "SUCCEEDED")]);
    refused(other_job, "jobId never changes once set");
    let mut lost_job = succeeded.clone();
    lost_job["platforms"] = serde_json::json!([platform(None, "SUCCEEDED")]);
    refused(lost_job, "jobId never changes once set");
    let mut no_platforms = succeeded.clone();
    no_platforms.as_object_mut().unwrap().remove("platforms");
    refused(no_platforms, "an entry is never removed");

    // Also while building: a job id, once recorded, stays.
    let errors = status_update_errors(steps[3].clone(), steps[2].clone());
    assert!(errors.iter().any(|m| m.contains("jobId never changes")), "{errors:?}");
}

/// `spec.output.cache`: what `validate()` and the CRD's CEL rules accept, and the messages both
/// give. An object without `cache` (every object made before it existed) stays valid.
#[test]
fn the_cache_repository_is_checked_by_validate_and_by_the_cel_rules_alike() {
    const ECR: &str = "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com";
    /// The cache, the tag, the field and message validate() gives, the CEL message; None: accepted.
    type Case = (
        Value,
        &'static str,
        Option<(&'static str, &'static str)>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (Value::Null, "3f2a9c1", None, None),
        (serde_json::json!({}), "3f2a9c1", None, None),
        (serde_json::json!({"mode": "off"}), "3f2a9c1", None, None),
        (
            serde_json::json!({"mode": "min", "repository": format!("{ECR}/cache/vecoli")}),
            "3f2a9c1",
            None,
            None,
        ),
        (
            serde_json::json!({"repository": format!("{ECR}/vecoli")}),
            "3f2a9c1",
            None,
            None,
        ),
        (
            serde_json::json!({"repository": "ghcr.io/team/cache"}),
            "3f2a9c1",
            Some((
                "spec.output.cache.repository",
                "must be on the same registry host as spec.output.repository",
            )),
            Some("spec.output.cache.repository must be on the same registry host as spec.output.repository"),
        ),
        (
            // The same host name with a port is another registry to log in to.
            serde_json::json!({"repository": format!("{ECR}:443/vecoli-cache")}),
            "3f2a9c1",
            Some((
                "spec.output.cache.repository",
                "must be on the same registry host as spec.output.repository",
            )),
            Some("same registry host"),
        ),
        (
            serde_json::json!({"repository": format!("{ECR}/vecoli-cache:main")}),
            "3f2a9c1",
            Some(("spec.output.cache.repository", "allowed: a repository without a tag")),
            Some("spec.output.cache.repository must not include a tag"),
        ),
        (
            serde_json::json!({"repository": format!("{ECR}/vecoli-cache@sha256:{}", "0".repeat(64))}),
            "3f2a9c1",
            Some(("spec.output.cache.repository", "allowed: a repository without a digest")),
            Some("spec.output.cache.repository must not include a digest"),
        ),
        (
            serde_json::json!({"repository": format!("{ECR}/Vecoli-Cache")}),
            "3f2a9c1",
            Some((
                "spec.output.cache.repository",
                "empty (the output repository) or host[:port]/path",
            )),
            None,
        ),
        // The cache tags: buildcache-<arch>[-<variant>], in the output repository unless moved.
        (
            Value::Null,
            "buildcache",
            Some(("spec.output.tag", "must not be buildcache or start with buildcache-")),
            Some("spec.output.tag must not be buildcache or start with buildcache-"),
        ),
        (
            serde_json::json!({"repository": format!("{ECR}/vecoli")}),
            "buildcache-amd64",
            Some(("spec.output.tag", "must not be buildcache")),
            Some("spec.output.tag must not be buildcache"),
        ),
        (serde_json::json!({"mode": "off"}), "buildcache", None, None),
        (
            serde_json::json!({"repository": format!("{ECR}/vecoli-cache")}),
            "buildcache-amd64",
            None,
            None,
        ),
        (Value::Null, "buildcache2", None, None),
    ];
    for (cache, tag, expected, cel) in cases {
        let mut object = as_object(&vecoli());
        object["spec"]["output"]["tag"] = tag.into();
        if !cache.is_null() {
            object["spec"]["output"]["cache"] = cache.clone();
        }
        let case = format!("cache {cache}, tag {tag}");
        let build: MultiArchBuild = serde_json::from_value(object.clone()).unwrap();
        match (api::validate(&build.spec), expected) {
            (Ok(()), None) => {}
            (Err(invalid), Some((field, message))) => {
                assert_eq!(invalid.0.len(), 1, "{case}: {invalid}");
                assert_eq!(invalid.0[0].field, field, "{case}: {invalid}");
                assert!(invalid.0[0].problem.contains(message), "{case}: {invalid}");
            }
            (got, _) => panic!("{case}: validate() gave {got:?}, expected {expected:?}"),
        }
        let errors: Vec<String> = match Validator::new().validate(&schema(), &object, None) {
            Ok(()) => vec![],
            Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
        };
        match cel {
            None => assert!(
                errors.is_empty() || expected.is_some(),
                "{case}: the CEL rules refused: {errors:?}"
            ),
            Some(message) => assert!(
                errors.iter().any(|e| e.contains(message)),
                "{case}: no CEL error containing {message:?}: {errors:?}"
            ),
        }
        // What the controller sends is what validate() accepted: serialising the typed build
        // gives an object the CEL rules accept too.
        if expected.is_none() {
            Validator::new()
                .validate(&schema(), &as_object(&build), None)
                .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        }
    }

    // Part of spec.output: immutable like the rest of it.
    let old = vecoli();
    let mut uncached = old.clone();
    uncached.spec.output.cache.mode = api::CacheMode::Off;
    assert!(
        update_errors(&old, &uncached)
            .iter()
            .any(|m| m.contains("spec.output is immutable")),
        "{:?}",
        update_errors(&old, &uncached)
    );
}

/// `spec.output.additionalTags`, validate() and the CEL rules alike: `buildcache-*` is fine while
/// the cache lives elsewhere; every per-platform tag `<tag>-<suffix>` is reserved, listed platform
/// or not.
#[test]
fn additional_tags_are_checked_by_validate_and_by_the_cel_rules_alike() {
    let cel = |build: &MultiArchBuild| Validator::new().validate(&schema(), &as_object(build), None);
    let mut build = vecoli();
    build.spec.output.additional_tags = vec!["latest".into(), "v6.0.0".into(), "buildcache-x".into()];
    assert!(api::validate(&build.spec).is_err());
    assert!(cel(&build).is_err());
    build.spec.output.cache.repository = format!("{}-cache", build.spec.output.repository);
    api::validate(&build.spec).unwrap();
    cel(&build).unwrap();

    for suffix in ["amd64-v2", "arm64-v9", "arm64-v8"] {
        let mut reserved = build.clone();
        reserved.spec.output.additional_tags = vec![format!("{}-{suffix}", reserved.spec.output.tag)];
        let invalid = api::validate(&reserved.spec).unwrap_err().to_string();
        assert!(invalid.contains("must not be a per-platform tag"), "{invalid}");
        let errors = cel(&reserved).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("must not be a per-platform tag")),
            "{errors:?}"
        );
    }
    // Another tag's per-platform suffix is just a tag.
    build.spec.output.additional_tags = vec!["latest-arm64".into()];
    api::validate(&build.spec).unwrap();
    cel(&build).unwrap();
}
