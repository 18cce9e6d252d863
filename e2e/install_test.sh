#!/usr/bin/env bash
# install_test.sh - the install/operate checks: Helm chart, kustomize config, RBAC, admission
# policies, AWS template.
#
#   e2e/install_test.sh            # installs its tools first (scripts/install-tools.sh)
#
# No cluster and no AWS account needed: everything is rendered and compared offline, with
# helm 4 and kubectl 1.35 from the npm package (never /usr/bin/kubectl) and cfn-lint from PyPI.
# Prints one line per check and "N passed, M failed" at the end; exits non-zero on any failure.
# Every comparison also checks it found what it compares, so no check passes on empty input.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

bin=$(scripts/install-tools.sh | tail -n 1) || { echo "install_test: scripts/install-tools.sh failed" >&2; exit 1; }
HELM=$bin/helm
KUBECTL=$bin/kubectl
CFN_LINT=$bin/cfn-lint
PY=$bin/python3
CHECK=(env PYTHONDONTWRITEBYTECODE=1 "$PY" "$repo/e2e/install_check.py")

CHART=charts/multiarch-operator
CRD=crds/multiarch.dev_multiarchbuilds.yaml
POLICY_CRD=crds/multiarch.dev_multiarchbuildpolicies.yaml
RELEASE=multiarch-operator
NS=multiarch-system
ALL_VALUES=$CHART/ci/all-values.yaml
ALL_NS=ops # release namespace of the all-options render

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# helm must not read the developer's kubeconfig or repositories.
export KUBECONFIG=$tmp/no-kubeconfig HELM_CONFIG_HOME=$tmp/helm-config HELM_CACHE_HOME=$tmp/helm-cache HELM_DATA_HOME=$tmp/helm-data

passed=0
failed=0
# check NAME CMD...: run CMD; its output is shown only when it fails (and its `ok:` line when it passes).
check() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        local ok
        ok=$(printf '%s\n' "$out" | grep -m1 '^ok: ' | cut -c5-)
        printf 'PASS  %s%s\n' "$name" "${ok:+  ($ok)}"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /' | head -n 60
    fi
}

# ---------------------------------------------------------------- tools
tools_are_the_pinned_ones() {
    # Capture first: `cmd | grep -q` under pipefail fails when grep exits before cmd writes.
    local helm_v kubectl_v cfn_v
    helm_v=$("$HELM" version --short) && kubectl_v=$("$KUBECTL" version --client) && cfn_v=$("$CFN_LINT" --version) || return 1
    [[ $helm_v == v4.* ]] || { echo "helm is not v4: $helm_v"; return 1; }
    [[ $kubectl_v == *"Client Version: v1.35."* ]] || { echo "kubectl is not 1.35: $kubectl_v"; return 1; }
    [ "$KUBECTL" != /usr/bin/kubectl ] || { echo "using /usr/bin/kubectl"; return 1; }
    kubectl_v=${kubectl_v%%$'\n'*}
    echo "ok: helm ${helm_v%%+*}, kubectl ${kubectl_v#Client Version: }, $cfn_v"
}
check "tools: helm 4 and kubectl 1.35 from the npm package, cfn-lint from PyPI" tools_are_the_pinned_ones

# ---------------------------------------------------------------- chart: lint and render
check "helm lint (default values)" "$HELM" lint --strict "$CHART"
check "helm lint (every option: ci/all-values.yaml)" "$HELM" lint --strict "$CHART" -f "$ALL_VALUES" --namespace "$ALL_NS"

render_default() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --include-crds >"$tmp/chart-default.yaml" &&
        [ "$(grep -c '^kind:' "$tmp/chart-default.yaml")" -ge 9 ]
}
check "helm template (default values)" render_default

render_all() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$ALL_NS" -f "$ALL_VALUES" >"$tmp/chart-all.yaml" &&
        "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" \
            --set serviceAccount.create=false --set serviceAccount.name=existing-sa \
            --set podDisruptionBudget.enabled=false >"$tmp/chart-off.yaml" &&
        [ "$(grep -c '^kind:' "$tmp/chart-all.yaml")" -ge 10 ]
}
check "helm template (every option, and the switches off)" render_all
check "every documented option is set in ci/all-values.yaml and shows in the render" \
    "${CHECK[@]}" options "$CHART/values.yaml" "$ALL_VALUES" "$tmp/chart-all.yaml" "$tmp/chart-off.yaml" "$ALL_NS"

