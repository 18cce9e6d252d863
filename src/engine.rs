//! One reconcile step: observe → plan → apply, shared by the controller and the one-shot `build`.
//!
//! The engine owns no state between steps: everything it needs is in the status (job ids, states)
//! or observed afresh. It persists each new status through the caller's `persist` before it runs
//! actions that can fail, so a job id is recorded as soon as SubmitJob returned it.

use std::{collections::BTreeMap, future::Future};

use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use crate::{
    api::{GitSources, MultiArchBuildSpec, MultiArchBuildStatus, Platform},
    batch::{BatchError, BatchExecutor, BuildRef, MAX_LOG_TAIL_LINES, submit_request},
    plan::{self, Action, AssemblyOutcome, IndexRef, Input, JobObservation, Observations},
    registry::{PushedIndex, RegistryClient, RegistryError},
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
}

impl EngineError {
    /// A short CamelCase label: the failures metric's label and the Warning event's reason.
    pub fn label(&self) -> &'static str {
        match self {
            EngineError::Batch(e) => e.label(),
            EngineError::Registry(e) => e.label(),
            EngineError::Persist(_) => "StatusWriteFailed",
        }
    }
}

/// The build being stepped.
pub struct Build<'a> {
    pub reference: &'a BuildRef,
    pub spec: &'a MultiArchBuildSpec,
    pub git_sources: GitSources,
    pub generation: Option<i64>,
}

/// Talks to Batch and the registry on the planner's behalf.
#[derive(Clone)]
pub struct Engine {
    pub batch: BatchExecutor,
    pub registry: RegistryClient,
    pub default_job_definition: String,
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
    ) -> Result<MultiArchBuildStatus, EngineError>
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
                status,
                observed,
                now: now(),
            })
        };
        for _ in 0..MAX_ROUNDS {
            let plan = decide(&status, &observed);
            if plan.status != status {
                persist(plan.status.clone()).await?;
                status = plan.status;
            }
            if plan.actions.is_empty() {
                return Ok(status);
            }
            // Observations of this round's actions feed the next round; job states carry over.
            let jobs = std::mem::take(&mut observed.jobs);
            observed = Observations {
                jobs,
                ..Default::default()
            };
            if let Err(error) = self.apply(build, plan.actions, &mut observed).await {
                // Record what did happen (a submitted job id above all) before reporting.
                let plan = decide(&status, &observed);
                if plan.status != status {
                    persist(plan.status).await?;
                }
                return Err(error);
            }
        }
        Ok(status)
    }

    /// Applies every action, recording what each one observed; stops at the first error.
    async fn apply(
        &self,
        build: &Build<'_>,
        actions: Vec<Action>,
        observed: &mut Observations,
    ) -> Result<(), EngineError> {
        let spec = build.spec;
        for action in actions {
            match action {
                Action::CheckExistingIndex => {
                    let platforms = platforms(spec);
                    let found = match self
                        .registry
                        .find_existing_index(&spec.output.repository, &spec.output.tag, &platforms)
                        .await
                    {
                        Ok(found) => found.map(index_ref),
                        Err(e) if !e.is_transient() => {
                            warn!(error = %e, "cannot check for an existing index; building");
                            None
                        }
                        Err(e) => return Err(e.into()),
                    };
                    observed.existing_index = Some(found);
                }
                Action::Submit(platform) => {
                    let request = submit_request(build.reference, spec, platform, &self.default_job_definition)?;
                    let job = self.batch.find_or_submit(&request).await?;
                    info!(%platform, job_id = %job.job_id, adopted = job.adopted, "job submitted");
                    observed.jobs.insert(
                        platform,
                        JobObservation::Submitted {
                            job_id: job.job_id,
                            job_name: job.job_name,
                        },
                    );
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
                Action::Assemble => {
                    let outcome = match self
                        .registry
                        .assemble(
                            &spec.output.repository,
                            &spec.output.tag,
                            &platforms(spec),
                            spec.output.media_type,
                        )
                        .await
                    {
                        Ok(index) => AssemblyOutcome::Pushed(index_ref(index)),
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => AssemblyOutcome::Rejected {
                            reason: e.label().into(),
                            message: e.to_string(),
                        },
                    };
                    observed.assembly = Some(outcome);
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

fn platforms(spec: &MultiArchBuildSpec) -> Vec<Platform> {
    spec.platforms.iter().map(|p| p.platform).collect()
}

fn index_ref(index: PushedIndex) -> IndexRef {
    IndexRef {
        digest: index.digest,
        platforms: index.platforms,
    }
}
