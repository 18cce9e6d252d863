#!/usr/bin/env python3
"""Smoke test of the local stack: real Batch jobs (moto, docker mode) run builder/build.sh.

Needs a running stack:  e2e/local-stack up && eval "$(e2e/local-stack env)"
then:                   python3 e2e/local_stack_smoke_test.py

Checks:
  - the sample's good revision builds on build-amd64 and build-arm64 (in parallel), both jobs
    SUCCEEDED, the last log line is "digest: sha256:...", that digest is the registry's, and
    the pushed config's architecture is the platform's;
  - the failing revision FAILS on linux/arm64 only, with a "build.sh: docker build failed for
    linux/arm64: ..." line in the job's CloudWatch log stream;
  - log streams are "<job definition name>/default/<job id>" in log group /aws/batch/job;
  - TerminateJob of a RUNNING job (sleeper job definition) ends it as FAILED, quickly,
    with statusReason = the given reason.
Prints "N passed, M failed".
"""

import json
import os
import subprocess
import sys
import time
import uuid

import boto3

ENV = os.environ
REQUIRED = [
    "AWS_ENDPOINT_URL", "MAB_REGISTRY", "MAB_JOB_QUEUE_AMD64", "MAB_JOB_QUEUE_ARM64",
    "MAB_JOB_DEFINITION", "MAB_SAMPLE_GIT_URL", "MAB_SAMPLE_REVISION", "MAB_SAMPLE_FAILING_REVISION",
]
missing = [k for k in REQUIRED if not ENV.get(k)]
if missing:
    print(f"local_stack_smoke_test: {', '.join(missing)} not set: run eval \"$(e2e/local-stack env)\"",
          file=sys.stderr)
    sys.exit(2)

batch = boto3.client("batch")
logs = boto3.client("logs")
passed = failed = 0
RUN = uuid.uuid4().hex[:8]


def check(desc, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok - {desc}")
    else:
        failed += 1
        print(f"not ok - {desc}" + (f"\n    {detail}" if detail else ""))


def submit(name, queue, env, definition=None):
    return batch.submit_job(
        jobName=name,
        jobQueue=queue,
        jobDefinition=definition or ENV["MAB_JOB_DEFINITION"],
        containerOverrides={"environment": [{"name": k, "value": v} for k, v in env.items()]},
    )["jobId"]


def wait(ids, timeout=300):
    t0 = time.time()
    while True:
        jobs = {j["jobId"]: j for j in batch.describe_jobs(jobs=list(ids))["jobs"]}
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs.values()):
            return jobs, time.time() - t0
        if time.time() - t0 > timeout:
            return jobs, time.time() - t0
        time.sleep(0.5)


def log_lines(job):
    stream = (job.get("container") or {}).get("logStreamName")
    if not stream:
        return None, []
    ev = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True)
    return stream, [e["message"] for e in ev["events"]]


def build_env(revision, arch, tag):
    return {
        "MAB_GIT_URL": ENV["MAB_SAMPLE_GIT_URL"],
        "MAB_GIT_REVISION": revision,
        "MAB_IMAGE": f"{ENV['MAB_REGISTRY']}/smoke:{tag}-{arch}",
        "MAB_PLATFORM": f"linux/{arch}",
        "MAB_REGISTRY_AUTH": "none",
        "MAB_BUILD_UID": f"smoke-{tag}",
        "MAB_INPUT_HASH": "sha256:" + "0" * 64,
    }


def skopeo(*args):
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args],
                         capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


queues = {"amd64": ENV["MAB_JOB_QUEUE_AMD64"], "arm64": ENV["MAB_JOB_QUEUE_ARM64"]}

# ---- good revision, both platforms in parallel
ids = {arch: submit(f"smoke-{RUN}-good-{arch}", q, build_env(ENV["MAB_SAMPLE_REVISION"], arch, RUN))
       for arch, q in queues.items()}
