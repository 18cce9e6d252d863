#!/usr/bin/env python3
"""Builder player for make e2e (e2e/controller_e2e.sh): does what builder/build.sh would have done
for the e2e's Batch jobs, which only sleep.

Why: the cluster builds of the e2e use an https git URL that cannot be cloned here (no network),
and the CRD refuses file:// URLs, so their jobs run a sleeper instead of build.sh. The controller
accepts a platform only when the SUCCEEDED job's log ends with `commit: <sha>` / `digest: <d>` and
the image of that digest carries the build's labels. For every SUCCEEDED job whose name starts
with PREFIX, this pushes a minimal OCI image with those labels to the plain-http registry of the
job's MAB_IMAGE, then appends the two lines to the job's log stream.

Order: moto (5.2, Docker mode) ships the container's output to the log stream before it marks the
job SUCCEEDED, and our events are stamped now (and after the stream's last event), so they are last.

  python3 e2e/play_builder.py PREFIX QUEUE... (AWS_* from `e2e/local-stack env`; one line per job
  played on stdout; exits when the process of $MAB_PLAYER_PARENT_PID, if set, is gone)
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import urllib.parse
import urllib.request

import boto3

LOG_GROUP = "/aws/batch/job"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http(method, url, body=b"", headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers


def push_image(image, platform, labels):
    """Pushes a one-layer OCI image to image (host:port/repo:tag, plain http); returns its digest."""
    host, _, rest = image.partition("/")
    repo, _, tag = rest.rpartition(":")
    base = f"http://{host}/v2/{repo}"

    # Deterministic bytes (no times): a retry pushes the same image.
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = f"played by e2e/play_builder.py for {platform}\n".encode()
        info = tarfile.TarInfo("played.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer_tar = tar.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    os_, arch, *variant = platform.split("/")
    config = {"architecture": arch, "os": os_, "config": {"Labels": labels},
              "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]}}
    if variant:
        config["variant"] = variant[0]
    config = json.dumps(config, sort_keys=True).encode()

    for blob in (layer, config):
        location = http("POST", f"{base}/blobs/uploads/")["Location"]
        location = urllib.parse.urljoin(base + "/", location)
        sep = "&" if "?" in location else "?"
        http("PUT", f"{location}{sep}digest={sha256(blob)}", blob, {"Content-Type": "application/octet-stream"})

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    digest = sha256(manifest)
    answered = http("PUT", f"{base}/manifests/{tag}", manifest,
                    {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).get("Docker-Content-Digest")
    if answered not in (None, digest):
        raise RuntimeError(f"the registry stored {image} as {answered}, not {digest}")
    return digest


def append_lines(logs, stream, lines):
    """Appends lines to the stream, each stamped after every event already in it."""
    for create in (lambda: logs.create_log_group(logGroupName=LOG_GROUP),
                   lambda: logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)):
        try:
            create()
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
    last = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=False, limit=1)["events"]
    start = max(int(time.time() * 1000), max((e["timestamp"] for e in last), default=0) + 1)
    events = [{"timestamp": start + i, "message": line} for i, line in enumerate(lines)]
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)


def play(batch, logs, job_id):
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    container = job.get("container", {})
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    stream = container.get("logStreamName")
    if not stream:
        raise RuntimeError(f"{job['jobName']}: no container.logStreamName yet")
    commit = env["MAB_GIT_REVISION"].lower()
    labels = {
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.source": env["MAB_GIT_URL"],
        "dev.multiarch.build-uid": env["MAB_BUILD_UID"],
        "dev.multiarch.inputs": env["MAB_INPUT_HASH"],
    }
    digest = push_image(env["MAB_IMAGE"], env["MAB_PLATFORM"], labels)
    append_lines(logs, stream, [f"commit: {commit}", f"digest: {digest}"])
    print(f"played {job['jobName']} ({job_id}): {env['MAB_IMAGE']} {digest}, log {stream}", flush=True)


def main():
    prefix, queues = sys.argv[1], sys.argv[2:]
    parent = int(os.environ.get("MAB_PLAYER_PARENT_PID") or 0)
    aws = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "region_name": os.environ["AWS_REGION"]}
    batch, logs = boto3.client("batch", **aws), boto3.client("logs", **aws)
    played, last_error = set(), None
    print(f"watching {', '.join(queues)} for SUCCEEDED jobs named {prefix}*", flush=True)
    while True:
        if parent:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                return
        try:
            for queue in queues:
                for page in batch.get_paginator("list_jobs").paginate(jobQueue=queue, jobStatus="SUCCEEDED"):
                    for job in page["jobSummaryList"]:
                        if job["jobName"].startswith(prefix) and job["jobId"] not in played:
                            play(batch, logs, job["jobId"])
                            played.add(job["jobId"])
        except Exception as err:  # noqa: BLE001 - report, then try again at the next poll
            if repr(err) != last_error:
                print(f"error (retrying): {err!r}", flush=True)
            last_error = repr(err)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
