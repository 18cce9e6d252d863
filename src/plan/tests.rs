use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::api::{GitSources, MultiArchBuild, MultiArchBuildStatus, Phase, Platform};

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

const ARM: Platform = Platform::LinuxArm64;
const AMD: Platform = Platform::LinuxAmd64;

/// A build whose two jobs were submitted at t0.
fn building(spec: &MultiArchBuildSpec) -> MultiArchBuildStatus {
    let first = step(
        spec,
        &MultiArchBuildStatus::default(),
        &Observations {
            existing_index: Some(None),
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
            existing_index: Some(None),
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
    };
    let plan = step(
        &spec,
        &MultiArchBuildStatus::default(),
        &Observations {
            existing_index: Some(Some(index)),
            ..Default::default()
        },
        t0(),
    );
    assert!(plan.actions.is_empty());
    assert_eq!(plan.status.phase, Some(Phase::Succeeded));
    assert_eq!(ready(&plan.status), ("True", reason::REUSED));
    assert_eq!(plan.status.short_digest.as_deref(), Some("sha256:abababababab"));
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
fn all_succeeded_assembles_then_records_the_digest() {
    let spec = sample_spec();
    let status = building(&spec);
    let done = seen(&[
        (ARM, snapshot("a", JobState::Succeeded)),
        (AMD, snapshot("b", JobState::Succeeded)),
    ]);
    let assembling = step(&spec, &status, &done, at(60));
    assert_eq!(assembling.actions, vec![Action::Assemble]);
    assert_eq!(assembling.status.phase, Some(Phase::Assembling));
    assert_eq!(assembling.status.platforms_pushed.as_deref(), Some("2/2"));

    let index = IndexRef {
        digest: "sha256:feed".into(),
        platforms: vec![(ARM, "sha256:a1".into()), (AMD, "sha256:b2".into())],
    };
    let observed = Observations {
        assembly: Some(AssemblyOutcome::Pushed(index)),
        ..Default::default()
    };
    let done = step(&spec, &assembling.status, &observed, at(61));
    assert_eq!(done.status.phase, Some(Phase::Succeeded));
    assert_eq!(ready(&done.status), ("True", reason::SUCCEEDED));
    assert_eq!(done.status.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(done.status.platforms[0].digest.as_deref(), Some("sha256:a1"));
    assert_eq!(done.status.completion_time.as_ref().map(|t| t.0), Some(at(61)));
}

#[test]
fn rejected_assembly_fails_with_the_registry_reason() {
    let spec = sample_spec();
    let status = building(&spec);
    let done = seen(&[
        (ARM, snapshot("a", JobState::Succeeded)),
        (AMD, snapshot("b", JobState::Succeeded)),
    ]);
    let assembling = step(&spec, &status, &done, at(60));
    let observed = Observations {
        assembly: Some(AssemblyOutcome::Rejected {
            reason: "PlatformMismatch".into(),
            message: "x:3f2a9c1-arm64 is linux/amd64, expected linux/arm64".into(),
        }),
        ..Default::default()
    };
    let failed = step(&spec, &assembling.status, &observed, at(61));
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&failed.status), ("False", "PlatformMismatch"));
    assert!(
        failed
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("expected linux/arm64")
    );
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
    let status = building(&spec);
    let missing = Observations {
        jobs: [(ARM, JobObservation::Missing)].into_iter().collect(),
        ..Default::default()
    };
    let early = step(&spec, &status, &missing, at(MISSING_JOB_GRACE_SECONDS - 1));
    assert_eq!(early.status.phase, Some(Phase::Building));
    assert!(early.actions.is_empty());
    let late = step(&spec, &status, &missing, at(MISSING_JOB_GRACE_SECONDS));
    assert_eq!(late.status.phase, Some(Phase::Failed));
    assert_eq!(ready(&late.status), ("False", reason::JOB_LOST));
    assert!(late.actions.iter().all(|a| matches!(a, Action::Terminate { .. })));
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
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..2usize, 0..5u8).prop_map(|(p, s)| Event::Advance(p, s)),
        1 => (0..2usize).prop_map(Event::Fail),
        1 => (0..2usize).prop_map(Event::Vanish),
        1 => Just(Event::Cancel),
        2 => (1..2000i64).prop_map(Event::Wait),
    ]
}

