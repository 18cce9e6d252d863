//! The in-toto statement (SLSA provenance v1) of one index, free of I/O: its subjects are the
//! index and each platform image, and it records the source, the build parameters, what each
//! platform's Batch job was, and which builder image ran.

use serde_json::{Value, json};

use crate::{
    api::{BuildArg, MultiArchBuildSpec, MultiArchBuildStatus, PlatformStatus},
    batch::BuildRef,
    provenance::{BUILDER_IMAGE_LABEL, inputs_hash},
    registry::IndexChild,
};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What `buildDefinition.buildType` says: how to read `externalParameters`.
pub const BUILD_TYPE: &str = "https://multiarch.dev/MultiArchBuild/v1";
/// What `runDetails.builder.id` starts with; the controller's version follows (`@v0.1.0`).
pub const BUILDER_ID_PREFIX: &str = "https://multiarch.dev/multiarch-operator";

/// This controller's builder id.
pub fn builder_id() -> String {
    format!("{BUILDER_ID_PREFIX}@v{}", env!("CARGO_PKG_VERSION"))
}

/// What went into one index.
pub struct BuildFacts<'a> {
    pub reference: &'a BuildRef,
    /// The spec with every `valueFrom` resolved.
    pub spec: &'a MultiArchBuildSpec,
    pub status: &'a MultiArchBuildStatus,
    pub index_digest: &'a str,
    /// The index's images and their labels, as read from the registry.
    pub children: &'a [IndexChild],
}

/// Whether a build argument's name looks like it holds a secret; its value is then left out.
pub fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "key",
        "credential",
        "auth",
        "private",
        "cert",
        "session",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// The statement, serialised (the bytes that are signed and pushed).
pub fn statement(facts: &BuildFacts<'_>) -> Vec<u8> {
    let spec = facts.spec;
    let commit = facts
        .status
        .source
        .as_ref()
        .and_then(|s| s.commit.clone())
        .unwrap_or_default();
    let mut subject = vec![json!({"name": spec.index_image(), "digest": sha256_of(facts.index_digest)})];
    subject.extend(
        facts
            .children
            .iter()
            .map(|child| json!({"name": spec.platform_image(child.platform), "digest": sha256_of(&child.digest)})),
    );

    let mut dependencies = vec![json!({
        "uri": format!("git+{}", spec.source.git.url),
        "digest": {"gitCommit": commit},
        "annotations": {"revision": spec.source.git.revision},
    })];
    for child in facts.children {
        if let Some(builder) = child.labels.get(BUILDER_IMAGE_LABEL) {
            dependencies.push(builder_dependency(&child.platform.to_string(), builder));
        }
    }

    let platforms: Vec<Value> = spec
        .platforms
        .iter()
        .map(|p| {
            json!({
                "platform": p.platform.as_str(),
                "jobQueue": p.job_queue,
                "target": p.target,
                "buildArgs": p.build_args.as_deref().map(build_args),
            })
        })
        .collect();
    let jobs: Vec<Value> = facts.status.platforms.iter().filter_map(job_record).collect();
    let finished = facts
        .status
        .platforms
        .iter()
        .filter_map(|p| p.stopped_at.as_ref().map(|t| t.0.to_string()))
        .max();

    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {
                        "url": spec.source.git.url,
                        "revision": spec.source.git.revision,
                        "contextDir": spec.source.context_dir,
                        "dockerfile": spec.source.dockerfile,
                        "target": spec.source.target,
                    },
                    "buildArgs": build_args(spec.build_args.as_deref().unwrap_or_default()),
                    "platforms": platforms,
                    "output": {
                        "repository": spec.output.repository,
                        "tag": spec.output.tag,
                        "additionalTags": spec.output.additional_tags,
                        "mediaType": spec.output.media_type,
                    },
                    "jobDefinition": spec.job_definition,
                },
                "internalParameters": {
                    "namespace": facts.reference.namespace,
                    "name": facts.reference.name,
                    "uid": facts.reference.uid,
                    "inputsHash": inputs_hash(spec),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": builder_id(),
                    "version": {"multiarch-operator": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {
                    "invocationId": facts.reference.uid,
                    "startedOn": facts.status.start_time.as_ref().map(|t| t.0.to_string()),
                    "finishedOn": finished,
                },
                "byproducts": jobs,
            },
        },
    })
    .to_string()
    .into_bytes()
}

/// The commit a statement says its source was built from.
pub fn source_commit(statement: &Value) -> Option<&str> {
    statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()?
        .iter()
        .find(|d| d["uri"].as_str().is_some_and(|uri| uri.starts_with("git+")))?["digest"]["gitCommit"]
        .as_str()
}

/// Whether a statement names `digest` (`sha256:<hex>`) as one of its subjects.
pub fn names_subject(statement: &Value, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    statement["subject"]
        .as_array()
        .is_some_and(|subjects| subjects.iter().any(|s| s["digest"]["sha256"] == hex))
}

/// `{"sha256": "<hex>"}` of a `sha256:<hex>` digest.
fn sha256_of(digest: &str) -> Value {
    json!({"sha256": digest.strip_prefix("sha256:").unwrap_or(digest)})
}

