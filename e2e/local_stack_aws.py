#!/usr/bin/env python3
"""AWS side of the local stack, against moto_server (boto3).

Used by e2e/local-stack; also handy by hand:

  python3 e2e/local_stack_aws.py setup  --image IMG --git-dir DIR    # idempotent
  python3 e2e/local_stack_aws.py check                               # exit 0 if all there
  python3 e2e/local_stack_aws.py run-job --queue build-arm64 --env MAB_X=y ... [--wait S]
  python3 e2e/local_stack_aws.py logs JOB_ID

The endpoint/region/credentials come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY (as printed by `e2e/local-stack env`).
"""

import argparse
import json
import os
import sys
import time

import boto3
import botocore.exceptions

PROG = "local-stack"
QUEUES = {"build-amd64": "mab-local-amd64", "build-arm64": "mab-local-arm64"}
JOB_DEFINITION = "multiarch-builder"
SLEEPER_JOB_DEFINITION = "mab-local-sleeper"
LOG_GROUP = "/aws/batch/job"
# The KMS key `make demo` signs with (moto signs ECDSA_SHA_256 with ECC_NIST_P256 keys).
SIGNING_ALIAS = "alias/mab-local-signing"
ROLE = "mab-local-batch-service-role"
DOCKER_SOCK = "/var/run/docker.sock"


def say(msg):
    print(f"{PROG}: {msg}", flush=True)


def fail(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def client(name):
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        fail("AWS_ENDPOINT_URL is not set (eval \"$(e2e/local-stack env)\")")
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


def job_definition_properties(image, git_dir):
    return {
        "image": image,
        # empty command: the image's ENTRYPOINT (build.sh) runs with no arguments
        "command": [],
        "resourceRequirements": [
            {"type": "VCPU", "value": "1"},
            {"type": "MEMORY", "value": "1024"},
        ],
        "environment": [{"name": "MAB_ALLOW_EMULATION", "value": "true"}],
        "volumes": [
            {"name": "docker-sock", "host": {"sourcePath": DOCKER_SOCK}},
            {"name": "git-repos", "host": {"sourcePath": git_dir}},
        ],
        "mountPoints": [
            {"sourceVolume": "docker-sock", "containerPath": DOCKER_SOCK, "readOnly": False},
            # same path inside as outside, so file:// URLs work on both sides
            {"sourceVolume": "git-repos", "containerPath": git_dir, "readOnly": True},
        ],
    }


def sleeper_properties(image):
    """A job that only sleeps (SLEEP_SECONDS, default 600): for TerminateJob/cancel tests."""
    return {
        "image": image,
        "command": ["sh", "-c", 'echo "sleeping ${SLEEP_SECONDS:-600}s"; sleep "${SLEEP_SECONDS:-600}"; echo done'],
        "resourceRequirements": [
            {"type": "VCPU", "value": "1"},
            {"type": "MEMORY", "value": "64"},
        ],
        "environment": [],
        "volumes": [],
        "mountPoints": [],
    }


def ensure_job_definition(batch, name, wanted):
    active = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
    latest = max(active, key=lambda d: d["revision"], default=None)
    same = latest is not None and all(
        latest.get("containerProperties", {}).get(k) == wanted[k]
        for k in ("image", "command", "environment", "volumes", "mountPoints")
    )
    if same:
        return
    out = batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=wanted)
    say(f"registered job definition {name}:{out['revision']} (image {wanted['image']})")
    for d in active:
        batch.deregister_job_definition(jobDefinition=d["jobDefinitionArn"])


def setup(args):
    iam = client("iam")
    batch = client("batch")
    logs = client("logs")

    try:
        role_arn = iam.get_role(RoleName=ROLE)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role_arn = iam.create_role(
            RoleName=ROLE,
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "batch.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )["Role"]["Arn"]
        say(f"created IAM role {ROLE}")

    existing_ces = {
        ce["computeEnvironmentName"]: ce
        for ce in batch.describe_compute_environments()["computeEnvironments"]
    }
    existing_queues = {
        q["jobQueueName"]: q for q in batch.describe_job_queues()["jobQueues"]
    }
    for queue, ce_name in QUEUES.items():
        if ce_name not in existing_ces:
            ce_arn = batch.create_compute_environment(
                computeEnvironmentName=ce_name,
                type="UNMANAGED",
                state="ENABLED",
                serviceRole=role_arn,
            )["computeEnvironmentArn"]
            say(f"created compute environment {ce_name}")
        else:
            ce_arn = existing_ces[ce_name]["computeEnvironmentArn"]
        if queue not in existing_queues:
            batch.create_job_queue(
                jobQueueName=queue,
                state="ENABLED",
                priority=1,
                computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce_arn}],
            )
            say(f"created job queue {queue}")

    ensure_job_definition(batch, JOB_DEFINITION, job_definition_properties(args.image, args.git_dir))
    ensure_job_definition(batch, SLEEPER_JOB_DEFINITION, sleeper_properties(args.sleeper_image))

    if not logs.describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]:
        logs.create_log_group(logGroupName=LOG_GROUP)
        say(f"created log group {LOG_GROUP}")

    kms = client("kms")
    if not signing_key_present(kms):
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=SIGNING_ALIAS, TargetKeyId=key_id)
        say(f"created KMS signing key {SIGNING_ALIAS} (ECC_NIST_P256, SIGN_VERIFY)")


