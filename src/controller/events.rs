//! Which Kubernetes events a status change deserves. Pure: the reconcile publishes them.

use kube::runtime::events::EventType;

use crate::{
    api::{MultiArchBuildSpec, MultiArchBuildStatus, Phase, PlatformStatus},
    plan::{JobState, READY, reason, state_of},
};

/// Event reasons the controller publishes besides the error labels and the `Ready` reasons.
pub mod reasons {
    /// A platform's Batch job was submitted (or adopted).
    pub const SUBMITTED: &str = "Submitted";
    /// A platform's job succeeded: its image was pushed.
    pub const PLATFORM_SUCCEEDED: &str = "PlatformSucceeded";
    /// A platform's job failed.
    pub const PLATFORM_FAILED: &str = "PlatformFailed";
    /// The index was pushed and verified.
    pub const INDEX_PUSHED: &str = "IndexPushed";
    /// A suspended Job waiting on the build was released.
    pub const RELEASED: &str = "Released";
    /// The build was deleted and its live jobs were terminated.
    pub const JOBS_TERMINATED: &str = "JobsTerminated";
    /// The build was deleted but its jobs could not be terminated within the grace period.
    pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";
    /// The build finished longer than its `ttlSecondsAfterFinished` ago and was deleted.
    pub const EXPIRED: &str = "Expired";
}

/// The most a note may hold (the events API refuses more than 1 kB).
const MAX_NOTE_BYTES: usize = 1024;

/// One event to publish on the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildEvent {
    pub type_: EventType,
    pub reason: String,
    /// What the controller was doing (`action` of events.k8s.io/v1).
    pub action: &'static str,
    pub note: String,
}

impl BuildEvent {
    pub fn new(type_: EventType, reason: &str, action: &'static str, note: impl Into<String>) -> Self {
        BuildEvent {
            type_,
            reason: reason.into(),
            action,
            note: crate::util::cut(&note.into(), MAX_NOTE_BYTES, "..."),
        }
    }
}

/// The events for going from `before` to `after`: one per platform that was submitted, succeeded
/// or failed, and one when the build reached its end. Nothing when nothing changed.
pub fn transitions(
    spec: &MultiArchBuildSpec,
    before: &MultiArchBuildStatus,
    after: &MultiArchBuildStatus,
) -> Vec<BuildEvent> {
    let mut events = Vec::new();
    for entry in &after.platforms {
        let old = before.platforms.iter().find(|p| p.platform == entry.platform);
        let was = |f: fn(&PlatformStatus) -> bool| old.is_some_and(f);
        if entry.job_id.is_some() && !was(|p| p.job_id.is_some()) {
            let queue = spec
                .platforms
                .iter()
                .find(|t| t.platform == entry.platform)
                .map(|t| t.job_queue.as_str())
                .unwrap_or_default();
            events.push(BuildEvent::new(
                EventType::Normal,
                reasons::SUBMITTED,
                "SubmitJob",
                format!(
                    "{}: Batch job {} ({}) on queue {queue}",
                    entry.platform,
                    entry.job_name.as_deref().unwrap_or_default(),
                    entry.job_id.as_deref().unwrap_or_default()
                ),
            ));
        }
        let state = state_of(entry);
        if state == Some(JobState::Succeeded) && !was(|p| state_of(p) == Some(JobState::Succeeded)) {
            events.push(BuildEvent::new(
                EventType::Normal,
                reasons::PLATFORM_SUCCEEDED,
                "DescribeJobs",
                format!(
                    "{} pushed {}",
                    entry.platform,
                    entry.image.as_deref().unwrap_or("its image")
                ),
            ));
        }
        if state == Some(JobState::Failed) && !was(|p| state_of(p) == Some(JobState::Failed)) {
            let mut note = format!("{} failed", entry.platform);
            if let Some(why) = entry.status_reason.as_deref().filter(|r| !r.is_empty()) {
                note.push_str(&format!(": {why}"));
            }
            if let Some(code) = entry.exit_code {
                note.push_str(&format!("; exit code {code}"));
            }
            if let Some(id) = &entry.job_id {
                note.push_str(&format!("; job {id}"));
            }
            events.push(BuildEvent::new(
                EventType::Warning,
                reasons::PLATFORM_FAILED,
                "DescribeJobs",
                note,
            ));
        }
    }
    // The index is pushed but cannot be signed or attested: worth a Warning once, when it starts.
    if let Some(why) = ready_reason(after).filter(|w| [reason::SIGNING_FAILED, reason::ATTESTATION_FAILED].contains(w))
        && ready_reason(before) != Some(why)
    {
        let message = after.message.clone().unwrap_or_default();
        events.push(BuildEvent::new(EventType::Warning, why, "Attest", message));
    }
    if after.phase != before.phase
        && let Some(phase) = after.phase.filter(|p| p.is_terminal())
    {
        let why = ready_reason(after).unwrap_or(match phase {
            Phase::Succeeded => reason::SUCCEEDED,
            Phase::Cancelled => reason::CANCELLED,
            _ => reason::BUILD_FAILED,
        });
        let message = after.message.clone().unwrap_or_default();
        events.push(match phase {
            Phase::Succeeded if why == reason::SUCCEEDED => {
                BuildEvent::new(EventType::Normal, reasons::INDEX_PUSHED, "PushIndex", message)
            }
            Phase::Succeeded | Phase::Cancelled => BuildEvent::new(EventType::Normal, why, "Reconcile", message),
            _ => BuildEvent::new(EventType::Warning, why, "Reconcile", message),
        });
    }
    events
}

