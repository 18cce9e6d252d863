//! Leader election on one coordination.k8s.io/v1 Lease, with a deadline on the monotonic clock.
//!
//! A replica holds the Lease from the moment it sends the write that takes or renews it until that
//! moment plus the lease duration, and not a moment longer: [`keep`] returns at that deadline
//! unless a renewal succeeded first, whatever the API server does meanwhile (refuses, or never
//! answers: the deadline is a timer, not a request's completion). The caller stops leading when
//! it returns.
//!
//! - Acquire ([`Elector::acquire`]): read the Lease (create it, held, when missing) and take it
//!   when nobody holds it, when this replica's name is on it, or when its record has not changed
//!   for its `leaseDurationSeconds` — timed on this replica's clock from when it first saw that
//!   record, as client-go does: the holder's `renewTime` is another machine's clock.
//! - Renew `duration - grace` after each renewal; after a failed attempt, try again every
//!   [`Timing::retry`] (also the longest one attempt may take) until the deadline.
//! - Release ([`Elector::release`]) on shutdown: clear the holder, so a standby takes the Lease at
//!   its next look.
//!
//! Every write is a JSON merge patch carrying the `resourceVersion` it was decided on, so the API
//! server refuses it (409) when anyone wrote the Lease in between: two replicas never both take it.
//! The calls: leases get, create, patch.

use std::{fmt, future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{debug, info, warn};

use super::{FIELD_MANAGER, LeaseSettings};

/// The time between two looks of a standby at the Lease, and between two renewal attempts after a
/// failed one (the grace, when shorter).
const RETRY: Duration = Duration::from_secs(2);

/// The rhythm of a held Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal keeps the Lease.
    pub duration: Duration,
    /// From a renewal to the next one.
    pub renew_after: Duration,
    /// Between two attempts after a failed one, and between two looks of a standby; also the
    /// longest one attempt may take.
    pub retry: Duration,
}

impl Timing {
    pub fn new(settings: &LeaseSettings) -> Result<Timing, String> {
        let (duration, grace) = (settings.duration_seconds, settings.grace_seconds);
        if i32::try_from(duration).is_err() {
            return Err(format!("the lease duration ({duration}s) is too long"));
        }
        if grace == 0 || grace >= duration {
            return Err(format!(
                "the lease grace ({grace}s) must be more than 0 and less than its duration ({duration}s)"
            ));
        }
        let (duration, grace) = (Duration::from_secs(duration), Duration::from_secs(grace));
        Ok(Timing {
            duration,
            renew_after: duration - grace,
            retry: RETRY.min(grace),
        })
    }
}

/// What one renewal attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The Lease is ours for another duration, counted from when the attempt started.
    Renewed,
    /// Another replica holds the Lease (`None`: nobody, or it was deleted).
    Taken(Option<String>),
    /// Refused or failed: try again while the deadline allows.
    Failed(String),
}

/// Why a holder stopped holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded within the lease duration.
    Expired,
    /// Another replica holds the Lease (`None`: nobody, or it was deleted).
    Taken(Option<String>),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Expired => f.write_str("not renewed within the lease duration"),
            Lost::Taken(Some(holder)) => write!(f, "now held by {holder}"),
            Lost::Taken(None) => f.write_str("no longer held by this replica"),
        }
    }
}

/// The write that renews a held Lease: the Kubernetes API for [`Elector`], a script in the tests.
pub trait Renew {
    /// One attempt; its future may never complete (an API server that does not answer).
    fn renew(&mut self) -> impl Future<Output = Renewal> + Send;
}

