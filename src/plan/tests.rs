use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::api::{BuildArg, GitSources, MultiArchBuild, MultiArchBuildStatus, Phase, Platform};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn sample_spec() -> MultiArchBuildSpec {
    let build: MultiArchBuild = serde_yaml::from_str(include_str!("../../config/samples/vecoli.yaml")).unwrap();
    build.spec
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn step(spec: &MultiArchBuildSpec, status: &MultiArchBuildStatus, observed: &Observations, now: Timestamp) -> Plan {
    plan(&Input {
        spec,
        git_sources: GitSources::Remote,
        generation: Some(1),
        refusal: None,
        dependencies: None,
        status,
        observed,
        now,
    })
}

fn step_with(
    spec: &MultiArchBuildSpec,
    status: &MultiArchBuildStatus,
    observed: &Observations,
    now: Timestamp,
    dependencies: Option<&Dependencies>,
) -> Plan {
    plan(&Input {
        spec,
        git_sources: GitSources::Remote,
        generation: Some(1),
        refusal: None,
        dependencies,
        status,
        observed,
        now,
    })
}

fn snapshot(id: &str, state: JobState) -> JobSnapshot {
    JobSnapshot {
        attempts: 1,
        ..JobSnapshot::new(id, format!("name-{id}"), state)
    }
}

fn submitted(platforms: &[(Platform, &str)]) -> Observations {
    Observations {
        jobs: platforms
            .iter()
            .map(|(p, id)| {
                (
                    *p,
                    JobObservation::Submitted {
                        job_id: (*id).into(),
                        job_name: format!("name-{id}"),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn seen(jobs: &[(Platform, JobSnapshot)]) -> Observations {
    Observations {
        jobs: jobs
            .iter()
            .map(|(p, s)| (*p, JobObservation::Seen(s.clone())))
            .collect(),
        ..Default::default()
    }
}

fn ready(status: &MultiArchBuildStatus) -> (&str, &str) {
    let c = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

/// The status of condition `type_`, if present.
fn condition<'a>(status: &'a MultiArchBuildStatus, type_: &str) -> Option<&'a str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// `Succeeded`, `Reconciling` and `Stalled` agree with the phase (once the build has one) and
/// with `Ready`: what tools that read conditions conclude is what the phase says.
fn assert_outcome_conditions(status: &MultiArchBuildStatus) {
    let Some(phase) = status.phase else { return };
    let want = match phase {
        Phase::Succeeded => (Some("True"), None, None),
        Phase::Failed | Phase::Cancelled => (Some("False"), None, Some("True")),
        _ => (Some("Unknown"), Some("True"), None),
    };
    let got = (
        condition(status, SUCCEEDED),
        condition(status, RECONCILING),
        condition(status, STALLED),
    );
    assert_eq!(got, want, "{phase:?}: {:?}", status.conditions);
    assert_eq!(
        condition(status, READY),
        Some(if phase == Phase::Succeeded { "True" } else { "False" })
    );
    let reason = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.reason.clone())
    };
    assert_eq!(
        reason(SUCCEEDED),
        reason(READY),
        "Succeeded and Ready give the same reason"
    );
}

#[test]
fn conditions_tools_read_follow_the_build_through_its_life() {
    let spec = sample_spec();
    let first = step(&spec, &MultiArchBuildStatus::default(), &Observations::default(), t0());
    assert_outcome_conditions(&first.status);
    assert_eq!(condition(&first.status, SUCCEEDED), Some("Unknown"));
    assert_eq!(condition(&first.status, RECONCILING), Some("True"));

    let mut cancel = spec.clone();
    cancel.cancel = true;
    let cancelled = step(&cancel, &building(&spec), &Observations::default(), at(10)).status;
    assert_outcome_conditions(&cancelled);
    assert_eq!(condition(&cancelled, STALLED), Some("True"));

    let timed_out = step(
        &spec,
        &building(&spec),
        &Observations::default(),
        at(spec.timeout_seconds),
    )
    .status;
    assert_outcome_conditions(&timed_out);
    assert_eq!(
        timed_out
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .map(|c| c.reason.as_str()),
        Some(reason::DEADLINE_EXCEEDED)
    );

    // A build that ended before these conditions existed gets them from its Ready condition.
    let mut old = cancelled.clone();
    old.conditions.retain(|c| c.type_ == READY);
    let upgraded = step(&cancel, &old, &Observations::default(), at(20)).status;
    assert_outcome_conditions(&upgraded);
}

#[test]
fn a_finished_build_expires_after_its_ttl_or_the_default_and_a_running_one_never() {
    let mut spec = sample_spec();
    let mut cancel = spec.clone();
    cancel.cancel = true;
    let ended = step(&cancel, &building(&spec), &Observations::default(), at(10)).status;
    assert_eq!(expires_at(&spec, &building(&spec), Some(60)), None, "running");
    assert_eq!(expires_at(&spec, &ended, None), None, "no TTL: kept forever");
    assert_eq!(expires_at(&spec, &ended, Some(0)), None, "a default of 0: kept forever");
    assert_eq!(expires_at(&spec, &ended, Some(60)), Some(at(70)), "the default");
    spec.ttl_seconds_after_finished = Some(0);
    assert_eq!(expires_at(&spec, &ended, Some(60)), Some(at(10)), "its own 0: at once");
    spec.ttl_seconds_after_finished = Some(30);
    assert_eq!(expires_at(&spec, &ended, Some(60)), Some(at(40)), "its own TTL wins");
    spec.ttl_seconds_after_finished = Some(-1);
    assert!(crate::api::validate(&spec).is_err_and(|e| {
        e.to_string()
            .contains("spec.ttlSecondsAfterFinished: must be 0 to 31536000")
    }));
}

const ARM: Platform = Platform::LinuxArm64;
/// The commit the sample's revision pins.
const COMMIT: &str = "3f2a9c1e0b5d4c3b2a1908f7e6d5c4b3a2918070";

/// A succeeded job with a log stream, stopped at `at(stopped)`.
fn succeeded(id: &str, stopped: i64) -> JobSnapshot {
    JobSnapshot {
        log_stream_name: Some(format!("stream-{id}")),
        stopped_at: Some(at(stopped)),
        ..snapshot(id, JobState::Succeeded)
    }
}

/// What the logs say each platform pushed (the sample's commit).
fn results(pushed: &[(Platform, &str)]) -> Observations {
    Observations {
        results: pushed
            .iter()
            .map(|(p, digest)| {
                (
                    *p,
                    JobResult::Pushed {
                        commit: COMMIT.into(),
                        digest: (*digest).into(),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}
const AMD: Platform = Platform::LinuxAmd64;

/// A build whose two jobs were submitted at t0.
fn building(spec: &MultiArchBuildSpec) -> MultiArchBuildStatus {
    let first = step(
        spec,
        &MultiArchBuildStatus::default(),
        &Observations {
            existing_index: Some(ExistingIndex::Absent),
            ..Default::default()
        },
        t0(),
    );
    step(spec, &first.status, &submitted(&[(ARM, "a"), (AMD, "b")]), t0()).status
}

#[test]
fn first_step_checks_for_an_existing_index_then_submits_every_platform() {
    let spec = sample_spec();
    let first = step(&spec, &MultiArchBuildStatus::default(), &Observations::default(), t0());
    assert_eq!(first.actions, vec![Action::CheckExistingIndex]);
    assert_eq!(first.status.phase, Some(Phase::Pending));

    let second = step(
        &spec,
        &first.status,
        &Observations {
            existing_index: Some(ExistingIndex::Absent),
            ..Default::default()
        },
        t0(),
    );
    assert_eq!(second.actions, vec![Action::Submit(ARM), Action::Submit(AMD)]);
    assert_eq!(second.status.phase, Some(Phase::Building));
    assert_eq!(second.status.start_time.as_ref().map(|t| t.0), Some(t0()));

    let third = step(&spec, &second.status, &submitted(&[(ARM, "a"), (AMD, "b")]), t0());
    assert!(third.actions.is_empty(), "{:?}", third.actions);
    let arm = &third.status.platforms[0];
    assert_eq!(
        (arm.job_id.as_deref(), arm.state.as_deref()),
        (Some("a"), Some("SUBMITTED"))
    );
    assert_eq!(
        arm.image.as_deref(),
        Some("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli:3f2a9c1-arm64")
    );
    assert_eq!(third.status.platforms_pushed.as_deref(), Some("0/2"));
}

#[test]
fn reuse_existing_index_succeeds_without_building() {
    let spec = sample_spec();
    let index = IndexRef {
        digest: format!("sha256:{}", "ab".repeat(32)),
        platforms: vec![(ARM, "sha256:1".into()), (AMD, "sha256:2".into())],
        commit: Some(COMMIT.into()),
    };
    let plan = step(
        &spec,
        &MultiArchBuildStatus::default(),
        &Observations {
            existing_index: Some(ExistingIndex::Reusable(index)),
            attestation: Some(attached(&format!("sha256:{}", "ab".repeat(32)))),
            ..Default::default()
        },
        t0(),
    );
    assert!(plan.actions.is_empty());
    assert_eq!(plan.status.phase, Some(Phase::Succeeded));
    assert_eq!(ready(&plan.status), ("True", reason::REUSED));
    assert_eq!(plan.status.short_digest.as_deref(), Some("sha256:abababababab"));
    assert_eq!(plan.status.source.unwrap().commit.as_deref(), Some(COMMIT));
    assert_eq!(plan.status.platforms[1].digest.as_deref(), Some("sha256:2"));
    assert!(
        plan.status
            .image
            .as_deref()
            .unwrap()
            .ends_with(&format!("/vecoli@sha256:{}", "ab".repeat(32)))
    );
}

#[test]
fn reuse_disabled_submits_without_looking() {
    let mut spec = sample_spec();
    spec.output.reuse_existing = false;
    let plan = step(&spec, &MultiArchBuildStatus::default(), &Observations::default(), t0());
    assert_eq!(plan.actions, vec![Action::Submit(ARM), Action::Submit(AMD)]);
}

#[test]
fn an_index_that_differs_is_not_reused_and_the_condition_says_why() {
    let spec = sample_spec();
    let observed = Observations {
        existing_index: Some(ExistingIndex::Differs(
            "its linux/arm64 image's label x is absent".into(),
        )),
        ..Default::default()
    };
    let plan = step(&spec, &MultiArchBuildStatus::default(), &observed, t0());
    assert_eq!(plan.actions, vec![Action::Submit(ARM), Action::Submit(AMD)]);
    let condition = plan.status.conditions.iter().find(|c| c.type_ == INDEX_REUSED).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", reason::NOT_REUSABLE)
    );
    assert!(
        condition
            .message
            .contains("exists but is not reused: its linux/arm64 image's label x is absent")
    );
}

/// The two jobs succeeded; what each pushed is read from its log, then the index is assembled
/// from exactly those digests.
#[test]
fn all_succeeded_reads_what_each_job_pushed_then_assembles_exactly_that() {
    let spec = sample_spec();
    let status = building(&spec);
    let done = seen(&[(ARM, succeeded("a", 50)), (AMD, succeeded("b", 55))]);
    let reading = step(&spec, &status, &done, at(60));
    assert_eq!(
        reading.actions,
        vec![
            Action::ReadResult {
                platform: ARM,
                log_stream_name: "stream-a".into()
            },
            Action::ReadResult {
                platform: AMD,
                log_stream_name: "stream-b".into()
            }
        ]
    );
    assert_eq!(reading.status.phase, Some(Phase::Building));

    let assembling = step(
        &spec,
        &reading.status,
        &results(&[(ARM, "sha256:a1"), (AMD, "sha256:b2")]),
        at(61),
    );
    assert_eq!(
        assembling.actions,
        vec![Action::Assemble {
            children: vec![(ARM, "sha256:a1".into()), (AMD, "sha256:b2".into())],
            commit: COMMIT.into(),
            created: at(55),
        }]
    );
    assert_eq!(assembling.status.phase, Some(Phase::Assembling));
    assert_eq!(assembling.status.platforms_pushed.as_deref(), Some("2/2"));
    assert_eq!(assembling.status.platforms[0].digest.as_deref(), Some("sha256:a1"));
    assert_eq!(
        assembling.status.source.as_ref().unwrap().commit.as_deref(),
        Some(COMMIT)
    );

    let index = IndexRef {
        digest: "sha256:feed".into(),
        platforms: vec![(ARM, "sha256:a1".into()), (AMD, "sha256:b2".into())],
        commit: Some(COMMIT.into()),
    };
    let observed = Observations {
        assembly: Some(AssemblyOutcome::Pushed(index)),
        ..Default::default()
    };
    // The index is recorded at once; status.image waits for its provenance.
    let attesting = step(&spec, &assembling.status, &observed, at(62));
    assert_eq!(
        attesting.actions,
        vec![Action::Attest {
            digest: "sha256:feed".into()
        }]
    );
    assert_eq!(attesting.status.phase, Some(Phase::Assembling));
    assert_eq!(ready(&attesting.status), ("False", reason::ATTESTING));
    assert_eq!(attesting.status.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(attesting.status.image, None);

    let observed = Observations {
        attestation: Some(attached("sha256:feed")),
        ..Default::default()
    };
    let done = step(&spec, &attesting.status, &observed, at(62));
    assert_eq!(done.status.phase, Some(Phase::Succeeded));
    assert_eq!(
        done.status.image.as_deref(),
        Some("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli@sha256:feed")
    );
    assert!(done.status.provenance.as_ref().is_some_and(|p| p.signed));
    assert!(done.status.signature.is_some());
    let message = done.status.message.as_deref().unwrap();
    assert!(
        message.ends_with(
            "; signed by awskms:///alias/builds (reg.example/vecoli:sha256-feed.sig), provenance \
             reg.example/vecoli:sha256-feed.att"
        ),
        "{message}"
    );
    assert_eq!(ready(&done.status), ("True", reason::SUCCEEDED));
    assert_eq!(done.status.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(done.status.platforms[0].digest.as_deref(), Some("sha256:a1"));
    assert_eq!(done.status.completion_time.as_ref().map(|t| t.0), Some(at(62)));
    assert_eq!(done.wake_at, None);
}

/// The pushed index, as the registry answered for the sample's two platforms, and its provenance
/// attached.
fn pushed_index() -> Observations {
    Observations {
        assembly: Some(AssemblyOutcome::Pushed(IndexRef {
            digest: "sha256:feed".into(),
            platforms: vec![(ARM, "sha256:a1".into()), (AMD, "sha256:b2".into())],
            commit: Some(COMMIT.into()),
        })),
        attestation: Some(attached("sha256:feed")),
        ..Default::default()
    }
}

/// The provenance of the index `digest`, attached and signed.
fn attached(digest: &str) -> AttestationOutcome {
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    AttestationOutcome::Attached {
        provenance: ProvenanceStatus {
            image: format!("reg.example/vecoli:{tag}.att"),
            digest: "sha256:a77".into(),
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            signed: true,
        },
        signature: Some(SignatureStatus {
            image: format!("reg.example/vecoli:{tag}.sig"),
            digest: "sha256:516".into(),
            key: "awskms:///alias/builds".into(),
        }),
    }
}

/// A build whose jobs pushed and whose index assembly was asked for.
fn assembling(spec: &MultiArchBuildSpec) -> MultiArchBuildStatus {
    let status = building(spec);
    let mut observed = results(&[(ARM, "sha256:a1"), (AMD, "sha256:b2")]);
    observed.jobs = seen(&[(ARM, succeeded("a", 50)), (AMD, succeeded("b", 55))]).jobs;
    let plan = step(spec, &status, &observed, at(60));
    assert!(
        matches!(plan.actions[..], [Action::Assemble { .. }]),
        "{:?}",
        plan.actions
    );
    plan.status
}

/// A key that cannot sign (KMS disabled, access denied) keeps the build Assembling with the
/// reason, without status.image, and it is tried again until it works.
#[test]
fn a_failed_attestation_is_retried_and_status_image_waits_for_it() {
    let spec = sample_spec();
    let observed = Observations {
        assembly: pushed_index().assembly,
        ..Default::default()
    };
    let attesting = step(&spec, &assembling(&spec), &observed, at(62)).status;
    let failed = Observations {
        attestation: Some(AttestationOutcome::Failed {
            reason: reason::SIGNING_FAILED.into(),
            message: "KMS could not sign with awskms:///alias/builds: DisabledException".into(),
        }),
        ..Default::default()
    };
    let waiting = step(&spec, &attesting, &failed, at(63));
    assert!(waiting.actions.is_empty());
    assert_eq!(waiting.status.phase, Some(Phase::Assembling));
    assert_eq!(ready(&waiting.status), ("False", reason::SIGNING_FAILED));
    assert_eq!(condition(&waiting.status, RECONCILING), Some("True"));
    assert_eq!(waiting.status.image, None);
    assert_eq!(waiting.status.provenance, None);
    assert_eq!(waiting.wake_at, Some(at(63 + ATTEST_RETRY_SECONDS)));
    let message = waiting.status.message.as_deref().unwrap();
    assert!(
        message.contains("is pushed, but its provenance is not attached: KMS could not sign")
            && message.contains("status.image is written once it is"),
        "{message}"
    );

    // Woken again: attested again, however late (no deadline once the index is pushed).
    let again = step(&spec, &waiting.status, &Observations::default(), at(100_000));
    assert_eq!(
        again.actions,
        vec![Action::Attest {
            digest: "sha256:feed".into()
        }]
    );
    let done = step(&spec, &again.status, &pushed_index(), at(100_001));
    assert_eq!(ready(&done.status), ("True", reason::SUCCEEDED));
    assert!(done.status.image.is_some());
}

#[test]
fn without_additional_tags_the_index_tag_is_the_only_tag() {
    let spec = sample_spec();
    let done = step(&spec, &assembling(&spec), &pushed_index(), at(62));
    assert_eq!(done.status.phase, Some(Phase::Succeeded));
    assert!(done.actions.is_empty());
    assert_eq!(done.status.tags, vec!["3f2a9c1".to_string()]);
    assert!(!done.status.message.unwrap().contains("tagged"));
}

#[test]
fn additional_tags_are_pushed_after_the_index_is_verified_then_the_build_succeeds() {
    let mut spec = sample_spec();
    spec.output.additional_tags = vec!["latest".into(), "v1.0.0".into()];
    let assembling = assembling(&spec);
    assert!(assembling.tags.is_empty(), "nothing tagged before the index is pushed");

    // The index is pushed and verified: its digest is recorded at once (written once), then the
    // same digest is pushed under the other tags.
    let tagging = step(&spec, &assembling, &pushed_index(), at(62));
    assert_eq!(
        tagging.actions,
        vec![Action::PushTags {
            digest: "sha256:feed".into(),
            tags: vec!["latest".into(), "v1.0.0".into()],
        }]
    );
    assert_eq!(tagging.status.phase, Some(Phase::Assembling));
    assert_eq!(ready(&tagging.status), ("False", reason::ASSEMBLING));
    assert_eq!(tagging.status.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(tagging.status.tags, vec!["3f2a9c1".to_string()]);
    assert!(
        tagging
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("is pushed; pushing it as latest, v1.0.0 too"),
        "{:?}",
        tagging.status.message
    );

    let observed = Observations {
        tags: Some(TagsOutcome::Pushed(vec!["v1.0.0".into(), "latest".into()])),
        ..Default::default()
    };
    let done = step(&spec, &tagging.status, &observed, at(63));
    assert!(done.actions.is_empty());
    assert_eq!(done.status.phase, Some(Phase::Succeeded));
    assert_eq!(ready(&done.status), ("True", reason::SUCCEEDED));
    // Spec order, the main tag first, whatever order they were reported in.
    assert_eq!(done.status.tags, ["3f2a9c1", "latest", "v1.0.0"]);
    let message = done.status.message.unwrap();
    assert!(
        message.contains("(2 platforms, commit ") && message.ends_with("; tagged 3f2a9c1, latest, v1.0.0"),
        "{message}"
    );
}

/// A restart after some tags were recorded pushes only the others; one after every tag was pushed
/// but before the status said so pushes them again (harmless: the same bytes).
#[test]
fn a_restart_while_tagging_pushes_only_what_the_status_does_not_list() {
    let mut spec = sample_spec();
    spec.output.additional_tags = vec!["latest".into(), "v1.0.0".into()];
    let tagging = step(&spec, &assembling(&spec), &pushed_index(), at(62)).status;

    // The step after a crash: nothing observed, the same tags asked for again.
    let again = step(&spec, &tagging, &Observations::default(), at(100));
    assert!(matches!(&again.actions[..], [Action::PushTags { tags, .. }] if tags.len() == 2));

    let mut partly = tagging.clone();
    partly.tags.push("v1.0.0".into());
    let rest = step(&spec, &partly, &Observations::default(), at(100));
    assert_eq!(
        rest.actions,
        vec![Action::PushTags {
            digest: "sha256:feed".into(),
            tags: vec!["latest".into()],
        }]
    );
    // Past the deadline and cancelled meanwhile: the index is out, the tags still follow it.
    spec.cancel = true;
    let late = step(&spec, &partly, &Observations::default(), at(100_000));
    assert!(
        matches!(&late.actions[..], [Action::PushTags { .. }]),
        "{:?}",
        late.actions
    );
}

#[test]
fn a_tag_that_cannot_be_pushed_fails_the_build_and_keeps_the_index_digest() {
    let mut spec = sample_spec();
    spec.output.additional_tags = vec!["latest".into()];
    let tagging = step(&spec, &assembling(&spec), &pushed_index(), at(62)).status;
    let observed = Observations {
        tags: Some(TagsOutcome::Rejected {
            reason: "ImmutableTag".into(),
            message: "x:latest is immutable and holds sha256:other".into(),
        }),
        ..Default::default()
    };
    let failed = step(&spec, &tagging, &observed, at(63));
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&failed.status), ("False", "ImmutableTag"));
    assert_eq!(failed.status.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(failed.status.tags, ["3f2a9c1"]);
    let message = failed.status.message.unwrap();
    assert!(
        message.contains("was pushed and verified, but not under every tag") && message.contains("immutable"),
        "{message}"
    );
}

#[test]
fn a_reused_index_gets_the_additional_tags_too() {
    let mut spec = sample_spec();
    spec.output.additional_tags = vec!["latest".into()];
    let index = IndexRef {
        digest: "sha256:old".into(),
        platforms: vec![(ARM, "sha256:1".into()), (AMD, "sha256:2".into())],
        commit: Some(COMMIT.into()),
    };
    let observed = Observations {
        existing_index: Some(ExistingIndex::Reusable(index)),
        attestation: Some(attached("sha256:old")),
        ..Default::default()
    };
    let tagging = step(&spec, &MultiArchBuildStatus::default(), &observed, t0());
    assert_eq!(
        tagging.actions,
        vec![Action::PushTags {
            digest: "sha256:old".into(),
            tags: vec!["latest".into()],
        }]
    );
    let observed = Observations {
        tags: Some(TagsOutcome::Pushed(vec!["latest".into()])),
        ..Default::default()
    };
    let done = step(&spec, &tagging.status, &observed, at(1));
    assert_eq!(ready(&done.status), ("True", reason::REUSED));
    assert_eq!(done.status.tags, ["3f2a9c1", "latest"]);
    assert!(
        done.status
            .message
            .unwrap()
            .contains("already is an index built from commit")
    );
}

#[test]
fn children_that_differ_by_more_than_architecture_are_said_so() {
    let mut spec = sample_spec();
    let done = step(&spec, &assembling(&spec), &pushed_index(), at(62));
    let plain = done.status.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert!(!plain.message.contains("differ"), "{}", plain.message);

    spec.platforms[1].target = Some("submit".into());
    spec.platforms[1].build_args = Some(vec![crate::api::BuildArg::value("WITH_NEXTFLOW", "1")]);
    let done = step(&spec, &assembling(&spec), &pushed_index(), at(62));
    assert_eq!(ready(&done.status), ("True", reason::SUCCEEDED));
    let condition = done.status.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert!(
        condition.message.ends_with(
            "; the children differ by more than architecture (per-platform target or build args): linux/arm64 \
             the last stage; linux/amd64 target submit with its own build args WITH_NEXTFLOW"
        ),
        "{}",
        condition.message
    );
    assert_eq!(done.status.message.as_deref(), Some(condition.message.as_str()));
}

#[test]
fn rejected_assembly_fails_with_the_registry_reason() {
    let spec = sample_spec();
    let status = building(&spec);
    let done = seen(&[(ARM, succeeded("a", 50)), (AMD, succeeded("b", 50))]);
    let mut observed = results(&[(ARM, "sha256:a1"), (AMD, "sha256:b2")]);
    observed.jobs = done.jobs;
    let assembling = step(&spec, &status, &observed, at(60));
    assert!(
        matches!(assembling.actions[..], [Action::Assemble { .. }]),
        "{:?}",
        assembling.actions
    );
    let observed = Observations {
        assembly: Some(AssemblyOutcome::Rejected {
            reason: "ProvenanceMismatch".into(),
            message: "x@sha256:a1 is not what this build's linux/arm64 job built".into(),
        }),
        ..Default::default()
    };
    let failed = step(&spec, &assembling.status, &observed, at(61));
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&failed.status), ("False", "ProvenanceMismatch"));
    assert!(
        failed
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("linux/arm64 job built")
    );
    assert!(failed.status.digest.is_none());
}

#[test]
fn a_digest_recorded_once_is_never_replaced() {
    let spec = sample_spec();
    let status = building(&spec);
    let first = step(&spec, &status, &results(&[(ARM, "sha256:a1")]), at(10)).status;
    let again = step(&spec, &first, &results(&[(ARM, "sha256:other")]), at(11)).status;
    assert_eq!(again.platforms[0].digest.as_deref(), Some("sha256:a1"));
}

#[test]
fn a_log_without_the_result_lines_is_waited_for_then_fails_closed() {
    let spec = sample_spec();
    let mut status = building(&spec);
    status = step(
        &spec,
        &status,
        &seen(&[(ARM, succeeded("a", 50)), (AMD, succeeded("b", 50))]),
        at(51),
    )
    .status;
    let mut observed = results(&[(AMD, "sha256:b2")]);
    observed
        .results
        .insert(ARM, JobResult::NotInLog("its log ends with \"pushing\"".into()));
    let early = step(&spec, &status, &observed, at(60));
    assert!(early.actions.is_empty(), "{:?}", early.actions);
    assert_eq!(early.status.phase, Some(Phase::Building));
    assert_eq!(
        early.wake_at,
        Some(at(60 + RESULT_LOG_RETRY_SECONDS)),
        "read again soon"
    );
    let almost = step(&spec, &status, &observed, at(50 + RESULT_LOG_GRACE_SECONDS - 1));
    assert_eq!(
        almost.wake_at,
        Some(at(50 + RESULT_LOG_GRACE_SECONDS)),
        "then give up at the end"
    );

    let late = step(&spec, &early.status, &observed, at(50 + RESULT_LOG_GRACE_SECONDS));
    assert_eq!(late.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&late.status), ("False", reason::DIGEST_UNKNOWN));
    let message = late.status.message.unwrap();
    assert!(
        message.contains("linux/arm64: the job succeeded but what it pushed cannot be learned"),
        "{message}"
    );
    assert!(message.contains("rather than trust what the tag"), "{message}");
    assert!(late.status.digest.is_none() && late.status.image.is_none());
}

#[test]
fn platforms_that_built_different_commits_fail_the_build() {
    let mut spec = sample_spec();
    spec.source.git.revision = "main".into();
    let status = building(&spec);
    let mut observed = results(&[(ARM, "sha256:a1")]);
    observed.results.insert(
        AMD,
        JobResult::Pushed {
            commit: "b".repeat(40),
            digest: "sha256:b2".into(),
        },
    );
    let plan = step(&spec, &status, &observed, at(10));
    assert_eq!(ready(&plan.status), ("False", reason::SOURCE_MISMATCH));
    assert!(
        plan.status
            .message
            .unwrap()
            .contains("the platforms built different commits")
    );

    // A pinned revision: the commit built must be that one.
    let spec = sample_spec();
    let mut observed = Observations::default();
    observed.results.insert(
        ARM,
        JobResult::Pushed {
            commit: "c".repeat(40),
            digest: "sha256:a1".into(),
        },
    );
    let plan = step(&spec, &building(&spec), &observed, at(10));
    assert_eq!(ready(&plan.status), ("False", reason::SOURCE_MISMATCH));
    assert!(plan.status.message.unwrap().contains(&format!("not {COMMIT}")));
}

/// A submit whose answer was not recorded (the status write was lost): the job is looked for by
/// name until ListJobs has had time to list it, and only then submitted again.
#[test]
fn an_unrecorded_submit_is_looked_for_before_it_is_submitted_again() {
    let spec = sample_spec();
    let first = step(
        &spec,
        &MultiArchBuildStatus::default(),
        &Observations {
            existing_index: Some(ExistingIndex::Absent),
            ..Default::default()
        },
        t0(),
    );
    assert!(
        first
            .status
            .platforms
            .iter()
            .all(|p| p.submitted_at.as_ref().map(|t| t.0) == Some(t0()))
    );
    // The next reconcile has only that status (the job ids never reached it).
    let again = step(&spec, &first.status, &Observations::default(), at(5));
    assert_eq!(again.actions, vec![Action::Adopt(ARM), Action::Adopt(AMD)]);
    let not_listed = Observations {
        jobs: [(ARM, JobObservation::NotListed), (AMD, JobObservation::NotListed)]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let waiting = step(&spec, &again.status, &not_listed, at(5));
    assert!(waiting.actions.is_empty());
    assert_eq!(waiting.wake_at, Some(at(SUBMIT_SETTLE_SECONDS)));
    let resubmit = step(
        &spec,
        &waiting.status,
        &Observations::default(),
        at(SUBMIT_SETTLE_SECONDS),
    );
    assert_eq!(resubmit.actions, vec![Action::Submit(ARM), Action::Submit(AMD)]);
    // A refused submit created nothing: the intent is cleared, the step is retried by the caller.
    let refused = Observations {
        jobs: [(ARM, JobObservation::NotSubmitted)].into_iter().collect(),
        ..Default::default()
    };
    let cleared = step(&spec, &resubmit.status, &refused, at(SUBMIT_SETTLE_SECONDS));
    assert_eq!(cleared.status.platforms[0].submitted_at, None);
    assert!(!cleared.actions.contains(&Action::Submit(ARM)));
}

#[test]
fn one_failed_platform_fetches_logs_then_terminates_the_other_and_fails() {
    let spec = sample_spec();
    let status = building(&spec);
    let mut failed = snapshot("a", JobState::Failed);
    failed.status_reason = Some("Essential container in task exited".into());
    failed.exit_code = Some(2);
    failed.log_stream_name = Some("multiarch-builder/default/abc".into());
    let observed = seen(&[(ARM, failed), (AMD, snapshot("b", JobState::Running))]);
    let fetch = step(&spec, &status, &observed, at(30));
    assert_eq!(
        fetch.actions,
        vec![Action::FetchLogs {
            platform: ARM,
            log_stream_name: "multiarch-builder/default/abc".into()
        }]
    );
    assert!(!fetch.status.phase.unwrap().is_terminal());

    let mut with_logs = observed.clone();
    with_logs.failure_logs.insert(
        ARM,
        vec!["build.sh: docker build failed for linux/arm64: no such file".into()],
    );
    let done = step(&spec, &fetch.status, &with_logs, at(31));
    assert_eq!(
        done.actions,
        vec![Action::Terminate {
            platform: AMD,
            job_id: "b".into(),
            reason: "multiarch-operator: fail fast: linux/arm64 failed".into()
        }]
    );
    assert_eq!(done.status.phase, Some(Phase::Failed));
    let message = done.status.message.unwrap();
    for part in [
        "linux/arm64 failed",
        "Essential container",
        "exit code 2",
        "multiarch-builder/default/abc",
        "build.sh: docker build failed",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
}

#[test]
fn cancel_terminates_live_jobs_and_ends_cancelled() {
    let mut spec = sample_spec();
    let status = building(&spec);
    spec.cancel = true;
    let plan = step(
        &spec,
        &status,
        &seen(&[
            (ARM, snapshot("a", JobState::Running)),
            (AMD, snapshot("b", JobState::Succeeded)),
        ]),
        at(10),
    );
    assert_eq!(plan.actions.len(), 1);
    assert!(matches!(&plan.actions[0], Action::Terminate { job_id, .. } if job_id == "a"));
    assert_eq!(plan.status.phase, Some(Phase::Cancelled));
    assert_eq!(ready(&plan.status), ("False", reason::CANCELLED));
}

#[test]
fn a_new_generation_of_an_ended_build_is_observed_without_changing_its_outcome() {
    let mut spec = sample_spec();
    spec.cancel = true;
    let ended = step(&spec, &building(&spec), &Observations::default(), at(10)).status;
    let later = plan(&Input {
        spec: &spec,
        git_sources: GitSources::Remote,
        generation: Some(2),
        refusal: None,
        dependencies: None,
        status: &ended,
        observed: &Observations::default(),
        now: at(20),
    })
    .status;
    assert_eq!(later.observed_generation, Some(2));
    assert_eq!(later.conditions[0].observed_generation, Some(2));
    assert_eq!(
        later.conditions[0].last_transition_time,
        ended.conditions[0].last_transition_time
    );
    assert_eq!(
        (later.phase, ready(&later)),
        (Some(Phase::Cancelled), ("False", reason::CANCELLED))
    );
}

#[test]
fn deadline_terminates_and_fails() {
    let spec = sample_spec();
    let status = building(&spec);
    let plan = step(&spec, &status, &Observations::default(), at(spec.timeout_seconds));
    assert_eq!(plan.actions.len(), 2);
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&plan.status), ("False", reason::DEADLINE_EXCEEDED));
    let early = step(&spec, &status, &Observations::default(), at(spec.timeout_seconds - 1));
    assert_eq!(early.status.phase, Some(Phase::Building));
}

#[test]
fn a_missing_job_is_tolerated_briefly_then_fails_the_build_never_succeeds_it() {
    let spec = sample_spec();
    let mut status = building(&spec);
    // The arm64 job was submitted again later than the build started: its own grace counts.
    status.platforms[0].submitted_at = Some(Time(at(100)));
    let missing = Observations {
        jobs: [(ARM, JobObservation::Missing)].into_iter().collect(),
        ..Default::default()
    };
    let early = step(&spec, &status, &missing, at(100 + MISSING_JOB_GRACE_SECONDS - 1));
    assert_eq!(early.status.phase, Some(Phase::Building));
    assert!(early.actions.is_empty());
    assert_eq!(early.wake_at, Some(at(100 + MISSING_JOB_GRACE_SECONDS)));
    let late = step(&spec, &status, &missing, at(100 + MISSING_JOB_GRACE_SECONDS));
    assert_eq!(late.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&late.status), ("False", reason::JOB_LOST));
    // Lost is recorded and not live: only the other job is terminated, and never the lost one.
    assert_eq!(late.status.platforms[0].state.as_deref(), Some("LOST"));
    assert_eq!(
        late.actions,
        vec![Action::Terminate {
            platform: AMD,
            job_id: "b".into(),
            reason: "multiarch-operator: fail fast: a platform was lost".into()
        }]
    );
    assert!(crate::engine::live_job_ids(&late.status) == vec!["b".to_string()]);
    let after = step(&spec, &late.status, &Observations::default(), at(1000));
    assert!(
        after
            .actions
            .iter()
            .all(|a| !matches!(a, Action::Terminate { job_id, .. } if job_id == "a"))
    );
}

#[test]
fn a_building_build_wakes_at_its_deadline() {
    let spec = sample_spec();
    let plan = step(&spec, &building(&spec), &Observations::default(), at(10));
    assert_eq!(plan.wake_at, Some(at(spec.timeout_seconds)));
}

#[test]
fn a_refused_build_fails_before_any_request_and_a_running_one_is_not_stopped() {
    let spec = sample_spec();
    let refusal = Refusal {
        reason: reason::POLICY_VIOLATION,
        message: "spec.output.repository is not allowed in namespace sims".into(),
    };
    let refused = |status: &MultiArchBuildStatus| {
        plan(&Input {
            spec: &spec,
            git_sources: GitSources::Remote,
            generation: Some(1),
            refusal: Some(&refusal),
            dependencies: None,
            status,
            observed: &Observations::default(),
            now: t0(),
        })
    };
    let plan = refused(&MultiArchBuildStatus::default());
    assert!(
        plan.actions.is_empty(),
        "not even CheckExistingIndex: {:?}",
        plan.actions
    );
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&plan.status), ("False", reason::POLICY_VIOLATION));
    assert_eq!(
        plan.status.message.as_deref(),
        Some("spec.output.repository is not allowed in namespace sims")
    );
    // A policy that appears after the jobs were submitted does not stop the build.
    let running = refused(&building(&spec));
    assert_eq!(running.status.phase, Some(Phase::Building));
}

#[test]
fn invalid_spec_fails_before_any_submission() {
    let mut spec = sample_spec();
    spec.output.tag = "bad:tag".into();
    let plan = step(&spec, &MultiArchBuildStatus::default(), &Observations::default(), t0());
    assert!(plan.actions.is_empty());
    assert_eq!(ready(&plan.status), ("False", reason::INVALID_SPEC));
    assert!(plan.status.message.unwrap().contains("spec.output.tag"));
}

#[test]
fn retried_attempts_show_in_the_progress_message() {
    let spec = sample_spec();
    let status = building(&spec);
    let mut retried = snapshot("a", JobState::Runnable);
    retried.attempts = 2;
    retried.status_reason = Some("Host EC2 (instance i-0abc) terminated.".into());
    let plan = step(&spec, &status, &seen(&[(ARM, retried)]), at(100));
    assert!(
        plan.status
            .message
            .unwrap()
            .contains("linux/arm64 RUNNABLE (attempt 2)")
    );
}

#[test]
fn each_platform_shows_how_long_its_job_queued_and_ran() {
    let spec = sample_spec();
    let status = building(&spec);
    let times = |status: &MultiArchBuildStatus, platform| {
        let entry = status.platforms.iter().find(|p| p.platform == platform).unwrap();
        (entry.queued_seconds, entry.run_seconds)
    };

    // Waiting in the queue: nothing measured yet.
    let queued = JobSnapshot {
        created_at: Some(t0()),
        ..snapshot("a", JobState::Runnable)
    };
    let plan = step(&spec, &status, &seen(&[(ARM, queued.clone())]), at(30));
    assert_eq!(times(&plan.status, ARM), (None, None));

    // Running: the wait is known, the run not yet.
    let running = JobSnapshot {
        started_at: Some(at(41)),
        ..JobSnapshot {
            state: JobState::Running,
            ..queued.clone()
        }
    };
    let plan = step(&spec, &plan.status, &seen(&[(ARM, running.clone())]), at(60));
    assert_eq!(times(&plan.status, ARM), (Some(41), None));

    // Stopped: both, whole seconds (612.9 s ran 612).
    let stopped = JobSnapshot {
        stopped_at: Some(at(653) + SignedDuration::from_millis(900)),
        log_stream_name: Some("stream-a".into()),
        ..JobSnapshot {
            state: JobState::Succeeded,
            ..running.clone()
        }
    };
    let plan = step(&spec, &plan.status, &seen(&[(ARM, stopped)]), at(700));
    assert_eq!(times(&plan.status, ARM), (Some(41), Some(612)));
    assert_eq!(times(&plan.status, AMD), (None, None), "the other job was not seen");

    // A retried job: the current attempt's start, so the run covers only that attempt.
    let retried = JobSnapshot {
        attempts: 2,
        started_at: Some(at(500)),
        ..running.clone()
    };
    let plan = step(&spec, &status, &seen(&[(ARM, retried)]), at(520));
    assert_eq!(times(&plan.status, ARM), (Some(500), None));

    // Clocks that disagree never give a negative time; a job stopped before it started (terminated
    // while queued) has no run time.
    let skewed = JobSnapshot {
        created_at: Some(at(10)),
        started_at: Some(at(9)),
        stopped_at: Some(at(8)),
        state: JobState::Failed,
        ..snapshot("a", JobState::Failed)
    };
    let plan = step(&spec, &status, &seen(&[(ARM, skewed)]), at(20));
    assert_eq!(times(&plan.status, ARM), (Some(0), Some(0)));
    let never_started = JobSnapshot {
        created_at: Some(t0()),
        stopped_at: Some(at(5)),
        ..snapshot("a", JobState::Failed)
    };
    let plan = step(&spec, &status, &seen(&[(ARM, never_started)]), at(20));
    assert_eq!(times(&plan.status, ARM), (None, None));
}

#[test]
fn an_unchanged_step_keeps_the_condition_transition_time() {
    let spec = sample_spec();
    let status = building(&spec);
    let again = step(&spec, &status, &Observations::default(), at(500));
    assert_eq!(
        again.status, status,
        "nothing changed, so the status must be identical (no write)"
    );
}

// ---- properties, over a simulated Batch + registry ----

#[derive(Debug, Clone)]
enum Event {
    Advance(usize, u8),
    Fail(usize),
    Vanish(usize),
    Cancel,
    Wait(i64),
    /// The next step's status write number n (0-based) fails: nothing after it happens.
    LoseWrite(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..2usize, 0..5u8).prop_map(|(p, s)| Event::Advance(p, s)),
        1 => (0..2usize).prop_map(Event::Fail),
        1 => (0..2usize).prop_map(Event::Vanish),
        1 => Just(Event::Cancel),
        2 => (1..2000i64).prop_map(Event::Wait),
        2 => (0..4usize).prop_map(Event::LoseWrite),
    ]
}

/// One Batch job in the simulated world.
#[derive(Debug, Clone)]
struct SimJob {
    id: String,
    state: JobState,
    /// DescribeJobs still returns it.
    visible: bool,
    /// ListJobs returns it from this time on (it lags SubmitJob).
    listed_from: Timestamp,
}

#[derive(Debug, Default)]
struct World {
    jobs: BTreeMap<Platform, Vec<SimJob>>,
}

impl World {
    fn live_jobs(&self, platform: Platform) -> usize {
        self.jobs
            .get(&platform)
            .map_or(0, |jobs| jobs.iter().filter(|j| !j.state.is_terminal()).count())
    }

    /// What ListJobs finds by the platform's name at `now`.
    fn listed(&self, platform: Platform, now: Timestamp) -> Option<&SimJob> {
        self.jobs.get(&platform)?.iter().rev().find(|j| now >= j.listed_from)
    }
}

/// The digest the simulated builder of job `id` pushed.
fn pushed_digest(id: &str) -> String {
    format!("sha256:{id}")
}

/// How the simulated world answers.
struct Sim {
    existing: bool,
    assembly_ok: bool,
    /// ListJobs lags SubmitJob by this much.
    list_lag: i64,
}

/// One reconcile: observe, then plan → apply rounds like the engine, the status written before
/// each round's actions. A write that fails ends the step; the store keeps what was written.
fn run_engine(
    spec: &MultiArchBuildSpec,
    stored: &mut MultiArchBuildStatus,
    world: &mut World,
    now: Timestamp,
    sim: &Sim,
    failing_write: Option<usize>,
    dependencies: Option<&Dependencies>,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    let mut observed = Observations::default();
    for entry in &stored.platforms {
        if let Some(id) = live_job(entry) {
            let job = world
                .jobs
                .get(&entry.platform)
                .and_then(|jobs| jobs.iter().find(|j| j.id == id));
            let observation = match job {
                Some(job) if job.visible => JobObservation::Seen(JobSnapshot {
                    log_stream_name: Some(format!("stream-{}", job.id)),
                    ..snapshot(&job.id, job.state)
                }),
                _ => JobObservation::Missing,
            };
            observed.jobs.insert(entry.platform, observation);
        }
    }
    let mut status = stored.clone();
    let mut writes = 0;
    for _ in 0..8 {
        let plan = step_with(spec, &status, &observed, now, dependencies);
        assert_outcome_conditions(&plan.status);
        if plan.status != status {
            if failing_write == Some(writes) {
                plans.push(plan);
                break;
            }
            writes += 1;
            *stored = plan.status.clone();
        }
        status = plan.status.clone();
        let actions = plan.actions.clone();
        plans.push(plan);
        if actions.is_empty() {
            break;
        }
        let jobs = std::mem::take(&mut observed.jobs);
        observed = Observations {
            jobs,
            ..Default::default()
        };
        for action in actions {
            apply_sim(spec, world, now, sim, action, &mut observed);
        }
    }
    plans
}

fn apply_sim(
    spec: &MultiArchBuildSpec,
    world: &mut World,
    now: Timestamp,
    sim: &Sim,
    action: Action,
    observed: &mut Observations,
) {
    let found = |job: &SimJob| JobObservation::Submitted {
        job_id: job.id.clone(),
        job_name: job.id.clone(),
    };
    match action {
        Action::CheckExistingIndex => {
            observed.existing_index = Some(if sim.existing {
                ExistingIndex::Reusable(IndexRef {
                    digest: "sha256:old".into(),
                    platforms: vec![],
                    commit: Some(COMMIT.into()),
                })
            } else {
                ExistingIndex::Absent
            });
        }
        Action::Adopt(platform) => {
            let observation = world.listed(platform, now).map_or(JobObservation::NotListed, found);
            observed.jobs.insert(platform, observation);
        }
        Action::Submit(platform) => {
            let observation = match world.listed(platform, now) {
                Some(job) => found(job),
                None => {
                    let jobs = world.jobs.entry(platform).or_default();
                    let id = format!("{platform}-{}", jobs.len());
                    jobs.push(SimJob {
                        id: id.clone(),
                        state: JobState::Submitted,
                        visible: true,
                        listed_from: now + SignedDuration::from_secs(sim.list_lag),
                    });
                    found(jobs.last().unwrap())
                }
            };
            observed.jobs.insert(platform, observation);
        }
        Action::Terminate { platform, job_id, .. } => {
            for job in world
                .jobs
                .entry(platform)
                .or_default()
                .iter_mut()
                .filter(|j| j.id == job_id)
            {
                job.state = JobState::Failed;
            }
        }
        Action::FetchLogs { platform, .. } => {
            observed.failure_logs.insert(platform, vec!["boom".into()]);
        }
        Action::ReadResult {
            platform,
            log_stream_name,
        } => {
            let id = log_stream_name.trim_start_matches("stream-");
            let result = JobResult::Pushed {
                commit: COMMIT.into(),
                digest: pushed_digest(id),
            };
            observed.results.insert(platform, result);
        }
        Action::PushTags { digest, tags } => {
            assert!(digest == "sha256:new" || digest == "sha256:old", "{digest}");
            assert!(!tags.is_empty() && tags.iter().all(|t| spec.output.additional_tags.contains(t)));
            observed.tags = Some(TagsOutcome::Pushed(tags));
        }
        Action::Attest { digest } => {
            assert!(digest == "sha256:new" || digest == "sha256:old", "{digest}");
            observed.attestation = Some(attached(&digest));
        }
        Action::Assemble { children, commit, .. } => {
            assert_eq!(commit, COMMIT);
            assert_eq!(children.len(), spec.platforms.len());
            let index = IndexRef {
                digest: "sha256:new".into(),
                platforms: children,
                commit: Some(commit),
            };
            observed.assembly = Some(if sim.assembly_ok {
                AssemblyOutcome::Pushed(index)
            } else {
                AssemblyOutcome::Rejected {
                    reason: "PlatformMismatch".into(),
                    message: "wrong arch".into(),
                }
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_any_history(
        events in prop::collection::vec(event(), 1..40),
        existing in any::<bool>(),
        assembly_ok in any::<bool>(),
        reuse in any::<bool>(),
        more_tags in any::<bool>(),
        list_lag in 0..SUBMIT_SETTLE_SECONDS,
    ) {
        let mut spec = sample_spec();
        spec.output.reuse_existing = reuse;
        if more_tags {
            spec.output.additional_tags = vec!["latest".into(), "v1.0.0".into()];
        }
        let sim = Sim { existing, assembly_ok, list_lag };
        let platforms = [ARM, AMD];
        let mut status = MultiArchBuildStatus::default();
        let mut world = World::default();
        let mut now = t0();
        let mut terminal: Option<(Phase, String)> = None;
        let mut failing_write = None;

        for event in events {
            match event {
                Event::Advance(p, s) => {
                    if let Some(job) = world.jobs.get_mut(&platforms[p]).and_then(|j| j.last_mut()).filter(|j| !j.state.is_terminal()) {
                        job.state = [JobState::Pending, JobState::Runnable, JobState::Starting, JobState::Running, JobState::Succeeded][s as usize];
                    }
                }
                Event::Fail(p) => {
                    if let Some(job) = world.jobs.get_mut(&platforms[p]).and_then(|j| j.last_mut()) {
                        job.state = JobState::Failed;
                    }
                }
                Event::Vanish(p) => {
                    if let Some(job) = world.jobs.get_mut(&platforms[p]).and_then(|j| j.last_mut()) {
                        job.visible = false;
                    }
                }
                Event::Cancel => spec.cancel = true,
                Event::Wait(s) => now += SignedDuration::from_secs(s),
                Event::LoseWrite(n) => {
                    failing_write = Some(n);
                    continue;
                }
            }
            // Recorded jobs that really still run (a lost write may leave an older state recorded).
            let running = |id: &String| world.jobs.values().flatten().any(|j| &j.id == id && !j.state.is_terminal());
            let live_before: Vec<String> = crate::engine::live_job_ids(&status).into_iter().filter(running).collect();
            let was_terminal = status.phase.is_some_and(Phase::is_terminal);
            let before = status.clone();
            let plans = run_engine(&spec, &mut status, &mut world, now, &sim, failing_write.take(), None);

            // Never two jobs for one platform, whatever writes were lost and however ListJobs lags.
            for platform in platforms {
                prop_assert!(world.jobs.get(&platform).map_or(0, Vec::len) <= 1, "{platform} submitted twice");
                prop_assert!(world.live_jobs(platform) <= 1);
            }
            // status.image never names an index whose provenance is not attached.
            prop_assert!(status.image.is_none() || status.provenance.is_some());
            let phase = status.phase.unwrap_or(Phase::Pending);
            // Never Succeeded without an index digest; a built index lists exactly what the jobs pushed.
            if phase == Phase::Succeeded {
                prop_assert!(status.digest.is_some() && status.image.is_some());
                // Succeeded only once every tag holds the index, the main tag first.
                prop_assert_eq!(&status.tags, &spec.index_tags());
                let reused = ready(&status).1 == reason::REUSED;
                if !reused {
                    for entry in &status.platforms {
                        prop_assert_eq!(entry.state.as_deref(), Some("SUCCEEDED"));
                        let id = entry.job_id.as_deref().unwrap();
                        prop_assert_eq!(entry.digest.clone(), Some(pushed_digest(id)));
                    }
                }
            }
            // Terminal phases are absorbing, reason and all.
            if let Some((phase_then, reason_then)) = &terminal {
                prop_assert_eq!(phase, *phase_then);
                prop_assert_eq!(ready(&status).1, reason_then.as_str());
            } else if phase.is_terminal() {
                terminal = Some((phase, ready(&status).1.to_string()));
            }
            // Write-once fields and job ids never change (what the CRD's CEL rules enforce).
            for (old, new) in [(&before.digest, &status.digest), (&before.image, &status.image)] {
                prop_assert!(old.is_none() || old == new);
            }
            for old in &before.platforms {
                let new = status.platforms.iter().find(|p| p.platform == old.platform).unwrap();
                prop_assert!(old.job_id.is_none() || old.job_id == new.job_id);
            }
            // Cancel and the deadline always terminate every job that was live.
            let first = &plans[0];
            let ended_now = !was_terminal && matches!(ready(&first.status).1, reason::CANCELLED | reason::DEADLINE_EXCEEDED);
            if ended_now {
                for id in &live_before {
                    prop_assert!(first.actions.iter().any(|a| matches!(a, Action::Terminate { job_id, .. } if job_id == id)), "live job {id} not terminated");
                }
            }
            // A job recorded lost is never terminated again (nor described: it is not live).
            let lost_before: Vec<&str> = before.platforms.iter().filter(|p| p.state.as_deref() == Some("LOST")).filter_map(|p| p.job_id.as_deref()).collect();
            let terminated: Vec<&str> = plans.iter().flat_map(|p| &p.actions).filter_map(|a| match a { Action::Terminate { job_id, .. } => Some(job_id.as_str()), _ => None }).collect();
            prop_assert!(lost_before.iter().all(|id| !terminated.contains(id)), "a lost job was terminated again");
        }
    }
}

// --- Dependencies (valueFrom.multiArchBuild) ---------------------------------------------------

const BASE_IMAGE: &str = "registry.example/base@sha256:0123";

/// The sample with `BASE` taken from the build `base`.
fn dependent_spec() -> MultiArchBuildSpec {
    let mut spec = sample_spec();
    spec.build_args.get_or_insert_with(Vec::new).push(BuildArg {
        name: "BASE".into(),
        value: None,
        value_from: Some(crate::api::BuildArgSource {
            multi_arch_build: crate::api::BuildReference { name: "base".into() },
        }),
    });
    spec
}

fn base_is(dependency: Dependency) -> Dependencies {
    Dependencies {
        builds: BTreeMap::from([("base".to_string(), dependency)]),
        cycle: None,
    }
}

#[test]
fn a_build_waits_for_its_dependency_then_records_its_image_and_builds_on_it() {
    let spec = dependent_spec();
    let none = Observations::default();
    let waiting = step_with(
        &spec,
        &MultiArchBuildStatus::default(),
        &none,
        t0(),
        Some(&base_is(Dependency::Running(Some(Phase::Building)))),
    );
    assert!(waiting.actions.is_empty(), "{:?}", waiting.actions);
    assert_eq!(waiting.status.phase, Some(Phase::Waiting));
    assert_eq!(ready(&waiting.status), ("False", reason::WAITING_FOR_DEPENDENCIES));
    assert_eq!(
        waiting.status.message.as_deref(),
        Some("waiting for MultiArchBuild base (Building) to succeed")
    );
    assert_eq!(
        waiting.wake_at, None,
        "an existing dependency is waited for by its watch, not a timer"
    );

    let done = base_is(Dependency::Succeeded {
        image: BASE_IMAGE.into(),
    });
    let going = step_with(&spec, &waiting.status, &none, at(30), Some(&done));
    let inputs = going.status.inputs.clone().unwrap();
    assert_eq!(
        inputs.build_args,
        [crate::api::ResolvedBuildArg {
            name: "BASE".into(),
            value: BASE_IMAGE.into()
        }]
    );
    assert_eq!(going.actions, [Action::CheckExistingIndex]);
    let resolved = resolved_spec(&spec, &going.status).unwrap();
    let base = resolved
        .build_args
        .unwrap()
        .into_iter()
        .find(|a| a.name == "BASE")
        .unwrap();
    assert_eq!((base.value.as_deref(), base.value_from), (Some(BASE_IMAGE), None));
    assert!(
        resolved_spec(&spec, &waiting.status).is_err(),
        "nothing to build from before the values are recorded"
    );

    // Recorded values never change, whatever the dependency does later.
    let later = step_with(
        &spec,
        &going.status,
        &none,
        at(60),
        Some(&base_is(Dependency::Ended {
            phase: Phase::Failed,
            message: "x".into(),
        })),
    );
    assert_eq!(later.status.inputs, going.status.inputs);
    assert_ne!(later.status.phase, Some(Phase::Failed));
}

#[test]
fn a_failed_or_cancelled_dependency_fails_the_build_naming_it() {
    let spec = dependent_spec();
    for phase in [Phase::Failed, Phase::Cancelled] {
        let deps = base_is(Dependency::Ended {
            phase,
            message: "linux/arm64 failed\nlast lines".into(),
        });
        let p = step_with(
            &spec,
            &MultiArchBuildStatus::default(),
            &Observations::default(),
            t0(),
            Some(&deps),
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.status.phase, Some(Phase::Failed));
        assert_eq!(ready(&p.status), ("False", reason::DEPENDENCY_FAILED));
        let message = p.status.message.unwrap();
        assert!(
            message.starts_with(&format!(
                "dependency MultiArchBuild base ended {phase:?}: linux/arm64 failed last lines"
            )),
            "{message}"
        );
    }
}

#[test]
fn a_cycle_fails_the_build_naming_the_cycle() {
    let spec = dependent_spec();
    let deps = Dependencies {
        cycle: Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]),
        ..base_is(Dependency::Running(None))
    };
    let p = step_with(
        &spec,
        &MultiArchBuildStatus::default(),
        &Observations::default(),
        t0(),
        Some(&deps),
    );
    assert!(p.actions.is_empty());
    assert_eq!(ready(&p.status), ("False", reason::DEPENDENCY_CYCLE));
    assert_eq!(
        p.status.message.as_deref(),
        Some("dependency cycle: a -> b -> c -> a; no job submitted")
    );
}

#[test]
fn a_missing_dependency_is_waited_for_until_the_timeout() {
    let spec = dependent_spec();
    let none = Observations::default();
    let missing = base_is(Dependency::NotFound);
    let first = step_with(&spec, &MultiArchBuildStatus::default(), &none, t0(), Some(&missing));
    assert_eq!(
        first.status.message.as_deref(),
        Some("waiting for MultiArchBuild base (not found) to succeed")
    );
    assert_eq!(first.wake_at, Some(at(spec.timeout_seconds)));
    let still = step_with(
        &spec,
        &first.status,
        &none,
        at(spec.timeout_seconds - 1),
        Some(&missing),
    );
    assert_eq!(still.status.phase, Some(Phase::Waiting));
    let over = step_with(&spec, &still.status, &none, at(spec.timeout_seconds), Some(&missing));
    assert_eq!(ready(&over.status), ("False", reason::DEPENDENCY_NOT_FOUND));
    assert!(
        over.status
            .message
            .unwrap()
            .starts_with("MultiArchBuild base not found in the namespace within spec.timeoutSeconds=3600s")
    );
    // Cancelled while waiting: cancelled, nothing to terminate.
    let mut cancelled = spec.clone();
    cancelled.cancel = true;
    let p = step_with(&cancelled, &first.status, &none, at(5), Some(&missing));
    assert_eq!(p.status.phase, Some(Phase::Cancelled));
}

#[test]
fn cycles_are_found_through_the_start_only() {
    let graph = |edges: &'static [(&'static str, &'static [&'static str])]| {
        move |name: &str| {
            edges
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| d.iter().map(|s| s.to_string()).collect())
        }
    };
    assert_eq!(
        find_cycle("a", graph(&[("a", &["a"])])),
        Some(vec!["a".into(), "a".into()])
    );
    assert_eq!(
        find_cycle("a", graph(&[("a", &["b"]), ("b", &["a"])])),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert_eq!(
        find_cycle(
            "a",
            graph(&[("a", &["x", "b"]), ("b", &["c"]), ("c", &["a"]), ("x", &[])])
        ),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    // b and c form a cycle that a only leads into: a waits (and fails when they do).
    assert_eq!(
        find_cycle("a", graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])])),
        None
    );
    assert_eq!(find_cycle("a", graph(&[("a", &["missing"])])), None);
}

