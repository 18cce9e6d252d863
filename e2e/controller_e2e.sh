#!/usr/bin/env bash
# e2e/controller_e2e.sh - `make e2e`: the controller against the real cluster named by KUBECONFIG,
# with the local AWS stack (e2e/local-stack: moto's Batch running real containers on the Docker
# engine, a real registry). Without KUBECONFIG it says why it skips and exits 0.
#
#   KUBECONFIG=~/.kube/kind-config make e2e
#
# What it does, in a namespace of its own (deleted at the end):
#  1. brings the local stack up; registers two Batch job definitions that only sleep (5 s and 40 s)
#     for the cluster builds' jobs, and starts e2e/play_builder.py in the background. Why: the
#     builds' git URL (https://github.com/example/...) cannot be cloned here and a cluster refuses
#     file:// URLs, so no job runs builder/build.sh; the player stands in for it: for each SUCCEEDED
#     job of the namespace it pushes a labelled per-platform image and appends the `commit:` and
#     `digest:` lines to the job's log: what the controller checks before it assembles the index
#  2. installs the CRD and runs the controller on this machine, for that namespace only, with its
#     own Lease there
#  3. applies a MultiArchBuild and the Nextflow head Job sample (suspended), then
#     `kubectl wait --for=condition=Ready`; checks status.image resolves in the registry to the
#     recorded digest, the Job was released and the <build>-image ConfigMap carries the image
#  4. applies a second build whose jobs run 40 s, kills the controller (SIGKILL) once both job ids
#     are recorded, starts it again, waits for Ready, and checks Batch has exactly one job per
#     platform
#  5. deletes a build (the finalizer lets it go) and everything it made
set -euo pipefail

if [ -z "${KUBECONFIG:-}" ]; then
    echo "SKIPPED: make e2e needs a real Kubernetes cluster: set KUBECONFIG (kind, k3d, minikube, EKS...)"
    exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf 'e2e: %s\n' "$*"; }
die() {
    printf 'e2e: FAILED: %s\n' "$*" >&2
    exit 1
}

# kubectl 1.35 from scripts/install-tools.sh; any kubectl on PATH otherwise.
if tools=$(scripts/install-tools.sh 2>/dev/null | tail -n 1) && [ -x "$tools/kubectl" ]; then
    KUBECTL=$tools/kubectl
else
    KUBECTL=$(command -v kubectl) || die "no kubectl: run scripts/install-tools.sh"
fi
kc() { "$KUBECTL" "$@"; }
kc version --request-timeout=10s >/dev/null || die "the cluster of KUBECONFIG=$KUBECONFIG does not answer"
command -v skopeo >/dev/null || die "skopeo is missing: apt-get install -y skopeo"

e2e/local-stack up
eval "$(e2e/local-stack env)"
PY=python3
[ -x "$MAB_STACK_DIR/venv/bin/python" ] && PY=$MAB_STACK_DIR/venv/bin/python

bin=$(scripts/operator-bin.sh) || die "cannot build the operator"

work=$(mktemp -d)
ns="mab-e2e-$(date +%s)"
tag="e2e-$(date +%Y%m%d-%H%M%S)"
repository="$MAB_REGISTRY/e2e/hello"
port=$((20000 + RANDOM % 20000))
log=$work/controller.log
controller_pid=
player_pid=

start_controller() {
    "$bin" controller \
        --namespaces "$ns" \
        --lease-namespace "$ns" \
        --lease-name multiarch-operator-e2e \
        --http-addr "127.0.0.1:$port" \
        --poll-interval-seconds 1 \
        --cleanup-grace-seconds 60 \
        --default-job-definition mab-e2e-sleep-5 \
        --registry-plain-http "$MAB_REGISTRY" --registry-allow-loopback >>"$log" 2>&1 &
    controller_pid=$!
    local i
    for i in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            say "controller up (pid $controller_pid, log $log)"
            return
        fi
        kill -0 "$controller_pid" 2>/dev/null || die "the controller exited: $(tail -n 5 "$log")"
        sleep 0.2
    done
    die "the controller is not ready after 20 s: $(tail -n 5 "$log")"
}