def signing_key_present(kms):
    return any(a["AliasName"] == SIGNING_ALIAS for a in kms.list_aliases()["Aliases"])


def check(args):
    batch = client("batch")
    logs = client("logs")
    problems = []
    try:
        queues = {
            q["jobQueueName"]: q["state"] for q in batch.describe_job_queues()["jobQueues"]
        }
        for q in QUEUES:
            if queues.get(q) != "ENABLED":
                problems.append(f"job queue {q} missing")
        defs = batch.describe_job_definitions(
            jobDefinitionName=JOB_DEFINITION, status="ACTIVE"
        )["jobDefinitions"]
        if not defs:
            problems.append(f"job definition {JOB_DEFINITION} missing")
        else:
            latest = max(defs, key=lambda d: d["revision"])
            image = latest["containerProperties"]["image"]
            if args.image and image != args.image:
                problems.append(
                    f"job definition {JOB_DEFINITION} uses image {image}, expected {args.image}"
                )
        if not logs.describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]:
            problems.append(f"log group {LOG_GROUP} missing")
        if not signing_key_present(client("kms")):
            problems.append(f"KMS key {SIGNING_ALIAS} missing")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        problems.append(f"cannot query moto: {e}")
    if problems:
        print("; ".join(problems))
        sys.exit(1)
    print(f"queues {', '.join(QUEUES)}, job definition {JOB_DEFINITION}, log group {LOG_GROUP}, signing key {SIGNING_ALIAS}")


def job_logs(job):
    stream = (job.get("container") or {}).get("logStreamName")
    if not stream:
        for a in job.get("attempts") or []:
            stream = (a.get("container") or {}).get("logStreamName") or stream
    if not stream:
        return None, []
    logs = client("logs")
    events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=True)
    return stream, [e["message"] for e in events["events"]]


def run_job(args):
    batch = client("batch")
    env = []
    for kv in args.env or []:
        if "=" not in kv:
            fail(f"--env {kv!r} must be NAME=VALUE")
        name, value = kv.split("=", 1)
        env.append({"name": name, "value": value})
    name = args.name or f"e2e-{int(time.time())}"
    job_id = batch.submit_job(
        jobName=name,
        jobQueue=args.queue,
        jobDefinition=args.job_definition,
        containerOverrides={"environment": env},
    )["jobId"]
    say(f"submitted {name} to {args.queue}: {job_id}")
    if not args.wait:
        print(job_id)
        return
    start = time.time()
    last = None
    job = None
    while time.time() - start < args.wait:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] != last:
            last = job["status"]
            say(f"{time.time() - start:6.1f}s {last}")
        if last in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    else:
        fail(f"job {job_id} still {last} after {args.wait}s")
    summary = {
        "jobId": job_id,
        "status": job["status"],
        "statusReason": job.get("statusReason"),
        "exitCode": (job.get("container") or {}).get("exitCode"),
        "attempts": job.get("attempts"),
        "seconds": round(time.time() - start, 1),
    }
    stream, lines = job_logs(job)
    summary["logStreamName"] = stream
    print(json.dumps(summary, indent=1, default=str))
    for line in lines:
        print(f"  | {line}")
    if job["status"] != "SUCCEEDED":
        sys.exit(2)


def show_logs(args):
    job = client("batch").describe_jobs(jobs=[args.job_id])["jobs"]
    if not job:
        fail(f"no job {args.job_id}")
    stream, lines = job_logs(job[0])
    print(f"# {LOG_GROUP} {stream}")
    for line in lines:
        print(line)


def main():
    p = argparse.ArgumentParser(prog="local_stack_aws.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--image", required=True)
    s.add_argument("--git-dir", required=True)
    s.add_argument("--sleeper-image", required=True)
    s.set_defaults(fn=setup)
    c = sub.add_parser("check")
    c.add_argument("--image")
    c.set_defaults(fn=check)
    r = sub.add_parser("run-job")
    r.add_argument("--queue", required=True)
    r.add_argument("--job-definition", default=JOB_DEFINITION)
    r.add_argument("--name")
    r.add_argument("--env", action="append", help="NAME=VALUE, repeatable")
    r.add_argument("--wait", type=float, default=300, help="seconds; 0 = do not wait")
    r.set_defaults(fn=run_job)
    lg = sub.add_parser("logs")
    lg.add_argument("job_id")
    lg.set_defaults(fn=show_logs)
    args = p.parse_args()
    try:
        args.fn(args)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        fail(f"AWS call failed: {e}")


if __name__ == "__main__":
    main()