#[derive(Clone, Debug)]
enum DepEvent {
    /// The dependency is created (Pending), or moves on to Building.
    Progress,
    Succeed,
    Fail,
    CancelIt,
    Cycle,
    /// One of the build's own jobs moves on (as in the history test).
    Job(Event),
}

fn dep_event() -> impl Strategy<Value = DepEvent> {
    prop_oneof![
        3 => Just(DepEvent::Progress),
        2 => Just(DepEvent::Succeed),
        1 => Just(DepEvent::Fail),
        1 => Just(DepEvent::CancelIt),
        1 => Just(DepEvent::Cycle),
        6 => event().prop_map(DepEvent::Job),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Whatever the dependency does and whatever else happens: no job is submitted (and no index
    /// looked for) while the dependency has not Succeeded; the recorded value is its image and
    /// never changes; a dependency that failed first fails the build.
    #[test]
    fn a_build_never_submits_while_a_dependency_has_not_succeeded(
        events in prop::collection::vec(dep_event(), 1..40),
        exists in any::<bool>(),
    ) {
        let mut spec = dependent_spec();
        spec.output.reuse_existing = true;
        let sim = Sim { existing: false, assembly_ok: true, list_lag: 0 };
        let platforms = [ARM, AMD];
        let mut dependency = if exists { Dependency::Running(None) } else { Dependency::NotFound };
        let mut cycle = false;
        let mut status = MultiArchBuildStatus::default();
        let mut world = World::default();
        let mut now = t0();
        let mut failing_write = None;
        for event in events {
            let settled = matches!(dependency, Dependency::Succeeded { .. } | Dependency::Ended { .. });
            match event {
                DepEvent::Progress if !settled => {
                    dependency = match dependency {
                        Dependency::NotFound => Dependency::Running(Some(Phase::Pending)),
                        _ => Dependency::Running(Some(Phase::Building)),
                    };
                }
                DepEvent::Succeed if !settled && dependency != Dependency::NotFound => {
                    dependency = Dependency::Succeeded { image: BASE_IMAGE.into() };
                }
                DepEvent::Fail if !settled && dependency != Dependency::NotFound => {
                    dependency = Dependency::Ended { phase: Phase::Failed, message: "boom".into() };
                }
                DepEvent::CancelIt if !settled && dependency != Dependency::NotFound => {
                    dependency = Dependency::Ended { phase: Phase::Cancelled, message: "cancelled".into() };
                }
                DepEvent::Cycle if !settled => cycle = true,
                DepEvent::Job(Event::Advance(p, s)) => {
                    if let Some(job) = world.jobs.get_mut(&platforms[p]).and_then(|j| j.last_mut()).filter(|j| !j.state.is_terminal()) {
                        job.state = [JobState::Pending, JobState::Runnable, JobState::Starting, JobState::Running, JobState::Succeeded][s as usize];
                    }
                }
                DepEvent::Job(Event::Fail(p)) => {
                    if let Some(job) = world.jobs.get_mut(&platforms[p]).and_then(|j| j.last_mut()) {
                        job.state = JobState::Failed;
                    }
                }
                DepEvent::Job(Event::Cancel) => spec.cancel = true,
                DepEvent::Job(Event::Wait(s)) => now += SignedDuration::from_secs(s),
                DepEvent::Job(Event::LoseWrite(n)) => {
                    failing_write = Some(n);
                    continue;
                }
                _ => {}
            }
            let observed = Dependencies {
                builds: BTreeMap::from([("base".to_string(), dependency.clone())]),
                cycle: cycle.then(|| vec!["b".into(), "base".into(), "b".into()]),
            };
            let before = status.clone();
            let lost_write = failing_write.take();
            let plans = run_engine(&spec, &mut status, &mut world, now, &sim, lost_write, Some(&observed));
            let succeeded = matches!(dependency, Dependency::Succeeded { .. });
            if before.inputs.is_none() && !succeeded {
                for plan in &plans {
                    prop_assert!(
                        !plan.actions.iter().any(|a| matches!(a, Action::Submit(_) | Action::Adopt(_) | Action::CheckExistingIndex)),
                        "acted before the dependency succeeded: {:?} with {:?}", plan.actions, dependency
                    );
                }
                prop_assert!(world.jobs.is_empty(), "a job exists while the dependency is {:?}", dependency);
                prop_assert!(status.inputs.is_none());
            }
            // No job without recorded values; the recorded value is the dependency's image, for good.
            if !world.jobs.is_empty() {
                prop_assert!(status.inputs.is_some());
            }
            if let Some(old) = &before.inputs {
                prop_assert_eq!(Some(old), status.inputs.as_ref());
            }
            if let Some(inputs) = &status.inputs {
                prop_assert_eq!(inputs.build_args.len(), 1);
                prop_assert_eq!(inputs.build_args[0].value.as_str(), BASE_IMAGE);
            }
            // Ended first, before any value was recorded: the build fails, naming it (or the cycle).
            if before.inputs.is_none() && !spec.cancel && !before.phase.is_some_and(Phase::is_terminal) && lost_write.is_none() {
                let why = status.conditions.iter().find(|c| c.type_ == READY).map(|c| c.reason.clone()).unwrap_or_default();
                if cycle {
                    prop_assert_eq!(why.as_str(), reason::DEPENDENCY_CYCLE);
                } else if matches!(dependency, Dependency::Ended { .. }) {
                    prop_assert_eq!(why.as_str(), reason::DEPENDENCY_FAILED);
                }
            }
        }
    }
}