# For each NAME: exactly one Batch job of that name in the two queues, or exit 1.
count_jobs() { # NAME...
    "$PY" - "$MAB_JOB_QUEUE_AMD64" "$MAB_JOB_QUEUE_ARM64" "$@" <<'PY'
import os
import sys

import boto3

batch = boto3.client("batch", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
queues, names = sys.argv[1:3], sys.argv[3:]
if len(names) != 2:
    sys.exit(f"expected 2 job names, got {names}")
for name in names:
    found = [
        j
        for q in queues
        for j in batch.list_jobs(jobQueue=q, filters=[{"name": "JOB_NAME", "values": [name]}])["jobSummaryList"]
        if j["jobName"] == name
    ]
    print(f"e2e: {name}: {len(found)} Batch job(s)")
    if len(found) != 1:
        sys.exit(1)
PY
}

cleanup() {
    set +e
    if [ -n "$controller_pid" ] && kill -0 "$controller_pid" 2>/dev/null; then
        # Builds first, while the controller can still release their finalizers.
        kc delete multiarchbuilds --all -n "$ns" --timeout=60s >/dev/null 2>&1
        kill -TERM "$controller_pid" 2>/dev/null
        wait "$controller_pid" 2>/dev/null
    fi
    [ -n "$player_pid" ] && kill "$player_pid" 2>/dev/null && wait "$player_pid" 2>/dev/null
    kc delete namespace "$ns" --wait=false >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. job definitions, builder player
"$PY" - <<'PY' || die "cannot register the e2e job definitions in moto"
import os
import boto3

batch = boto3.client("batch", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
sleeper = batch.describe_job_definitions(
    jobDefinitionName=os.environ["MAB_SLEEPER_JOB_DEFINITION"], status="ACTIVE"
)["jobDefinitions"]
image = max(sleeper, key=lambda d: d["revision"])["containerProperties"]["image"]
for seconds in (5, 40):
    batch.register_job_definition(
        jobDefinitionName=f"mab-e2e-sleep-{seconds}",
        type="container",
        containerProperties={
            "image": image,
            "command": ["sh", "-c", f"sleep {seconds}"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}],
        },
    )
PY

# The player plays build.sh for this namespace's jobs (see the header); it exits with this script.
MAB_PLAYER_PARENT_PID=$$ "$PY" e2e/play_builder.py "mab-$ns-" "$MAB_JOB_QUEUE_AMD64" "$MAB_JOB_QUEUE_ARM64" \
    >"$work/player.log" 2>&1 &
player_pid=$!
for i in $(seq 1 50); do
    grep -q '^watching' "$work/player.log" && break
    if [ "$i" -eq 50 ] || ! kill -0 "$player_pid" 2>/dev/null; then
        die "the builder player did not start: $(tail -n 3 "$work/player.log")"
    fi
    sleep 0.2
done
say "builder player up (pid $player_pid, log $work/player.log)"

# ------------------------------------------------------------------ 2. CRD, namespace, controller
kc apply -f crds/multiarch.dev_multiarchbuilds.yaml >/dev/null
kc wait --for=condition=Established crd/multiarchbuilds.multiarch.dev --timeout=60s >/dev/null
kc create namespace "$ns" >/dev/null
say "namespace $ns"
start_controller

# A build whose jobs only sleep: the player then pushes each platform's image and writes the job's
# last two log lines, and the controller assembles and pushes the index. The git URL is never
# cloned (the cluster accepts https and ssh only).
apply_build() { # NAME JOB_DEFINITION
    kc apply -f - >/dev/null <<YAML
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchBuild
metadata:
  name: $1
  namespace: $ns
spec:
  source:
    git:
      url: https://github.com/example/multiarch-sample.git
      revision: $MAB_SAMPLE_REVISION
  output:
    repository: $repository
    tag: $tag
    reuseExisting: false
  platforms:
    - platform: linux/amd64
      jobQueue: $MAB_JOB_QUEUE_AMD64
    - platform: linux/arm64
      jobQueue: $MAB_JOB_QUEUE_ARM64
  jobDefinition: $2
  timeoutSeconds: 600
YAML
}

# ------------------------------------------------------------------ 3. build, wait, check, release
apply_build e2e-hello mab-e2e-sleep-5
sed -e "s/namespace: sims/namespace: $ns/" -e 's/vecoli-3f2a9c1/e2e-hello/g' \
    -e '/serviceAccountName:/d' config/samples/nextflow-head-job.yaml | kc apply -f - >/dev/null
say "waiting for mab/e2e-hello to be Ready"
kc wait --for=condition=Ready mab/e2e-hello -n "$ns" --timeout=300s >/dev/null ||
    die "mab/e2e-hello is not Ready: $(kc get mab e2e-hello -n "$ns" -o jsonpath='{.status.message}') (player: $(tail -n 1 "$work/player.log"))"
image=$(kc get mab e2e-hello -n "$ns" -o jsonpath='{.status.image}')
digest=${image#*@}
[[ $image == "$repository@sha256:"* ]] || die "status.image is $image"
actual="sha256:$(skopeo inspect --tls-verify=false --raw "docker://$image" | sha256sum | cut -d' ' -f1)"
[ "$actual" = "$digest" ] || die "$image resolves to bytes hashing to $actual"
say "status.image $image resolves in the registry (sha256 of the index bytes matches)"
suspend=$(kc get job vecoli-sim-3f2a9c1 -n "$ns" -o jsonpath='{.spec.suspend}')
[ "$suspend" = false ] || die "the head Job is still suspended ($suspend)"
cm_image=$(kc get configmap e2e-hello-image -n "$ns" -o jsonpath='{.data.image}')
[ "$cm_image" = "$image" ] || die "ConfigMap e2e-hello-image says $cm_image"
say "the head Job was released; ConfigMap e2e-hello-image pins $cm_image"

# ------------------------------------------------------------------ 4. kill mid-build, restart
apply_build e2e-restart mab-e2e-sleep-40
say "waiting for both job ids of mab/e2e-restart, then killing the controller"
for i in $(seq 1 150); do
    ids=$(kc get mab e2e-restart -n "$ns" -o jsonpath='{.status.platforms[*].jobId}')
    [ "$(wc -w <<<"$ids")" -eq 2 ] && break
    [ "$i" -lt 150 ] || die "no job ids recorded after 30 s"
    sleep 0.2
done
phase=$(kc get mab e2e-restart -n "$ns" -o jsonpath='{.status.phase}')
[ "$phase" = Building ] || die "expected Building when killing, got $phase"
kill -KILL "$controller_pid"
wait "$controller_pid" 2>/dev/null || true
say "killed the controller mid-build (jobs $ids); starting it again"
start_controller
kc wait --for=condition=Ready mab/e2e-restart -n "$ns" --timeout=300s >/dev/null ||
    die "mab/e2e-restart is not Ready after the restart: $(kc get mab e2e-restart -n "$ns" -o jsonpath='{.status.message}') (player: $(tail -n 1 "$work/player.log"))"
read -ra names <<<"$(kc get mab e2e-restart -n "$ns" -o jsonpath='{range .status.platforms[*]}{.jobName}{" "}{end}')"
count_jobs "${names[@]}" || die "a platform has no Batch job, or more than one"

# ------------------------------------------------------------------ 5. deletion
kc delete mab e2e-hello -n "$ns" --timeout=60s >/dev/null || die "deleting mab/e2e-hello did not finish"
say "mab/e2e-hello deleted (finalizer released)"
say "OK"