jobs, secs = wait(ids.values())
print(f"# good revision: both jobs finished in {secs:.1f}s")
for arch, jid in ids.items():
    job = jobs[jid]
    stream, lines = log_lines(job)
    check(f"good/{arch}: job SUCCEEDED", job["status"] == "SUCCEEDED",
          f"status {job['status']}; log tail: {lines[-3:]}")
    check(f"good/{arch}: log stream is <definition>/default/<job id>",
          stream == f"{ENV['MAB_JOB_DEFINITION']}/default/{jid}", f"got {stream}")
    last = lines[-1] if lines else ""
    check(f"good/{arch}: last log line is 'digest: sha256:...'",
          last.startswith("digest: sha256:") and len(last) == len("digest: sha256:") + 64, f"got {last!r}")
    ref = f"docker://{ENV['MAB_REGISTRY']}/smoke:{RUN}-{arch}"
    rc, out, err = skopeo("--raw", ref)
    if rc == 0:
        import hashlib
        digest = "sha256:" + hashlib.sha256(out.encode()).hexdigest()
        check(f"good/{arch}: printed digest is the registry manifest's sha256", last == f"digest: {digest}",
              f"registry {digest}, log {last!r}")
    else:
        check(f"good/{arch}: manifest in the registry", False, err.strip())
    rc, out, err = skopeo("--config", ref)
    arch_in_config = json.loads(out).get("architecture") if rc == 0 else err.strip()
    check(f"good/{arch}: pushed config architecture is {arch}", arch_in_config == arch, f"got {arch_in_config}")

# ---- failing revision: arm64 fails, amd64 succeeds
ids = {arch: submit(f"smoke-{RUN}-fail-{arch}", q, build_env(ENV["MAB_SAMPLE_FAILING_REVISION"], arch, RUN + "f"))
       for arch, q in queues.items()}
jobs, secs = wait(ids.values())
print(f"# failing revision: both jobs finished in {secs:.1f}s")
check("failing/amd64: job SUCCEEDED", jobs[ids["amd64"]]["status"] == "SUCCEEDED",
      f"status {jobs[ids['amd64']]['status']}")
job = jobs[ids["arm64"]]
check("failing/arm64: job FAILED", job["status"] == "FAILED", f"status {job['status']}")
_, lines = log_lines(job)
errs = [line for line in lines if line.startswith("build.sh: ")]
check("failing/arm64: exactly one 'build.sh: ' line in the log", len(errs) == 1, f"got {errs}")
check("failing/arm64: it says the docker build failed for linux/arm64",
      bool(errs) and errs[-1].startswith("build.sh: docker build failed for linux/arm64: "), f"got {errs}")
print(f"#   statusReason={job.get('statusReason')!r} container.exitCode={(job.get('container') or {}).get('exitCode')!r}")
summ = [s for s in batch.list_jobs(jobQueue=queues["arm64"],
                                   filters=[{"name": "JOB_NAME", "values": [f"smoke-{RUN}-fail-arm64"]}])["jobSummaryList"]]
print(f"#   ListJobs summary container={summ[0].get('container') if summ else None!r}")

# ---- TerminateJob of a RUNNING job
sleeper = ENV.get("MAB_SLEEPER_JOB_DEFINITION")
if sleeper:
    jid = submit(f"smoke-{RUN}-terminate", queues["amd64"], {"SLEEP_SECONDS": "300"}, definition=sleeper)
    t0 = time.time()
    while batch.describe_jobs(jobs=[jid])["jobs"][0]["status"] != "RUNNING" and time.time() - t0 < 60:
        time.sleep(0.2)
    time.sleep(2)  # moto says RUNNING before the container exists; let it start
    t1 = time.time()
    batch.terminate_job(jobId=jid, reason="smoke test terminate")
    jobs, _ = wait([jid], timeout=60)
    secs = time.time() - t1
    job = jobs[jid]
    check("terminate: RUNNING job ends FAILED", job["status"] == "FAILED", f"status {job['status']}")
    check("terminate: within 10s", secs < 10, f"took {secs:.1f}s")
    check("terminate: statusReason is the reason given", job.get("statusReason") == "smoke test terminate",
          f"got {job.get('statusReason')!r}")
    print(f"# terminate took {secs:.1f}s")

print()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