/// The builder image a platform's job ran in, as its label names it: `repo@sha256:…` (a manifest
/// digest) or `sha256:…` (a local image id, when the image was not pulled from a registry).
fn builder_dependency(platform: &str, label: &str) -> Value {
    let (uri, digest, kind) = match label.split_once('@') {
        Some((repo, digest)) => (format!("oci://{repo}"), digest, "manifest"),
        None => ("docker-image-id".to_string(), label, "image-id"),
    };
    json!({
        "name": format!("builder {platform}"),
        "uri": uri,
        "digest": sha256_of(digest),
        "annotations": {"digestOf": kind},
    })
}

/// Build arguments by name; values of names that look secret are left out.
fn build_args(args: &[BuildArg]) -> Value {
    let entries: Vec<Value> = args
        .iter()
        .map(|arg| {
            if looks_secret(&arg.name) {
                json!({"name": arg.name, "valueOmitted": "the name looks like a secret's"})
            } else {
                json!({"name": arg.name, "value": arg.value})
            }
        })
        .collect();
    Value::Array(entries)
}

/// One platform's Batch job: ARN, queue, job definition and revision, attempts, times.
fn job_record(platform: &PlatformStatus) -> Option<Value> {
    let job_id = platform.job_id.as_ref()?;
    let revision = platform
        .job_definition
        .as_deref()
        .and_then(|d| d.rsplit_once(':'))
        .and_then(|(_, rev)| rev.parse::<u64>().ok());
    Some(json!({
        "name": format!("batch-job {}", platform.platform),
        "uri": platform.job_arn.clone().unwrap_or_else(|| job_id.clone()),
        "annotations": {
            "platform": platform.platform.as_str(),
            "jobId": job_id,
            "jobQueue": platform.job_queue,
            "jobDefinition": platform.job_definition,
            "jobDefinitionRevision": revision,
            "attempts": platform.attempts,
            "startedAt": platform.started_at.as_ref().map(|t| t.0.to_string()),
            "stoppedAt": platform.stopped_at.as_ref().map(|t| t.0.to_string()),
            "imageDigest": platform.digest,
            "commit": platform.commit,
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;
    use crate::api::{Platform, SourceStatus};

    fn spec() -> MultiArchBuildSpec {
        serde_json::from_value(json!({
            "source": {"git": {"url": "https://git.example/app.git", "revision": "main"}},
            "buildArgs": [{"name": "VERSION", "value": "1.2"}, {"name": "NPM_TOKEN", "value": "hunter2"}],
            "output": {"repository": "reg.example/app", "tag": "v1"},
            "platforms": [
                {"platform": "linux/amd64", "jobQueue": "q-amd64"},
                {"platform": "linux/arm64", "jobQueue": "q-arm64"},
            ],
        }))
        .expect("spec")
    }

    const INDEX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const AMD: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn the_statement_names_the_index_and_every_platform_image_and_how_each_was_built() {
        let spec = spec();
        let mut amd64 = PlatformStatus::from(Platform::LinuxAmd64);
        amd64.job_id = Some("j1".into());
        amd64.job_arn = Some("arn:aws:batch:us-east-1:1:job/j1".into());
        amd64.job_definition = Some("arn:aws:batch:us-east-1:1:job-definition/builder:7".into());
        amd64.attempts = Some(2);
        amd64.stopped_at = Some(Time(Timestamp::UNIX_EPOCH));
        let status = MultiArchBuildStatus {
            source: Some(SourceStatus {
                commit: Some(COMMIT.into()),
            }),
            platforms: vec![amd64],
            ..Default::default()
        };
        let children = [IndexChild {
            platform: Platform::LinuxAmd64,
            digest: AMD.into(),
            labels: BTreeMap::from([(BUILDER_IMAGE_LABEL.to_string(), format!("reg.example/builder@{AMD}"))]),
        }];
        let reference = BuildRef::new("team", "app", "uid-1");
        let bytes = statement(&BuildFacts {
            reference: &reference,
            spec: &spec,
            status: &status,
            index_digest: INDEX,
            children: &children,
        });
        let s: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["predicateType"], PREDICATE_TYPE);
        let subjects: Vec<&str> = s["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["digest"]["sha256"].as_str())
            .collect();
        assert_eq!(subjects, [&INDEX[7..], &AMD[7..]]);
        let definition = &s["predicate"]["buildDefinition"];
        assert_eq!(definition["buildType"], BUILD_TYPE);
        assert_eq!(definition["resolvedDependencies"][0]["digest"]["gitCommit"], COMMIT);
        assert_eq!(
            definition["resolvedDependencies"][1]["uri"],
            "oci://reg.example/builder"
        );
        let args = &definition["externalParameters"]["buildArgs"];
        assert_eq!(args[0]["value"], "1.2");
        assert_eq!(args[1]["name"], "NPM_TOKEN");
        assert!(args[1].get("value").is_none());
        assert!(!String::from_utf8_lossy(&bytes).contains("hunter2"));
        let job = &s["predicate"]["runDetails"]["byproducts"][0]["annotations"];
        assert_eq!(job["jobDefinitionRevision"], 7);
        assert_eq!(job["attempts"], 2);
        assert!(
            s["predicate"]["runDetails"]["builder"]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(BUILDER_ID_PREFIX))
        );
    }

    #[test]
    fn secret_looking_names_are_recognised() {
        for name in [
            "NPM_TOKEN",
            "aws_secret_access_key",
            "DB_PASSWORD",
            "SSH_PRIVATE",
            "GH_AUTH",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["VERSION", "BASE_IMAGE", "GO_VERSION"] {
            assert!(!looks_secret(name), "{name}");
        }
    }
}
