//! One reconcile step: observe → plan → apply, shared by the controller and the one-shot `build`.
//!
//! The engine owns no state between steps: everything it needs is in the status (job ids, states)
//! or observed afresh. It persists each new status through the caller's `persist` before it runs
//! actions that can fail, so a job id is recorded as soon as SubmitJob returned it.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use crate::{
    api::{GitSources, MultiArchBuildSpec, MultiArchBuildStatus, Platform},
    attest::{self, AttestError, statement},
    batch::{BatchError, BatchExecutor, BuildRef, MAX_LOG_TAIL_LINES, SubmittedJob, submit_request},
    plan::{
        self, Action, AssemblyOutcome, AttestationOutcome, ExistingIndex, IndexRef, Input, JobObservation, JobResult,
        Observations, TagsOutcome,
    },
    provenance::{
        CREATED_ANNOTATION, Expected, REVISION_LABEL, SOURCE_LABEL, inputs_hash, is_commit_id, pinned_commit,
    },
    registry::{Existing, IndexRequest, PushedIndex, RegistryClient, RegistryError, ReuseExpectation},
    signing::Signer,
};

/// Plan → apply rounds in one step; a build needs at most four (check, submit, fetch logs,
/// terminate), so this bound only stops a planner bug from spinning.
const MAX_ROUNDS: usize = 8;

/// Why a step could not finish. Transient errors are retried by the caller; none of them fails
/// the build (permanent registry answers do, through the planner).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot write the status: {0}")]
    Persist(String),
    /// The status changed since it was read (another writer, or our own view is stale): re-read
    /// and re-plan, never overwrite.
    #[error("the status changed since it was read; reading it again: {0}")]
    StatusConflict(String),
}

impl EngineError {
    /// A short CamelCase label: the failures metric's label and the Warning event's reason.
    pub fn label(&self) -> &'static str {
        match self {
            EngineError::Batch(e) => e.label(),
            EngineError::Registry(e) => e.label(),
            EngineError::Persist(_) => "StatusWriteFailed",
            EngineError::StatusConflict(_) => "StatusConflict",
        }
    }
}

/// The build being stepped.
pub struct Build<'a> {
    pub reference: &'a BuildRef,
    pub spec: &'a MultiArchBuildSpec,
    pub git_sources: GitSources,
    pub generation: Option<i64>,
    /// Why this build may not run here (a registry not allowed, a namespace policy).
    pub refusal: Option<plan::Refusal>,
    /// What the builds named in `valueFrom` looked like (`None`: not looked at).
    pub dependencies: Option<plan::Dependencies>,
}

/// What a step left: the status stored, and when the planner wants to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Stepped {
    pub status: MultiArchBuildStatus,
    pub wake_at: Option<Timestamp>,
}

/// Talks to Batch and the registry on the planner's behalf.
#[derive(Clone)]
pub struct Engine {
    pub batch: BatchExecutor,
    pub registry: RegistryClient,
    pub default_job_definition: String,
    /// Signs each index and its provenance (`--signing-key`); without one the provenance is
    /// attached unsigned.
    pub signer: Option<Arc<Signer>>,
}

impl Engine {
    /// Runs plan → apply until the planner wants nothing more right now, persisting every new
    /// status. `jobs` holds what the poller last saw of this build's jobs.
    pub async fn step<P, F>(
        &self,
        build: &Build<'_>,
        mut status: MultiArchBuildStatus,
        jobs: BTreeMap<Platform, JobObservation>,
        now: impl Fn() -> Timestamp,
        mut persist: P,
    ) -> Result<Stepped, EngineError>
    where
        P: FnMut(MultiArchBuildStatus) -> F,
        F: Future<Output = Result<(), EngineError>>,
    {
        let mut observed = Observations {
            jobs,
            ..Default::default()
        };
        let decide = |status: &MultiArchBuildStatus, observed: &Observations| {
            plan::plan(&Input {
                spec: build.spec,
                git_sources: build.git_sources,
                generation: build.generation,
                refusal: build.refusal.as_ref(),
                dependencies: build.dependencies.as_ref(),
                status,
                observed,
                now: now(),
            })
        };
        let mut wake_at = None;
        for _ in 0..MAX_ROUNDS {
            let plan = decide(&status, &observed);
            if plan.status != status {
                persist(plan.status.clone()).await?;
                status = plan.status;
            }
            wake_at = plan.wake_at;
            if plan.actions.is_empty() {
                break;
            }
            // Observations of this round's actions feed the next round; job states carry over.
            let jobs = std::mem::take(&mut observed.jobs);
            observed = Observations {
                jobs,
                ..Default::default()
            };
            if let Err(error) = self.apply(build, &status, plan.actions, &mut observed).await {
                // Record what did happen (a submitted job id above all) before reporting.
                let plan = decide(&status, &observed);
                if plan.status != status {
                    persist(plan.status).await?;
                }
                return Err(error);
            }
        }
        Ok(Stepped { status, wake_at })
    }