/// The `Ready` condition's reason.
pub fn ready_reason(status: &MultiArchBuildStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{MultiArchBuild, Platform};

    fn spec() -> MultiArchBuildSpec {
        let build: MultiArchBuild = serde_yaml::from_str(include_str!("../../config/samples/vecoli.yaml")).unwrap();
        build.spec
    }

    fn entry(platform: Platform, job: Option<&str>, state: Option<&str>) -> PlatformStatus {
        let mut p = PlatformStatus::from(platform);
        p.job_id = job.map(Into::into);
        p.job_name = job.map(|j| format!("name-{j}"));
        p.state = state.map(Into::into);
        p
    }

    fn ended(phase: Phase, why: &str, message: &str) -> MultiArchBuildStatus {
        MultiArchBuildStatus {
            phase: Some(phase),
            message: Some(message.into()),
            conditions: vec![Condition {
                type_: READY.into(),
                status: "False".into(),
                reason: why.into(),
                message: message.into(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    fn reasons_of(events: &[BuildEvent]) -> Vec<(&str, EventType)> {
        events.iter().map(|e| (e.reason.as_str(), e.type_)).collect()
    }

    #[test]
    fn submission_success_and_failure_of_each_platform_are_reported_once() {
        let spec = spec();
        let before = MultiArchBuildStatus {
            platforms: vec![
                entry(Platform::LinuxArm64, None, None),
                entry(Platform::LinuxAmd64, None, None),
            ],
            ..Default::default()
        };
        let submitted = MultiArchBuildStatus {
            platforms: vec![
                entry(Platform::LinuxArm64, Some("j1"), Some("SUBMITTED")),
                entry(Platform::LinuxAmd64, Some("j2"), Some("SUBMITTED")),
            ],
            ..Default::default()
        };
        let events = transitions(&spec, &before, &submitted);
        assert_eq!(
            reasons_of(&events),
            [("Submitted", EventType::Normal), ("Submitted", EventType::Normal)]
        );
        assert_eq!(
            events[0].note,
            "linux/arm64: Batch job name-j1 (j1) on queue build-arm64"
        );
        assert!(transitions(&spec, &submitted, &submitted).is_empty());

        let mut done = submitted.clone();
        done.platforms[0].state = Some("SUCCEEDED".into());
        done.platforms[1].state = Some("FAILED".into());
        done.platforms[1].status_reason = Some("Essential container in task exited".into());
        done.platforms[1].exit_code = Some(2);
        let events = transitions(&spec, &submitted, &done);
        assert_eq!(
            reasons_of(&events),
            [
                ("PlatformSucceeded", EventType::Normal),
                ("PlatformFailed", EventType::Warning)
            ]
        );
        assert_eq!(
            events[1].note,
            "linux/amd64 failed: Essential container in task exited; exit code 2; job j2"
        );
        assert!(transitions(&spec, &done, &done).is_empty());
    }

    #[test]
    fn a_failing_signature_warns_once_when_it_starts() {
        let spec = spec();
        let attesting = ended(Phase::Assembling, reason::ATTESTING, "attaching");
        let failing = ended(Phase::Assembling, reason::SIGNING_FAILED, "KMS could not sign");
        let events = transitions(&spec, &attesting, &failing);
        assert_eq!(reasons_of(&events), [("SigningFailed", EventType::Warning)]);
        assert_eq!(events[0].note, "KMS could not sign");
        assert!(transitions(&spec, &failing, &failing).is_empty(), "once");
        let read_back = ended(Phase::Assembling, reason::ATTESTATION_FAILED, "does not verify");
        assert_eq!(
            reasons_of(&transitions(&spec, &failing, &read_back)),
            [("AttestationFailed", EventType::Warning)]
        );
    }

    #[test]
    fn the_end_of_a_build_is_reported_with_the_ready_reason() {
        let spec = spec();
        let building = MultiArchBuildStatus {
            phase: Some(Phase::Building),
            ..Default::default()
        };
        let cases = [
            (Phase::Succeeded, "Succeeded", ("IndexPushed", EventType::Normal)),
            (Phase::Succeeded, "Reused", ("Reused", EventType::Normal)),
            (Phase::Failed, "BuildFailed", ("BuildFailed", EventType::Warning)),
            (
                Phase::Failed,
                "PlatformMismatch",
                ("PlatformMismatch", EventType::Warning),
            ),
            (Phase::Failed, "InvalidSpec", ("InvalidSpec", EventType::Warning)),
            (Phase::Cancelled, "Cancelled", ("Cancelled", EventType::Normal)),
        ];
        for (phase, why, expected) in cases {
            let after = ended(phase, why, "the message");
            let events = transitions(&spec, &building, &after);
            assert_eq!(reasons_of(&events), [expected], "{phase:?} {why}");
            assert_eq!(events[0].note, "the message");
            assert!(transitions(&spec, &after, &after).is_empty());
        }
    }

    #[test]
    fn notes_are_cut_to_one_kilobyte_on_a_character_boundary() {
        let event = BuildEvent::new(EventType::Warning, "BuildFailed", "Reconcile", "é".repeat(1000));
        assert!(event.note.len() <= 1024 && event.note.ends_with("..."));
    }
}