/// Keeps a Lease taken or last renewed by a write sent at `renewed`, renewing it on time, and
/// returns when it is lost: at the latest at the deadline of the last successful renewal (its
/// start + the duration), even while an attempt still waits for an answer.
pub async fn keep(timing: Timing, mut renewed: Instant, lease: &mut impl Renew) -> Lost {
    let mut next = renewed + timing.renew_after;
    loop {
        let deadline = renewed + timing.duration;
        let attempt = async {
            sleep_until(next).await;
            let sent = Instant::now();
            (sent, timeout_at(sent + timing.retry, lease.renew()).await)
        };
        let (sent, outcome) = tokio::select! {
            // At the deadline the timer wins, even over an answer arriving at the same moment.
            biased;
            () = sleep_until(deadline) => return Lost::Expired,
            done = attempt => done,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match outcome {
            Ok(Renewal::Renewed) => {
                debug!("renewed the leader Lease");
                renewed = sent;
                next = sent + timing.renew_after;
            }
            Ok(Renewal::Taken(holder)) => return Lost::Taken(holder),
            Ok(Renewal::Failed(error)) => {
                warn!(%error, ?left, "cannot renew the leader Lease; retrying until it expires");
                next = sent + timing.retry;
            }
            Err(_) => {
                warn!(
                    ?left,
                    "no answer to the leader Lease renewal; retrying until it expires"
                );
                next = Instant::now();
            }
        }
    }
}

/// Another replica's record of the Lease, and when this replica first saw it.
#[derive(Debug, Default)]
struct LastSeen(Option<(LeaseSpec, Instant)>);

impl LastSeen {
    /// Whether the holder of `spec` let it lapse: the record has not changed for its duration
    /// (`default` when it has none), on this replica's clock.
    fn lapsed(&mut self, spec: &LeaseSpec, now: Instant, default: Duration) -> bool {
        let since = match &self.0 {
            Some((seen, since)) if seen == spec => *since,
            _ => {
                self.0 = Some((spec.clone(), now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(default, Duration::from_secs);
        now >= since + duration
    }
}

/// What one look at the Lease led to.
enum Look {
    /// This replica holds it now, from a write sent at that instant.
    Took(Instant),
    /// Another replica holds it (`None`: it changed between our read and our write).
    HeldBy(Option<String>),
}

/// This replica's side of the election on one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease's resourceVersion after our last write, while we hold it.
    version: Option<String>,
    last_seen: LastSeen,
}

impl Elector {
    /// Fails when the settings are inconsistent; makes no call.
    pub fn new(client: Client, settings: &LeaseSettings) -> Result<Elector, String> {
        Ok(Elector {
            api: Api::namespaced(client, &settings.namespace),
            name: settings.name.clone(),
            identity: settings.identity.clone(),
            timing: Timing::new(settings)?,
            version: None,
            last_seen: LastSeen::default(),
        })
    }

    /// Returns once this replica holds the Lease, with the instant its term counts from; waits while
    /// another replica holds it, and retries whatever fails.
    pub async fn acquire(&mut self) -> Instant {
        let mut told: Option<String> = None;
        loop {
            let started = Instant::now();
            match timeout_at(started + self.timing.retry, self.look()).await {
                Ok(Ok(Look::Took(sent))) => return sent,
                Ok(Ok(Look::HeldBy(holder))) => {
                    if let Some(holder) = holder
                        && told.as_ref() != Some(&holder)
                    {
                        info!(%holder, "the leader Lease is held by another replica: standing by");
                        told = Some(holder);
                    }
                }
                Ok(Err(error)) => warn!(%error, lease = %self.name, "cannot read or take the leader Lease; retrying"),
                Err(_) => warn!(lease = %self.name, "no answer about the leader Lease; retrying"),
            }
            sleep_until(started + self.timing.retry).await;
        }
    }

    /// Renews the Lease taken at `since` until it is lost (see [`keep`]).
    pub async fn hold(&mut self, since: Instant) -> Lost {
        let timing = self.timing;
        let lost = keep(timing, since, self).await;
        self.version = None;
        lost
    }

    /// Gives the Lease up if it carries this replica's name, so a standby takes it at its next look;
    /// true when it did.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let mut version = self.version.take();
        for _ in 0..2 {
            let current = match version.take() {
                Some(version) => version,
                None => match self.api.get_opt(&self.name).await? {
                    Some(lease) if holder(&lease) == Some(self.identity.as_str()) => resource_version(&lease),
                    _ => return Ok(false),
                },
            };
            let patch = json!({
                "metadata": {"resourceVersion": current},
                "spec": {"holderIdentity": null, "acquireTime": null, "renewTime": null, "leaseDurationSeconds": null},
            });
            match self.write(&patch).await {
                Ok(_) => return Ok(true),
                // Written since: read it again.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Reads the Lease and takes it if it is free.
    async fn look(&mut self) -> Result<Look, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let sent = Instant::now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    acquire_time: Some(MicroTime(Timestamp::now())),
                    renew_time: Some(MicroTime(Timestamp::now())),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.took(&created, sent)),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Look::HeldBy(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = holder(&lease).map(str::to_string);
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let free = match &holder {
            None => true,
            Some(_) if ours => true,
            Some(_) => self.last_seen.lapsed(&spec, Instant::now(), self.timing.duration),
        };
        if !free {
            return Ok(Look::HeldBy(holder));
        }
        let now = MicroTime(Timestamp::now());
        let (acquired, transitions) = if ours {
            (
                spec.acquire_time.clone().unwrap_or_else(|| now.clone()),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now.clone(), spec.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        let patch = json!({
            "metadata": {"resourceVersion": resource_version(&lease)},
            "spec": {
                "holderIdentity": self.identity,
                "acquireTime": acquired,
                "renewTime": now,
                "leaseDurationSeconds": self.duration_seconds(),
                "leaseTransitions": transitions,
            },
        });
        let sent = Instant::now();
        match self.write(&patch).await {
            Ok(taken) => Ok(self.took(&taken, sent)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Look::HeldBy(None)),
            Err(e) => Err(e),
        }
    }

    fn took(&mut self, lease: &Lease, sent: Instant) -> Look {
        self.version = Some(resource_version(lease));
        self.last_seen = LastSeen::default();
        info!(identity = %self.identity, lease = %self.name, "took the leader Lease");
        Look::Took(sent)
    }

    /// A merge patch of the Lease (the resourceVersion in `patch` makes it conditional).
    async fn write(&self, patch: &Value) -> Result<Lease, kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api.patch(&self.name, &params, &Patch::Merge(patch)).await
    }

    fn duration_seconds(&self) -> i32 {
        // Checked by Timing::new.
        i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

impl Renew for Elector {
    async fn renew(&mut self) -> Renewal {
        // Twice at most: when someone wrote the Lease since our last write but it is still ours
        // (a label, say), once more with its new resourceVersion.
        for _ in 0..2 {
            let Some(version) = self.version.clone() else {
                return Renewal::Taken(None);
            };
            let patch = json!({
                "metadata": {"resourceVersion": version},
                "spec": {
                    "holderIdentity": self.identity,
                    "renewTime": MicroTime(Timestamp::now()),
                    "leaseDurationSeconds": self.duration_seconds(),
                },
            });
            match self.write(&patch).await {
                Ok(lease) => {
                    self.version = Some(resource_version(&lease));
                    return Renewal::Renewed;
                }
                Err(kube::Error::Api(status)) if status.code == 404 => return Renewal::Taken(None),
                Err(kube::Error::Api(status)) if status.code == 409 => match self.api.get_opt(&self.name).await {
                    Ok(Some(lease)) if holder(&lease) == Some(self.identity.as_str()) => {
                        self.version = Some(resource_version(&lease));
                    }
                    Ok(lease) => return Renewal::Taken(lease.as_ref().and_then(holder).map(str::to_string)),
                    Err(e) => return Renewal::Failed(e.to_string()),
                },
                Err(e) => return Renewal::Failed(e.to_string()),
            }
        }
        Renewal::Failed("the Lease keeps changing under this replica".into())
    }
}

/// The Lease's holder, if any.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn resource_version(lease: &Lease) -> String {
    lease.metadata.resource_version.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn test_settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }

    fn timing() -> Timing {
        Timing::new(&test_settings()).unwrap()
    }

    /// Renewals that answer from a script, one entry per attempt, then like the last entry; each
    /// entry is (delay before the answer, answer), `None` as the answer for no answer at all.
    struct Script {
        steps: Vec<(Duration, Option<Renewal>)>,
        /// When each attempt started, since `start`.
        attempts: Arc<Mutex<Vec<Duration>>>,
        start: Instant,
    }

    impl Script {
        fn new(steps: Vec<(Duration, Option<Renewal>)>) -> Script {
            Script {
                steps,
                attempts: Arc::default(),
                start: Instant::now(),
            }
        }
    }

    impl Renew for Script {
        fn renew(&mut self) -> impl Future<Output = Renewal> + Send {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.len().min(self.steps.len() - 1);
            attempts.push(self.start.elapsed());
            let (delay, answer) = self.steps[n].clone();
            async move {
                tokio::time::sleep(delay).await;
                match answer {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            }
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    const NOW: Duration = Duration::ZERO;

    /// Runs `keep` from a renewal now, for at most `limit`: when it returned (since now) and why.
    async fn run(timing: Timing, script: &mut Script, limit: Duration) -> Option<(Duration, Lost)> {
        let start = Instant::now();
        tokio::time::timeout(limit, keep(timing, start, script))
            .await
            .ok()
            .map(|lost| (start.elapsed(), lost))
    }

    #[test]
    fn timing_renews_after_duration_minus_grace_and_retries_within_the_grace() {
        let t = timing();
        assert_eq!((t.duration, t.renew_after, t.retry), (secs(15), secs(10), secs(2)));
        let short = Timing::new(&LeaseSettings {
            duration_seconds: 3,
            grace_seconds: 1,
            ..test_settings()
        })
        .unwrap();
        assert_eq!((short.renew_after, short.retry), (secs(2), secs(1)));
        for (duration, grace) in [(15, 0), (15, 15), (15, 20), (u64::MAX, 5)] {
            let bad = LeaseSettings {
                duration_seconds: duration,
                grace_seconds: grace,
                ..test_settings()
            };
            assert!(Timing::new(&bad).is_err(), "{duration}/{grace}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_succeed_keep_the_lease_renewing_every_duration_minus_grace() {
        let mut script = Script::new(vec![(NOW, Some(Renewal::Renewed))]);
        assert_eq!(run(timing(), &mut script, secs(100)).await, None);
        let attempts = script.attempts.lock().unwrap().clone();
        assert_eq!(attempts, (1..=10).map(|n| secs(10 * n)).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_renewals_are_retried_then_the_lease_is_lost_at_the_deadline() {
        let refused = Renewal::Failed("500".into());
        let mut script = Script::new(vec![(NOW, Some(Renewal::Renewed)), (NOW, Some(refused))]);
        // Renewed at 10 s, so held until 25 s; refused at 20, 22 and 24 s.
        assert_eq!(
            run(timing(), &mut script, secs(100)).await,
            Some((secs(25), Lost::Expired))
        );
        assert_eq!(
            *script.attempts.lock().unwrap(),
            [secs(10), secs(20), secs(22), secs(24)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_succeeds_after_a_failure_moves_the_deadline() {
        let mut script = Script::new(vec![
            (NOW, Some(Renewal::Failed("500".into()))),
            (NOW, Some(Renewal::Renewed)),
            (NOW, Some(Renewal::Failed("500".into()))),
        ]);
        // Refused at 10 s, renewed at 12 s (held until 27 s), then refused from 22 s on.
        assert_eq!(
            run(timing(), &mut script, secs(100)).await,
            Some((secs(27), Lost::Expired))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_never_answers_loses_the_lease_at_the_deadline() {
        let mut script = Script::new(vec![(NOW, None)]);
        assert_eq!(
            run(timing(), &mut script, secs(100)).await,
            Some((secs(15), Lost::Expired))
        );
        // Each attempt gets the retry period, then the next one starts.
        assert_eq!(*script.attempts.lock().unwrap(), [secs(10), secs(12), secs(14)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_a_timer_not_the_completion_of_the_request() {
        // Attempts may take a minute, and the answer comes after the deadline: too late.
        let patient = Timing {
            retry: secs(60),
            ..timing()
        };
        let mut late = Script::new(vec![(secs(6), Some(Renewal::Renewed))]);
        assert_eq!(
            run(patient, &mut late, secs(100)).await,
            Some((secs(15), Lost::Expired))
        );
        let mut never = Script::new(vec![(NOW, None)]);
        assert_eq!(
            run(patient, &mut never, secs(100)).await,
            Some((secs(15), Lost::Expired))
        );
        assert_eq!(*never.attempts.lock().unwrap(), [secs(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_replica_is_lost_at_once() {
        let mut script = Script::new(vec![(NOW, Some(Renewal::Taken(Some("other".into()))))]);
        assert_eq!(
            run(timing(), &mut script, secs(100)).await,
            Some((secs(10), Lost::Taken(Some("other".into()))))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_a_lease_whose_record_did_not_change_for_its_duration() {
        let held = |renew: &str| LeaseSpec {
            holder_identity: Some("other".into()),
            renew_time: Some(MicroTime(renew.parse().unwrap())),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let start = Instant::now();
        let at = |s: u64| start + secs(s);
        let mut seen = LastSeen::default();
        // Timed from the first look, whatever renewTime says (another machine's clock).
        assert!(!seen.lapsed(&held("2000-01-01T00:00:00Z"), at(0), secs(30)));
        assert!(!seen.lapsed(&held("2000-01-01T00:00:00Z"), at(14), secs(30)));
        // Renewed: timed again from this look.
        assert!(!seen.lapsed(&held("2000-01-01T00:00:10Z"), at(14), secs(30)));
        assert!(!seen.lapsed(&held("2000-01-01T00:00:10Z"), at(28), secs(30)));
        assert!(seen.lapsed(&held("2000-01-01T00:00:10Z"), at(29), secs(30)));
        // No duration in the record: ours.
        let mut seen = LastSeen::default();
        let bare = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert!(!seen.lapsed(&bare, at(0), secs(30)));
        assert!(!seen.lapsed(&bare, at(29), secs(30)));
        assert!(seen.lapsed(&bare, at(30), secs(30)));
    }
}