    /// Applies every action, recording what each one observed; stops at the first error.
    async fn apply(
        &self,
        build: &Build<'_>,
        status: &MultiArchBuildStatus,
        actions: Vec<Action>,
        observed: &mut Observations,
    ) -> Result<(), EngineError> {
        // What the jobs build: every valueFrom as recorded in status.inputs. The planner looks for,
        // submits and assembles only once they are all recorded.
        let resolved = match plan::resolved_spec(build.spec, status) {
            Ok(spec) => Some(spec),
            Err(_)
                if actions
                    .iter()
                    .all(|a| matches!(a, Action::Terminate { .. } | Action::FetchLogs { .. })) =>
            {
                None
            }
            Err(name) => return Err(BatchError::UnresolvedBuildArg { name }.into()),
        };
        let spec = resolved.as_ref().unwrap_or(build.spec);
        for action in actions {
            match action {
                Action::CheckExistingIndex => {
                    observed.existing_index = Some(self.check_existing(spec).await?);
                }
                Action::Submit(platform) => {
                    let request = submit_request(build.reference, spec, platform, &self.default_job_definition)?;
                    match self.batch.find_or_submit(&request).await {
                        Ok(job) => {
                            info!(%platform, job_id = %job.job_id, adopted = job.adopted, "job submitted");
                            observed.jobs.insert(platform, submitted(job));
                        }
                        Err(e) => {
                            if e.is_throttling() || matches!(e, BatchError::Rejected { .. }) {
                                observed.jobs.insert(platform, JobObservation::NotSubmitted);
                            }
                            return Err(e.into());
                        }
                    }
                }
                Action::Adopt(platform) => {
                    let request = submit_request(build.reference, spec, platform, &self.default_job_definition)?;
                    let found = self.batch.find_job(&request.job_queue, &request.job_name).await?;
                    let observation = match found {
                        Some(job) => {
                            info!(%platform, job_id = %job.job_id, "found the job of an unrecorded submit");
                            submitted(job)
                        }
                        None => JobObservation::NotListed,
                    };
                    observed.jobs.insert(platform, observation);
                }
                Action::ReadResult {
                    platform,
                    log_stream_name,
                } => {
                    let lines = self.batch.log_tail(&log_stream_name, RESULT_LINES).await?;
                    observed.results.insert(platform, read_result(&lines));
                }
                Action::Terminate {
                    platform,
                    job_id,
                    reason,
                } => {
                    self.batch.terminate(&job_id, &reason).await?;
                    info!(%platform, %job_id, %reason, "job terminated");
                }
                Action::FetchLogs {
                    platform,
                    log_stream_name,
                } => {
                    let lines = match self.batch.log_tail(&log_stream_name, MAX_LOG_TAIL_LINES).await {
                        Ok(lines) => lines,
                        Err(e) => {
                            warn!(%platform, error = %e, "cannot read the failed job's log");
                            vec![format!("(the log could not be read: {e})")]
                        }
                    };
                    observed.failure_logs.insert(platform, lines);
                }
                Action::Assemble {
                    children,
                    commit,
                    created,
                } => {
                    let expected = Expected {
                        build_uid: Some(build.reference.uid.clone()),
                        commit: commit.clone(),
                        inputs: inputs_hash(spec),
                    };
                    let annotations = [
                        (REVISION_LABEL, commit),
                        (SOURCE_LABEL, spec.source.git.url.clone()),
                        (CREATED_ANNOTATION, created.to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    let request = IndexRequest {
                        media_type: spec.output.media_type,
                        children: &children,
                        expected: Some(&expected),
                        annotations,
                    };
                    let outcome = match self
                        .registry
                        .assemble(&spec.output.repository, &spec.output.tag, &request)
                        .await
                    {
                        Ok(index) => AssemblyOutcome::Pushed(index_ref(index, Some(expected.commit))),
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => AssemblyOutcome::Rejected {
                            reason: e.label().into(),
                            message: e.to_string(),
                        },
                    };
                    observed.assembly = Some(outcome);
                }
                Action::Attest { digest } => {
                    observed.attestation = Some(self.attest(build, spec, status, &digest).await?);
                }
                Action::PushTags { digest, tags } => {
                    let outcome = match self.registry.push_tags(&spec.output.repository, &digest, &tags).await {
                        Ok(()) => TagsOutcome::Pushed(tags),
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => TagsOutcome::Rejected {
                            reason: e.label().into(),
                            message: e.to_string(),
                        },
                    };
                    observed.tags = Some(outcome);
                }
            }
        }
        Ok(())
    }
}

/// The ids of the jobs of `status` that may still be running (see [`plan::live_job`]).
pub fn live_job_ids(status: &MultiArchBuildStatus) -> Vec<String> {
    status
        .platforms
        .iter()
        .filter_map(|p| plan::live_job(p).map(str::to_owned))
        .collect()
}

/// What is known about the live jobs of `status`, keyed by platform: `lookup` maps a job id to its
/// observation, or `None` when nothing is known about it yet. The controller looks in the shared
/// poller, `build` in one DescribeJobs answer.
pub fn job_observations(
    status: &MultiArchBuildStatus,
    mut lookup: impl FnMut(&str) -> Option<JobObservation>,
) -> BTreeMap<Platform, JobObservation> {
    status
        .platforms
        .iter()
        .filter_map(|p| Some((p.platform, lookup(plan::live_job(p)?)?)))
        .collect()
}

impl Engine {
    /// Whether `<tag>` holds an index this input provably built. A registry that refuses the
    /// question permanently (a missing repository, a bad answer) means building, not failing.
    async fn check_existing(&self, spec: &MultiArchBuildSpec) -> Result<ExistingIndex, EngineError> {
        let platforms: Vec<Platform> = spec.platforms.iter().map(|p| p.platform).collect();
        let pinned = pinned_commit(spec).map(|commit| Expected {
            build_uid: None,
            commit,
            inputs: inputs_hash(spec),
        });
        let expectation = match &pinned {
            Some(expected) => ReuseExpectation::Pinned(expected),
            None => ReuseExpectation::Unpinned(&spec.source.git.revision),
        };
        let found = self
            .registry
            .find_existing_index(&spec.output.repository, &spec.output.tag, &platforms, expectation)
            .await;
        Ok(match found {
            Ok(Existing::Absent) => ExistingIndex::Absent,
            Ok(Existing::Differs(why)) => ExistingIndex::Differs(why),
            Ok(Existing::Reusable(index)) => ExistingIndex::Reusable(index_ref(index, pinned.map(|e| e.commit))),
            Err(e) if !e.is_transient() => {
                warn!(error = %e, "cannot check for an existing index; building");
                ExistingIndex::Differs(format!("it cannot be read: {e}"))
            }
            Err(e) => return Err(e.into()),
        })
    }

    /// Attaches the provenance of the index `digest` (signed with the signing key, if any). The
    /// statement is made from the status and from the index's images as the registry has them.
    /// A registry that does not answer is a transient error; anything else (KMS refused, a push
    /// refused, a read-back that does not verify) is an outcome the planner retries.
    async fn attest(
        &self,
        build: &Build<'_>,
        spec: &MultiArchBuildSpec,
        status: &MultiArchBuildStatus,
        digest: &str,
    ) -> Result<AttestationOutcome, EngineError> {
        let repository = &spec.output.repository;
        let attached = async {
            let index = self
                .registry
                .manifest(repository, digest)
                .await?
                .ok_or_else(|| AttestError::ReadBack(format!("the index {repository}@{digest} is gone")))?;
            let children = self.registry.index_children(repository, &index).await?;
            let statement = statement::statement(&statement::BuildFacts {
                reference: build.reference,
                spec,
                status,
                index_digest: digest,
                children: &children,
            });
            attest::attach(&self.registry, self.signer.as_deref(), repository, &index, &statement).await
        };
        match attached.await {
            Ok(attached) => {
                info!(index = %digest, signed = attached.signature.is_some(), "provenance attached");
                Ok(AttestationOutcome::Attached {
                    provenance: attached.provenance,
                    signature: attached.signature,
                })
            }
            Err(AttestError::Registry(e)) if e.is_transient() => Err(e.into()),
            Err(e) => {
                warn!(index = %digest, error = %e, "cannot attach the provenance");
                let reason = match e {
                    AttestError::Signing(_) => plan::reason::SIGNING_FAILED,
                    _ => plan::reason::ATTESTATION_FAILED,
                };
                Ok(AttestationOutcome::Failed {
                    reason: reason.into(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The builder ends its log with these two lines (see builder/build.sh).
const RESULT_LINES: usize = 2;

/// What a succeeded job's log says it pushed: its last two lines must be exactly
/// `commit: <40 hex>` and `digest: sha256:<64 hex>`. Nothing a build prints earlier can pass for
/// them, since the builder prints them last.
pub fn read_result(last_lines: &[String]) -> JobResult {
    let [commit_line, digest_line] = last_lines else {
        return JobResult::NotInLog(format!(
            "its log has {} line(s), not the builder's closing commit and digest lines",
            last_lines.len()
        ));
    };
    let commit = commit_line.strip_prefix("commit: ").filter(|c| is_commit_id(c));
    let digest = digest_line
        .strip_prefix("digest: ")
        .filter(|d| crate::registry::parse::is_sha256_digest(d));
    match (commit, digest) {
        (Some(commit), Some(digest)) => JobResult::Pushed {
            commit: commit.to_string(),
            digest: digest.to_string(),
        },
        _ => JobResult::NotInLog(format!(
            "its log does not end with the builder's `commit: <sha>` and `digest: sha256:<hex>` lines (it ends \
             with {:?})",
            crate::util::cut(digest_line, 120, "…")
        )),
    }
}

fn submitted(job: SubmittedJob) -> JobObservation {
    JobObservation::Submitted {
        job_id: job.job_id,
        job_name: job.job_name,
    }
}

fn index_ref(index: PushedIndex, commit: Option<String>) -> IndexRef {
    IndexRef {
        digest: index.digest,
        platforms: index.platforms,
        commit,
    }
}