/// One Batch job in the simulated world.
#[derive(Debug, Clone)]
struct SimJob {
    id: String,
    state: JobState,
    visible: bool,
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
}

fn run_engine(
    spec: &MultiArchBuildSpec,
    status: &mut MultiArchBuildStatus,
    world: &mut World,
    now: Timestamp,
    existing: bool,
    assembly_ok: bool,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    let mut observed = Observations::default();
    for entry in &status.platforms {
        if let Some(id) = &entry.job_id {
            let job = world
                .jobs
                .get(&entry.platform)
                .and_then(|jobs| jobs.iter().find(|j| &j.id == id));
            let observation = match job {
                Some(job) if job.visible => JobObservation::Seen(snapshot(&job.id, job.state)),
                _ => JobObservation::Missing,
            };
            observed.jobs.insert(entry.platform, observation);
        }
    }
    for _ in 0..8 {
        let plan = step(spec, status, &observed, now);
        *status = plan.status.clone();
        let actions = plan.actions.clone();
        plans.push(plan);
        if actions.is_empty() {
            break;
        }
        observed = Observations::default();
        for action in actions {
            match action {
                Action::CheckExistingIndex => {
                    let index = IndexRef {
                        digest: "sha256:old".into(),
                        platforms: vec![],
                    };
                    observed.existing_index = Some(existing.then_some(index));
                }
                Action::Submit(platform) => {
                    let jobs = world.jobs.entry(platform).or_default();
                    let id = format!("{platform}-{}", jobs.len());
                    jobs.push(SimJob {
                        id: id.clone(),
                        state: JobState::Submitted,
                        visible: true,
                    });
                    observed.jobs.insert(
                        platform,
                        JobObservation::Submitted {
                            job_id: id.clone(),
                            job_name: id,
                        },
                    );
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
                Action::Assemble => {
                    let index = IndexRef {
                        digest: "sha256:new".into(),
                        platforms: vec![],
                    };
                    observed.assembly = Some(if assembly_ok {
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
    }
    plans
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_any_history(events in prop::collection::vec(event(), 1..40), existing in any::<bool>(), assembly_ok in any::<bool>(), reuse in any::<bool>()) {
        let mut spec = sample_spec();
        spec.output.reuse_existing = reuse;
        let platforms = [ARM, AMD];
        let mut status = MultiArchBuildStatus::default();
        let mut world = World::default();
        let mut now = t0();
        let mut terminal: Option<(Phase, String)> = None;

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
            }
            let live_before: Vec<String> = status.platforms.iter().filter(|p| p.job_id.is_some() && !p.state.as_deref().and_then(JobState::parse).is_some_and(JobState::is_terminal)).filter_map(|p| p.job_id.clone()).collect();
            let was_terminal = status.phase.is_some_and(Phase::is_terminal);
            let plans = run_engine(&spec, &mut status, &mut world, now, existing, assembly_ok);

            // Never two jobs for one platform: a build submits each platform at most once.
            for platform in platforms {
                prop_assert!(world.jobs.get(&platform).map_or(0, Vec::len) <= 1, "{platform} submitted twice");
                prop_assert!(world.live_jobs(platform) <= 1);
            }
            let phase = status.phase.unwrap_or(Phase::Pending);
            // Never Succeeded without every platform SUCCEEDED and an index digest (or a reused index).
            if phase == Phase::Succeeded {
                prop_assert!(status.digest.is_some() && status.image.is_some());
                let reused = ready(&status).1 == reason::REUSED;
                prop_assert!(reused || status.platforms.iter().all(|p| p.state.as_deref() == Some("SUCCEEDED")));
            }
            // Terminal phases are absorbing, reason and all.
            if let Some((phase_then, reason_then)) = &terminal {
                prop_assert_eq!(phase, *phase_then);
                prop_assert_eq!(ready(&status).1, reason_then.as_str());
            } else if phase.is_terminal() {
                terminal = Some((phase, ready(&status).1.to_string()));
            }
            // Cancel and the deadline always terminate every job that was live.
            let first = &plans[0];
            let ended_now = !was_terminal && matches!(ready(&first.status).1, reason::CANCELLED | reason::DEADLINE_EXCEEDED);
            if ended_now {
                for id in &live_before {
                    prop_assert!(first.actions.iter().any(|a| matches!(a, Action::Terminate { job_id, .. } if job_id == id)), "live job {id} not terminated");
                }
            }
        }
    }
}