prometheus_rule_only_when_enabled() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --set metrics.prometheusRule.enabled=true >"$tmp/chart-rule.yaml" &&
        "${CHECK[@]}" prometheus-rule "$tmp/chart-rule.yaml" "$tmp/chart-default.yaml" "$NS"
}
check "metrics.prometheusRule.enabled renders the PrometheusRule with its two alerts; off by default" prometheus_rule_only_when_enabled

# ---------------------------------------------------------------- chart: the schema refuses bad values
bad_values_are_refused() {
    local f expect out n=0 rc=0
    for f in e2e/values-bad/*.yaml; do
        n=$((n + 1))
        expect=$(sed -n 's/^# expect: //p' "$f")
        if [ -z "$expect" ]; then
            echo "$f: no '# expect:' line"
            rc=1
            continue
        fi
        if out=$("$HELM" template "$RELEASE" "$CHART" -f "$f" 2>&1); then
            echo "$f: accepted, but should fail with: $expect"
            rc=1
        elif [[ $out != *"$expect"* ]]; then
            echo "$f: refused, but without the message: $expect"
            printf '%s\n' "$out" | sed 's/^/    /' | head -n 5
            rc=1
        fi
    done
    [ "$n" -ge 10 ] || { echo "only $n bad values files"; rc=1; }
    [ "$rc" -eq 0 ] && echo "ok: $n bad values files each refused with their own message"
    return "$rc"
}
check "values.schema.json refuses wrong types and bad values with clear messages (e2e/values-bad/)" bad_values_are_refused

# ---------------------------------------------------------------- chart: content
check "Deployment hardened: non-root, read-only root, drop ALL, no escalation, seccomp, resources, probes" \
    "${CHECK[@]}" hardened "$tmp/chart-default.yaml"
check "Deployment hardened with every option set" "${CHECK[@]}" hardened "$tmp/chart-all.yaml"
check "every MAB_* variable the chart sets is a flag of src/cli.rs" \
    "${CHECK[@]}" env-in-cli "$tmp/chart-all.yaml" src/cli.rs "$ALL_VALUES"

signing_renders() {
    local kms=awskms:///alias/multiarch-operator-signing file=file:///etc/multiarch-operator/signing/cosign.key
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --set signing.key="$kms" >"$tmp/chart-signing-kms.yaml" &&
        "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --set signing.key="$file" \
            --set signing.secretName=controller-signing-key >"$tmp/chart-signing-file.yaml" &&
        "${CHECK[@]}" signing "$tmp/chart-default.yaml" "$tmp/chart-signing-kms.yaml" "$tmp/chart-signing-file.yaml" \
            "$kms" "$file" controller-signing-key
}
check "signing: unset -> no MAB_SIGNING_KEY, no mount; awskms -> the variable; file + Secret -> the variable and a read-only mount" signing_renders

notes() {
    "$HELM" install "$RELEASE" "$CHART" --namespace "$NS" --dry-run=client >"$tmp/notes.txt" 2>&1 &&
        "${CHECK[@]}" notes "$tmp/notes.txt" && [ -f config/samples/vecoli.yaml ]
}
check "NOTES.txt: apply config/samples/vecoli.yaml, kubectl get mab -w, kubectl wait --for=condition=Ready; how to lock down" notes

# ---------------------------------------------------------------- chart docs: admission policies for signed images
check "docs: the Kyverno and policy-controller policies admit only images signed by the controller with its SLSA provenance v1" \
    "${CHECK[@]}" signing-policies "$CHART/docs/kyverno-verify-images.yaml" "$CHART/docs/policy-controller-image-policy.yaml" src

# ---------------------------------------------------------------- the CRDs: one set of bytes each
crd_copies_identical() {
    local crd c name rc=0 bytes=0
    for crd in "$CRD" "$POLICY_CRD"; do
        [ -s "$crd" ] || { echo "$crd missing or empty"; rc=1; continue; }
        bytes=$((bytes + $(wc -c <"$crd")))
        for c in "$CHART/crds/${crd#crds/}" "config/crd/${crd#crds/}"; do
            cmp "$crd" "$c" || { echo "$c differs from $crd: run make crds (it copies the CRDs to the chart and config/crd)"; rc=1; }
        done
        name=$(sed -n 's/^  name: //p' "$crd" | head -n 1)
        grep -q "^  name: $name\$" "$tmp/chart-default.yaml" || { echo "helm --include-crds did not render $name"; rc=1; }
    done
    local in_chart=("$CHART"/crds/*)
    [ "${in_chart[*]}" = "$CHART/crds/multiarch.dev_multiarchbuildpolicies.yaml $CHART/crds/multiarch.dev_multiarchbuilds.yaml" ] ||
        { echo "$CHART/crds holds other files than the two CRDs: ${in_chart[*]}"; rc=1; }
    [ "$rc" -eq 0 ] && echo "ok: 2 CRDs, $bytes bytes, identical in crds/, the chart and config/crd"
    return "$rc"
}
check "the chart's CRDs and config/crd's are byte-identical to crds/ (MultiArchBuild, MultiArchBuildPolicy)" crd_copies_identical

# ---------------------------------------------------------------- kustomize
kustomize_renders() {
    "$KUBECTL" kustomize config/default >"$tmp/kustomize.yaml" &&
        grep -q '^kind: Deployment$' "$tmp/kustomize.yaml" &&
        grep -q '^kind: CustomResourceDefinition$' "$tmp/kustomize.yaml" &&
        grep -q '^kind: ValidatingAdmissionPolicy$' "$tmp/kustomize.yaml"
}
check "kubectl kustomize config/default renders (offline)" kustomize_renders
check "kustomize renders the same objects as the chart with default values" \
    "${CHECK[@]}" same-objects "$tmp/chart-default.yaml" "$tmp/kustomize.yaml"

# ---------------------------------------------------------------- multi-tenancy: policy CRD and admission policies
check "admission policies: the policy CRD, both ValidatingAdmissionPolicies and bindings render alike from the chart and kustomize" \
    "${CHECK[@]}" admission "$tmp/chart-default.yaml" "$tmp/kustomize.yaml"
admission_policies_follow_the_release() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$ALL_NS" -f "$ALL_VALUES" --include-crds \
        --set admissionPolicies.enabled=true >"$tmp/chart-all-admission.yaml" &&
        "${CHECK[@]}" admission "$tmp/chart-all-admission.yaml" &&
        grep -q '^  name: mab-controller-least-authority$' "$tmp/chart-all-admission.yaml" &&
        grep -q "endsWith(':mab-controller-sa')" "$tmp/chart-all-admission.yaml"
}
check "admission policies follow fullnameOverride and serviceAccount.name (ci/all-values.yaml)" admission_policies_follow_the_release
check "versions agree: Cargo.toml, Chart.yaml appVersion, kustomize image and labels" \
    "${CHECK[@]}" versions Cargo.toml "$CHART/Chart.yaml" "$tmp/kustomize.yaml"
samples_render() {
    "$KUBECTL" kustomize config/samples >"$tmp/samples.yaml" 2>/dev/null ||
        cp config/samples/vecoli.yaml "$tmp/samples.yaml"
    grep -q '^kind: MultiArchBuild$' "$tmp/samples.yaml"
}
check "config/samples holds a MultiArchBuild" samples_render

# ---------------------------------------------------------------- RBAC = the controller's API calls
check "RBAC (chart, all namespaces) equals config/rbac/expected-rules.yaml" \
    "${CHECK[@]}" rbac "$tmp/chart-default.yaml" config/rbac/expected-rules.yaml "$NS"
check "RBAC (chart, controller.namespaces: sims, ci-builds) equals expected-rules.yaml; Lease Role only in the release namespace" \
    "${CHECK[@]}" rbac "$tmp/chart-all.yaml" config/rbac/expected-rules.yaml "$ALL_NS" sims ci-builds
check "RBAC (kustomize config/default) equals expected-rules.yaml" \
    "${CHECK[@]}" rbac "$tmp/kustomize.yaml" config/rbac/expected-rules.yaml "$NS"
check "every RBAC rule is commented with why (chart templates, config/rbac)" \
    "${CHECK[@]}" rule-comments "$CHART/templates/_helpers.tpl" config/rbac/role.yaml config/rbac/leader_election_role.yaml \
    config/rbac/policy_reader_role.yaml

# ---------------------------------------------------------------- AWS template
cfn_lint_clean() {
    local files=(config/aws/*.yaml)
    [ -f "${files[0]}" ] || { echo "no template in config/aws"; return 1; }
    "$CFN_LINT" --regions us-east-1 us-gov-west-1 -- "${files[@]}" || return 1
    echo "ok: ${#files[@]} template(s) lint clean for us-east-1 and us-gov-west-1"
}
check "cfn-lint config/aws/*.yaml: no error, no warning" cfn_lint_clean
check "the controller IAM policy grants exactly config/aws/controller-actions.txt; kms:Sign/GetPublicKey only on the signing key, only with one" \
    "${CHECK[@]}" iam config/aws/multiarch-batch.yaml config/aws/controller-actions.txt
check "AWS template: EC2 per-arch compute, queues, DooD job definition, partition-aware, chart defaults" \
    "${CHECK[@]}" cfn-shape config/aws/multiarch-batch.yaml "$CHART/values.yaml"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
