#!/usr/bin/env bash
# make demo: a real two-platform build end to end on the local stack.
# Brings the stack up (Docker engine, registry, moto's Batch), builds the sample repository for
# linux/amd64 and linux/arm64 as two Batch jobs, assembles the index, then proves what it pushed.
set -euo pipefail
cd "$(dirname "$0")/.."

e2e/local-stack up
eval "$(e2e/local-stack env)"
echo "demo: compiling multiarch-operator (cargo build; the first time takes a few minutes on 2 cores, then seconds)"
build_start=$SECONDS
bin=$(scripts/operator-bin.sh)
echo "demo: compiled in $((SECONDS - build_start)) s: $bin"
echo "demo: linux/arm64 is built on this amd64 machine without emulation: the sample's Dockerfile has"
echo "      only FROM scratch and COPY (no RUN), so nothing executes for arm64; on AWS each platform"
echo "      runs on its own architecture's compute environment"

tag="demo-$(date +%Y%m%d-%H%M%S)"
file="$MAB_STACK_DIR/demo.yaml"
cat >"$file" <<YAML
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchBuild
metadata:
  name: demo
spec:
  source:
    git:
      url: $MAB_SAMPLE_GIT_URL
      revision: $MAB_SAMPLE_REVISION
  output:
    repository: $MAB_REGISTRY/demo/hello
    tag: $tag
  platforms:
    - platform: linux/amd64
      jobQueue: $MAB_JOB_QUEUE_AMD64
    - platform: linux/arm64
      jobQueue: $MAB_JOB_QUEUE_ARM64
  jobDefinition: $MAB_JOB_DEFINITION
YAML
echo "demo: building $MAB_REGISTRY/demo/hello:$tag from $file"
echo "demo: signing the index and its SLSA provenance with $MAB_LOCAL_SIGNING_KEY (moto's KMS)"
registry_flags=(--registry-plain-http "$MAB_REGISTRY" --registry-allow-loopback)
image=$("$bin" build -f "$file" --wait --allow-local-git "${registry_flags[@]}" --poll-interval-seconds 1 \
    --signing-key "$MAB_LOCAL_SIGNING_KEY")
digest=${image#*@}
echo
echo "demo: index digest $digest"
echo "demo: skopeo inspect --raw docker://$MAB_REGISTRY/demo/hello:$tag"
raw="$MAB_STACK_DIR/demo-index.json"
skopeo inspect --tls-verify=false --raw "docker://$MAB_REGISTRY/demo/hello:$tag" >"$raw"
python3 -m json.tool "$raw"

actual="sha256:$(sha256sum "$raw" | cut -d' ' -f1)"
[[ $actual == "$digest" ]] || { echo "demo: FAILED: the index bytes hash to $actual, not $digest" >&2; exit 1; }
echo "demo: sha256 of the index bytes = $actual (matches)"
python3 - "$raw" <<'PY' | while read -r child arch; do
import json, sys
for m in json.load(open(sys.argv[1]))["manifests"]:
    print(m["digest"], m["platform"]["architecture"])
PY
    config_arch=$(skopeo inspect --tls-verify=false --config "docker://$MAB_REGISTRY/demo/hello@$child" |
        python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["os"] + "/" + c["architecture"])')
    [[ $config_arch == "linux/$arch" ]] || { echo "demo: FAILED: $child is $config_arch, listed as linux/$arch" >&2; exit 1; }
    echo "demo: $child: config says $config_arch (matches its index entry)"
done
echo
signature_tag="sha256-${digest#sha256:}.sig"
echo "demo: the signature, where cosign looks: skopeo inspect --raw docker://$MAB_REGISTRY/demo/hello:$signature_tag"
skopeo inspect --tls-verify=false --raw "docker://$MAB_REGISTRY/demo/hello:$signature_tag" | python3 -m json.tool
echo "demo: $bin verify $image --key $MAB_LOCAL_SIGNING_KEY --commit $MAB_SAMPLE_REVISION"
"$bin" verify "$image" --key "$MAB_LOCAL_SIGNING_KEY" --commit "$MAB_SAMPLE_REVISION" "${registry_flags[@]}"
echo
echo "demo: OK: pin $image"
echo "demo: the stack keeps running for the next demo or test; stop it with: e2e/local-stack down (--purge deletes its state in $MAB_STACK_DIR)"
