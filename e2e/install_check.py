#!/usr/bin/env python3
"""Structured checks for e2e/install_test.sh: rendered manifests, RBAC, IAM.

Each subcommand exits 0 and prints one `ok: ...` line that says how much it looked at (so a
check that found nothing to compare cannot pass), or exits 1 and prints every problem.

  install_check.py same-objects CHART_RENDER KUSTOMIZE_RENDER
  install_check.py admission RENDER [OTHER_RENDER]
  install_check.py rbac RENDER EXPECTED_RULES RELEASE_NS [WATCHED_NS ...]
  install_check.py rule-comments FILE...
  install_check.py hardened RENDER
  install_check.py options VALUES ALL_VALUES ALL_RENDER OFF_RENDER RELEASE_NS
  install_check.py env-in-cli RENDER CLI_RS [EXTRA_ENV_VALUES]
  install_check.py signing DEFAULT_RENDER KMS_RENDER FILE_RENDER KMS_KEY FILE_KEY SECRET_NAME
  install_check.py versions CARGO_TOML CHART_YAML KUSTOMIZE_RENDER
  install_check.py iam TEMPLATE ACTIONS_FILE   (and the signing key's KMS statement, per parameter set)
  install_check.py cfn-shape TEMPLATE VALUES
  install_check.py notes NOTES_OUTPUT
  install_check.py prometheus-rule ON_RENDER OFF_RENDER RELEASE_NS
  install_check.py signing-policies KYVERNO_POLICY POLICY_CONTROLLER_POLICY SRC_DIR

Needs PyYAML (scripts/install-tools.sh puts it in the tools' virtualenv).
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

problems = []


def bad(msg):
    problems.append(msg)


def finish(summary):
    if problems:
        for p in problems:
            print(f"  - {p}")
        sys.exit(1)
    print(f"ok: {summary}")
    sys.exit(0)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def key(obj):
    md = obj.get("metadata", {})
    return (obj.get("kind"), md.get("namespace", ""), md.get("name"))


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def one(objs, kind):
    found = by_kind(objs, kind)
    if len(found) != 1:
        bad(f"expected exactly one {kind}, found {len(found)}")
        return {}
    return found[0]


# Labels that only Helm sets; everything else must match between the chart and kustomize.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}


def normalise(obj):
    obj = copy.deepcopy(obj)
    labels = obj.get("metadata", {}).get("labels")
    if labels is not None:
        for k in HELM_ONLY_LABELS:
            labels.pop(k, None)
    return obj


def diff(a, b, path=""):
    """Human-readable differences between two YAML values."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}"
            if k not in a:
                out.append(f"{p}: only in kustomize ({json.dumps(b[k])[:80]})")
            elif k not in b:
                out.append(f"{p}: only in the chart ({json.dumps(a[k])[:80]})")
            else:
                out += diff(a[k], b[k], p)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, f"{path}[{i}]")
    elif isinstance(a, list) and isinstance(b, list):
        out.append(f"{path}: {len(a)} items in the chart, {len(b)} in kustomize")
        for x in a:
            if x not in b:
                out.append(f"{path}: only in the chart: {json.dumps(x)[:160]}")
        for y in b:
            if y not in a:
                out.append(f"{path}: only in kustomize: {json.dumps(y)[:160]}")
    elif a != b:
        out.append(f"{path}: chart {json.dumps(a)[:80]} != kustomize {json.dumps(b)[:80]}")
    return out


def cmd_same_objects(chart_path, kust_path):
    chart = {key(o): normalise(o) for o in load_all(chart_path)}
    kust = {key(o): normalise(o) for o in load_all(kust_path)}
    namespaces = [k for k in kust if k[0] == "Namespace"]
    if len(namespaces) != 1:
        bad(f"kustomize should create exactly one Namespace, found {namespaces}")
    for k in namespaces:
        del kust[k]
    wanted_kinds = {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }
    kinds = {k[0] for k in chart}
    if kinds != wanted_kinds:
        bad(f"the chart's default render has kinds {sorted(kinds)}, expected {sorted(wanted_kinds)}")
    for k in sorted(set(chart) | set(kust), key=str):
        if k not in kust:
            bad(f"{k} is rendered by the chart but not by kustomize")
        elif k not in chart:
            bad(f"{k} is rendered by kustomize but not by the chart")
        else:
            for d in diff(chart[k], kust[k]):
                bad(f"{k[0]}/{k[2]} {d}")
    finish(f"{len(chart)} objects identical in the chart and kustomize ({', '.join(sorted(kinds))})")


POLICY_CRD = "multiarchbuildpolicies.multiarch.dev"


def cmd_admission(render, other=None):
    """The multi-tenancy objects: the MultiArchBuildPolicy CRD, the two ValidatingAdmissionPolicies
    and their bindings, wired to each other and to the controller's ServiceAccount; with two
    renders (the chart's and kustomize's), they must be the same objects."""
    renders = [render] + ([other] if other else [])
    found = []
    for path in renders:
        objs = load_all(path)
        crd = next((o for o in by_kind(objs, "CustomResourceDefinition") if o["metadata"]["name"] == POLICY_CRD), None)
        dep = one(objs, "Deployment")
        sa = dep.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
        vaps = {o["metadata"]["name"]: o for o in by_kind(objs, "ValidatingAdmissionPolicy")}
        bindings = {o["spec"]["policyName"]: o for o in by_kind(objs, "ValidatingAdmissionPolicyBinding")}
        build = next((v for n, v in vaps.items() if n.endswith("-build-policy")), None)
        least = next((v for n, v in vaps.items() if n.endswith("-least-authority")), None)
        if len(vaps) != 2 or not build or not least:
            bad(f"{path}: expected the ValidatingAdmissionPolicies *-build-policy and *-least-authority, found {sorted(vaps)}")
            continue
        if set(bindings) != set(vaps):
            bad(f"{path}: bindings {sorted(bindings)} do not bind exactly the policies {sorted(vaps)}")
            continue
        for o in list(vaps.values()) + list(bindings.values()):
            if o.get("apiVersion") != "admissionregistration.k8s.io/v1":
                bad(f"{path}: {o['kind']}/{o['metadata']['name']} is {o.get('apiVersion')}, expected admissionregistration.k8s.io/v1 (GA)")
            if o["metadata"].get("namespace"):
                bad(f"{path}: {o['kind']}/{o['metadata']['name']} is cluster-scoped but has namespace {o['metadata']['namespace']}")
            if o["kind"] == "ValidatingAdmissionPolicy" and o["spec"].get("failurePolicy") != "Fail":
                bad(f"{path}: {o['metadata']['name']} should fail closed (failurePolicy: Fail)")
            if o["kind"] == "ValidatingAdmissionPolicyBinding" and o["spec"].get("validationActions") != ["Deny"]:
                bad(f"{path}: binding {o['metadata']['name']} should Deny")
        if crd is None:
            bad(f"{path}: no CustomResourceDefinition {POLICY_CRD}")
        else:
            if crd["spec"].get("scope") != "Cluster":
                bad(f"{path}: {POLICY_CRD} should be cluster-scoped")
            want = {"apiVersion": f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}", "kind": crd["spec"]["names"]["kind"]}
            if build["spec"].get("paramKind") != want:
                bad(f"{path}: build policy paramKind {build['spec'].get('paramKind')} != the CRD's {want}")
        rules = build["spec"].get("matchConstraints", {}).get("resourceRules", [])
        if not any("multiarchbuilds" in r.get("resources", []) and "CREATE" in r.get("operations", []) for r in rules):
            bad(f"{path}: the build policy does not match MultiArchBuild CREATE")
        if bindings[build["metadata"]["name"]]["spec"].get("paramRef") != {"selector": {}, "parameterNotFoundAction": "Allow"}:
            bad(f"{path}: the build policy binding should take every policy as a param and allow when there is none")
        conditions = " ".join(c.get("expression", "") for c in least["spec"].get("matchConditions", []))
        if not sa or f"endsWith(':{sa}')" not in conditions or "startsWith('system:serviceaccount:')" not in conditions:
            bad(f"{path}: the least-authority policy does not match the controller's ServiceAccount {sa!r}: {conditions}")
        kinds = {r for rule in least["spec"].get("matchConstraints", {}).get("resourceRules", []) for r in rule.get("resources", [])}
        if kinds != {"configmaps", "jobs"}:
            bad(f"{path}: the least-authority policy should cover configmaps and jobs, covers {sorted(kinds)}")
        found.append({key(o): normalise(o) for o in [crd or {}] + list(vaps.values()) + list(bindings.values())})
    if other and len(found) == 2:
        a, b = found
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                bad(f"{k} is rendered by {render} but not by {other}")
            elif k not in a:
                bad(f"{k} is rendered by {other} but not by {render}")
            else:
                for d in diff(a[k], b[k]):
                    bad(f"{k[0]}/{k[2]} {d}")
    n = len(found[0]) if found else 0
    finish(f"the policy CRD, 2 ValidatingAdmissionPolicies and their bindings ({n} objects) wired to each other and the ServiceAccount"
           + (", identical in both renders" if other else ""))


def expand(rule):
    """(apiGroup, resource, verb) tuples a PolicyRule grants; flags what must never appear."""
    for field in ("resourceNames", "nonResourceURLs"):
        if rule.get(field):
            bad(f"unexpected {field} in rule {rule}")
    out = set()
    for g in rule.get("apiGroups", []):
        for r in rule.get("resources", []):
            for v in rule.get("verbs", []):
                if "*" in (g, r, v):
                    bad(f"wildcard in rule {rule}")
                if r == "secrets" or r.startswith("secrets/"):
                    bad(f"a rule grants {v} on Secrets: {rule}")
                out.add((g, r, v))
    return out


def cmd_rbac(render, expected_path, release_ns, *watched):
    objs = load_all(render)
    expected = load(expected_path)["rules"]
    dep = one(objs, "Deployment")
    sa_name = dep.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
    dep_ns = dep.get("metadata", {}).get("namespace")
    if not sa_name:
        bad("the Deployment names no serviceAccountName")
    if dep_ns != release_ns:
        bad(f"the Deployment is in namespace {dep_ns!r}, expected {release_ns!r}")
    sa = ("ServiceAccount", release_ns, sa_name)

    roles = {("ClusterRole", "", o["metadata"]["name"]): o for o in by_kind(objs, "ClusterRole")}
    roles.update({("Role", o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in by_kind(objs, "Role")})
    bound = set()
    granted = set()  # (scope, group, resource, verb); scope "cluster" or a namespace
    for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        bns = b["metadata"].get("namespace", "")
        ref = b["roleRef"]
        rkey = (ref["kind"], "" if ref["kind"] == "ClusterRole" else bns, ref["name"])
        subjects = {(s.get("kind"), s.get("namespace", ""), s.get("name")) for s in b.get("subjects", [])}
        if subjects != {sa}:
            bad(f"{b['kind']}/{b['metadata']['name']} binds {sorted(subjects)}, expected only the controller's {sa}")
        if rkey not in roles:
            bad(f"{b['kind']}/{b['metadata']['name']} refers to {rkey}, which the render does not define")
            continue
        bound.add(rkey)
        scope = "cluster" if b["kind"] == "ClusterRoleBinding" else bns
        for rule in roles[rkey].get("rules", []):
            for t in expand(rule):
                granted.add((scope,) + t)
    for rkey in roles:
        if rkey not in bound:
            bad(f"{rkey} is defined but bound to nothing")

    want = set()
    for e in expected:
        if e["scope"] == "watched":
            scopes = list(watched) if watched else ["cluster"]
        elif e["scope"] == "release-namespace":
            scopes = [release_ns]
        elif e["scope"] == "cluster":
            scopes = ["cluster"]
        else:
            bad(f"unknown scope {e['scope']!r} in {expected_path}")
            continue
        for s in scopes:
            for v in e["verbs"]:
                want.add((s, e["apiGroup"], e["resource"], v))
        if "secrets" in e["resource"]:
            bad(f"{expected_path} lists Secrets")
    if len(want) < 10:
        bad(f"{expected_path} yields only {len(want)} permissions: is it the right file?")
    for t in sorted(want - granted):
        bad(f"missing: {t[3]} on {t[1] or 'core'}/{t[2]} in {t[0]}")
    for t in sorted(granted - want):
        bad(f"not used by the controller: {t[3]} on {t[1] or 'core'}/{t[2]} in {t[0]}")
    mode = f"namespaces {', '.join(watched)}" if watched else "all namespaces"
    finish(f"{len(granted)} granted permissions equal the expected ones ({mode}; {len(roles)} roles, all bound to {sa_name})")


def cmd_rule_comments(*files):
    n = 0
    for path in files:
        with open(path) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^\s*- apiGroups:", line):
                n += 1
                prev = lines[i - 1].strip() if i else ""
                if not prev.startswith("#"):
                    bad(f"{path}:{i + 1}: RBAC rule without a comment saying why")
    if n == 0:
        bad("found no RBAC rules to check")
    finish(f"{n} RBAC rules in {len(files)} files each have a comment")


def container(dep):
    cs = dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    if len(cs) != 1:
        bad(f"expected one container, found {len(cs)}")
        return {}
    return cs[0]


def cmd_hardened(render):
    objs = load_all(render)
    dep = one(objs, "Deployment")
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    c = container(dep)
    psc = pod.get("securityContext", {})
    sc = c.get("securityContext", {})
    checks = {
        "pod runAsNonRoot": psc.get("runAsNonRoot") is True,
        "pod seccompProfile RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "pod runAsUser non-zero": isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0,
        "container runAsNonRoot": sc.get("runAsNonRoot") is True,
        "container readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "container allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "container drops ALL capabilities": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "container adds no capability": not sc.get("capabilities", {}).get("add"),
        "container not privileged": not sc.get("privileged"),
        "container seccompProfile RuntimeDefault": sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "resources requests cpu and memory": {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})),
        "resources memory limit": "memory" in c.get("resources", {}).get("limits", {}),
        "liveness probe GET /healthz on the http port": c.get("livenessProbe", {}).get("httpGet", {}) == {"path": "/healthz", "port": "http"},
        "readiness probe GET /readyz on the http port": c.get("readinessProbe", {}).get("httpGet", {}) == {"path": "/readyz", "port": "http"},
        "named port http (metrics)": any(p.get("name") == "http" for p in c.get("ports", [])),
        "image pinned to a tag (not latest)": re.search(r":[^/]+$", c.get("image", "")) is not None and not c.get("image", "").endswith(":latest"),
        "no hostNetwork/hostPID/hostIPC": not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")),
        "no hostPath volume": not any("hostPath" in v for v in pod.get("volumes", [])),
        "args run the controller": c.get("args") == ["controller"],
        "more than one replica (leader election)": dep.get("spec", {}).get("replicas", 0) >= 2,
    }
    for name, ok in checks.items():
        if not ok:
            bad(f"not hardened: {name}")
    svc = one(objs, "Service")
    if not any(p.get("name") == "http-metrics" and p.get("targetPort") == "http" for p in svc.get("spec", {}).get("ports", [])):
        bad("the Service does not expose the metrics port")
    finish(f"{len(checks)} hardening checks pass on the Deployment")


def leaf_paths(values, prefix="", opaque=frozenset()):
    """Dotted paths of the documented options: recurse into non-empty maps unless opaque."""
    out = []
    for k, v in values.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict) and v and p not in opaque:
            out += leaf_paths(v, p + ".", opaque)
        else:
            out.append(p)
    return out


def get_path(values, path):
    cur = values
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return KeyError
        cur = cur[part]
    return cur


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def cmd_options(values_path, all_values_path, all_render, off_render, release_ns):
    defaults = load(values_path)
    allv = load(all_values_path)
    objs = load_all(all_render)
    off = load_all(off_render)
    opaque = {"resources", "podSecurityContext", "securityContext"}
    paths = leaf_paths(defaults, opaque=opaque)

    kinds = {o["kind"] for o in objs}
    dep = one(objs, "Deployment")
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    c = container(dep)
    env = env_of(c)
    sa_objs = by_kind(objs, "ServiceAccount")
    sa = sa_objs[0] if sa_objs else {}
    sm = next(iter(by_kind(objs, "ServiceMonitor")), {})
    pr = next(iter(by_kind(objs, "PrometheusRule")), {})
    np_ = next(iter(by_kind(objs, "NetworkPolicy")), {})
    pdb = next(iter(by_kind(objs, "PodDisruptionBudget")), {})
    egress = np_.get("spec", {}).get("egress", [])
    egress_cidrs = [t.get("ipBlock", {}).get("cidr") for r in egress for t in r.get("to", [])]
    egress_ports = [p.get("port") for r in egress for p in r.get("ports", [])]
    off_dep = one(off, "Deployment")
    v = allv

    def g(path):
        return get_path(v, path)

    effects = {
        "image.repository": lambda: c.get("image", "").startswith(g("image.repository") + ":"),
        "image.tag": lambda: c.get("image", "").endswith(":" + g("image.tag")),
        "image.pullPolicy": lambda: c.get("imagePullPolicy") == g("image.pullPolicy"),
        "imagePullSecrets": lambda: pod.get("imagePullSecrets") == g("imagePullSecrets"),
        "replicaCount": lambda: dep["spec"]["replicas"] == g("replicaCount"),
        "nameOverride": lambda: dep["metadata"]["labels"].get("app.kubernetes.io/name") == g("nameOverride"),
        "fullnameOverride": lambda: dep["metadata"]["name"] == g("fullnameOverride"),
        "serviceAccount.create": lambda: bool(sa_objs) and not by_kind(off, "ServiceAccount"),
        "serviceAccount.name": lambda: sa.get("metadata", {}).get("name") == g("serviceAccount.name") == pod.get("serviceAccountName"),
        "serviceAccount.annotations": lambda: all(sa["metadata"]["annotations"].get(k) == x for k, x in g("serviceAccount.annotations").items()),
        "aws.roleArn": lambda: sa["metadata"]["annotations"].get("eks.amazonaws.com/role-arn") == g("aws.roleArn"),
        "aws.region": lambda: env.get("AWS_REGION", {}).get("value") == g("aws.region"),
        "aws.useFipsEndpoint": lambda: env.get("AWS_USE_FIPS_ENDPOINT", {}).get("value") == "true" and "AWS_USE_FIPS_ENDPOINT" not in env_of(container(off_dep)),
        "controller.namespaces": lambda: env.get("MAB_NAMESPACES", {}).get("value") == ",".join(g("controller.namespaces"))
        and sorted(o["metadata"]["namespace"] for o in by_kind(objs, "Role") if not o["metadata"]["name"].endswith("-leader-election")) == sorted(g("controller.namespaces"))
        and all(r.get("resources") == ["multiarchbuildpolicies"] for o in by_kind(objs, "ClusterRole") for r in o.get("rules", [])),
        "controller.allowedRegistries": lambda: env.get("MAB_ALLOWED_REGISTRIES", {}).get("value") == ",".join(g("controller.allowedRegistries")),
        "controller.defaultJobDefinition": lambda: env.get("MAB_DEFAULT_JOB_DEFINITION", {}).get("value") == g("controller.defaultJobDefinition"),
        "controller.pollIntervalSeconds": lambda: env.get("MAB_POLL_INTERVAL_SECONDS", {}).get("value") == str(g("controller.pollIntervalSeconds")),
        "controller.concurrency": lambda: env.get("MAB_CONCURRENCY", {}).get("value") == str(g("controller.concurrency")),
        "controller.defaultTtlSecondsAfterFinished": lambda: env.get("MAB_DEFAULT_TTL_SECONDS_AFTER_FINISHED", {}).get("value")
        == str(g("controller.defaultTtlSecondsAfterFinished")),
        "controller.logFormat": lambda: env.get("MAB_LOG_FORMAT", {}).get("value") == g("controller.logFormat"),
        "controller.httpPort": lambda: env.get("MAB_HTTP_ADDR", {}).get("value") == f"0.0.0.0:{g('controller.httpPort')}"
        and any(p.get("containerPort") == g("controller.httpPort") for p in c.get("ports", [])),
        "health.stallSeconds": lambda: env.get("MAB_HEALTH_STALL_SECONDS", {}).get("value") == str(g("health.stallSeconds")),
        "admissionPolicies.enabled": lambda: g("admissionPolicies.enabled") is False
        and "ValidatingAdmissionPolicy" not in kinds and "ValidatingAdmissionPolicyBinding" not in kinds
        and len(by_kind(off, "ValidatingAdmissionPolicy")) == 2 and len(by_kind(off, "ValidatingAdmissionPolicyBinding")) == 2,
        "registryAuth.existingSecret": lambda: env.get("MAB_REGISTRY_AUTH_FILE", {}).get("value") == "/etc/multiarch-operator/registry-auth/config.json"
        and any(m.get("name") == "registry-auth" and m.get("readOnly") is True and m.get("mountPath") == "/etc/multiarch-operator/registry-auth" for m in c.get("volumeMounts", []))
        and any(vol.get("secret", {}).get("secretName") == g("registryAuth.existingSecret") and vol["secret"].get("items") == [{"key": ".dockerconfigjson", "path": "config.json"}] for vol in pod.get("volumes", []))
        and "MAB_REGISTRY_AUTH_FILE" not in env_of(container(off_dep)),
        "registryAuth.authHosts": lambda: env.get("MAB_REGISTRY_AUTH_HOSTS", {}).get("value") == ",".join(g("registryAuth.authHosts")),
        "registryAuth.allowLoopback": lambda: env.get("MAB_REGISTRY_ALLOW_LOOPBACK", {}).get("value") == "true" and "MAB_REGISTRY_ALLOW_LOOPBACK" not in env_of(container(off_dep)),
        "signing.key": lambda: env.get("MAB_SIGNING_KEY", {}).get("value") == g("signing.key") and "MAB_SIGNING_KEY" not in env_of(container(off_dep)),
        "signing.secretName": lambda: signing_mount(pod, c) == g("signing.secretName") and signing_mount(off_dep["spec"]["template"]["spec"], container(off_dep)) is None,
        "extraEnv": lambda: all(env.get(e["name"]) == e for e in g("extraEnv")),
        "podAnnotations": lambda: dep["spec"]["template"]["metadata"].get("annotations") == g("podAnnotations"),
        "podLabels": lambda: all(dep["spec"]["template"]["metadata"]["labels"].get(k) == x for k, x in g("podLabels").items()),
        "resources": lambda: c.get("resources") == g("resources"),
        "nodeSelector": lambda: pod.get("nodeSelector") == g("nodeSelector"),
        "tolerations": lambda: pod.get("tolerations") == g("tolerations"),
        "affinity": lambda: pod.get("affinity") == g("affinity"),
        "topologySpreadConstraints": lambda: pod.get("topologySpreadConstraints") == g("topologySpreadConstraints"),
        "priorityClassName": lambda: pod.get("priorityClassName") == g("priorityClassName"),
        "podSecurityContext": lambda: pod.get("securityContext") == g("podSecurityContext"),
        "securityContext": lambda: c.get("securityContext") == g("securityContext"),
        "metrics.serviceMonitor.enabled": lambda: "ServiceMonitor" in kinds and not by_kind(off, "ServiceMonitor"),
        "metrics.serviceMonitor.interval": lambda: sm["spec"]["endpoints"][0]["interval"] == g("metrics.serviceMonitor.interval"),
        "metrics.serviceMonitor.labels": lambda: all(sm["metadata"]["labels"].get(k) == x for k, x in g("metrics.serviceMonitor.labels").items()),
        "metrics.prometheusRule.enabled": lambda: "PrometheusRule" in kinds and not by_kind(off, "PrometheusRule"),
        "metrics.prometheusRule.labels": lambda: all(pr["metadata"]["labels"].get(k) == x for k, x in g("metrics.prometheusRule.labels").items()),
        "networkPolicy.enabled": lambda: "NetworkPolicy" in kinds and not by_kind(off, "NetworkPolicy"),
        "networkPolicy.metricsFrom": lambda: np_["spec"]["ingress"][0].get("from") == g("networkPolicy.metricsFrom"),
        "networkPolicy.apiServer.cidrs": lambda: all(x in egress_cidrs for x in g("networkPolicy.apiServer.cidrs")),
        "networkPolicy.apiServer.ports": lambda: all(x in egress_ports for x in g("networkPolicy.apiServer.ports")),
        "networkPolicy.httpsCIDRs": lambda: all(x in egress_cidrs for x in g("networkPolicy.httpsCIDRs")),
        "networkPolicy.extraEgress": lambda: all(r in egress for r in g("networkPolicy.extraEgress")),
        "podDisruptionBudget.enabled": lambda: bool(pdb) and not by_kind(off, "PodDisruptionBudget"),
        "podDisruptionBudget.maxUnavailable": lambda: pdb["spec"]["maxUnavailable"] == g("podDisruptionBudget.maxUnavailable"),
    }
    for p in paths:
        val = get_path(allv, p)
        if val is KeyError:
            bad(f"{all_values_path} does not set the documented option {p}")
            continue
        if p not in effects:
            bad(f"no check of option {p}'s effect: add one to install_check.py options")
            continue
        try:
            ok = effects[p]()
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            ok = False
            bad(f"option {p}: render lacks what it should set ({type(e).__name__}: {e})")
            continue
        if not ok:
            bad(f"option {p} = {json.dumps(val)[:80]} has no effect on the render")
    for p in effects:
        if p not in paths:
            bad(f"install_check.py checks {p}, which values.yaml does not document")
    # The lease RBAC stays in the release namespace whatever the watched namespaces are.
    leases = [o for o in by_kind(objs, "Role") if any("leases" in r.get("resources", []) for r in o.get("rules", []))]
    if [o["metadata"]["namespace"] for o in leases] != [release_ns]:
        bad(f"the leader-election Role should be in {release_ns} only, found {[o['metadata'].get('namespace') for o in leases]}")
    finish(f"{len(paths)} documented options each set in {all_values_path.split('/')[-1]} and visible in the render")


SIGNING_DIR = "/etc/multiarch-operator/signing"


def signing_mount(pod, c):
    """The Secret mounted read-only at SIGNING_DIR with its cosign.key, or None when nothing is
    mounted there; flags a half-done mount."""
    mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == SIGNING_DIR]
    vols = {v.get("name"): v for v in pod.get("volumes", [])}
    if not mounts:
        if any(v.get("name") == "signing-key" for v in pod.get("volumes", [])):
            bad("the volume signing-key is defined but not mounted")
        return None
    if len(mounts) != 1 or mounts[0].get("readOnly") is not True:
        bad(f"{SIGNING_DIR} should be mounted once, read-only: {mounts}")
    secret = vols.get(mounts[0].get("name"), {}).get("secret", {})
    if secret.get("items") != [{"key": "cosign.key", "path": "cosign.key"}]:
        bad(f"the signing Secret should project exactly its cosign.key: {secret}")
    return secret.get("secretName")


def cmd_signing(default_render, kms_render, file_render, kms_key, file_key, secret_name):
    """signing.* in three renders: unset (no MAB_SIGNING_KEY, nothing mounted), a KMS key (the
    variable, nothing mounted), a PEM key in a Secret (the variable, the Secret mounted read-only
    at SIGNING_DIR and the key file inside it)."""
    cases = [(default_render, None, None), (kms_render, kms_key, None), (file_render, file_key, secret_name)]
    for path, key, secret in cases:
        dep = one(load_all(path), "Deployment")
        pod = dep.get("spec", {}).get("template", {}).get("spec", {})
        c = container(dep)
        got_key = env_of(c).get("MAB_SIGNING_KEY", {}).get("value")
        if got_key != key:
            bad(f"{path}: MAB_SIGNING_KEY is {got_key!r}, expected {key!r}")
        if c.get("args") != ["controller"]:
            bad(f"{path}: args {c.get('args')} (the key goes in MAB_SIGNING_KEY, the flag's variable)")
        got_secret = signing_mount(pod, c)
        if got_secret != secret:
            bad(f"{path}: the Secret mounted at {SIGNING_DIR} is {got_secret!r}, expected {secret!r}")
        if secret and not key.startswith(f"file://{SIGNING_DIR}/"):
            bad(f"{path}: signing.key {key!r} does not name a file of the mounted Secret")
    finish(f"signing unset: no variable, no mount; {kms_key}: the variable only; {file_key}: the variable and Secret {secret_name} mounted read-only")


def cmd_env_in_cli(render, cli_rs, extra_values=None):
    with open(cli_rs) as f:
        declared = set(re.findall(r'env\s*=\s*"(MAB_[A-Z0-9_]+)"', f.read()))
    if len(declared) < 5:
        bad(f"found only {sorted(declared)} in {cli_rs}")
    user = set()
    if extra_values:
        user = {e["name"] for e in (load(extra_values) or {}).get("extraEnv", [])}
    n = 0
    for dep in by_kind(load_all(render), "Deployment"):
        for name in env_of(container(dep)):
            if name.startswith("MAB_") and name not in user:
                n += 1
                if name not in declared:
                    bad(f"the chart sets {name}, which src/cli.rs does not declare (declared: {sorted(declared)})")
    if n == 0:
        bad("the render sets no MAB_* variable")
    finish(f"{n} MAB_* variables set by the chart are all declared in src/cli.rs")


def cmd_versions(cargo_toml, chart_yaml, kust_render):
    with open(cargo_toml) as f:
        m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
    cargo = m.group(1) if m else None
    chart = load(chart_yaml)
    if chart.get("appVersion") != cargo:
        bad(f"Chart.yaml appVersion {chart.get('appVersion')!r} != Cargo.toml version {cargo!r}")
    objs = load_all(kust_render)
    dep = one(objs, "Deployment")
    img = container(dep).get("image", "")
    if img != f"multiarch-operator:{cargo}":
        bad(f"kustomize image {img!r} != multiarch-operator:{cargo}")
    for o in objs:
        ver = o.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/version")
        if ver is not None and ver != cargo:
            bad(f"{o['kind']}/{o['metadata']['name']} label app.kubernetes.io/version {ver!r} != {cargo!r}")
    finish(f"version {cargo} in Cargo.toml, Chart.yaml appVersion and the kustomize image/labels")


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        val = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        val = loader.construct_sequence(node, deep=True)
    else:
        val = loader.construct_mapping(node, deep=True)
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {name: val}


CfnLoader.add_multi_constructor("!", _tag)


def load_cfn(path):
    with open(path) as f:
        return yaml.load(f, Loader=CfnLoader)


def as_list(x):
    return x if isinstance(x, list) else [x]


# The signing key's permissions: only with --signing-key awskms://..., on that key only.
SIGNING_ACTIONS = ["kms:Sign", "kms:GetPublicKey"]
NO_VALUE = object()


def cfn_condition(tpl, name, params, seen=()):
    """Evaluate the template's condition NAME with these parameter values (defaults otherwise)."""
    if name in seen:
        bad(f"condition {name} refers to itself")
        return False
    value = cfn_eval(tpl, tpl.get("Conditions", {})[name], params, seen + (name,))
    if not isinstance(value, bool):
        bad(f"condition {name} does not evaluate to true or false here: {value}")
    return value is True


def cfn_eval(tpl, node, params, seen=()):
    """Resolve Ref of a parameter, Fn::If and AWS::NoValue, and the condition functions, the way
    CloudFormation would for these parameter values; other intrinsics are left as they are."""
    if isinstance(node, list):
        out = [cfn_eval(tpl, x, params, seen) for x in node]
        return [x for x in out if x is not NO_VALUE]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref" and arg == "AWS::NoValue":
            return NO_VALUE
        if fn == "Ref" and arg in tpl.get("Parameters", {}):
            return params.get(arg, tpl["Parameters"][arg].get("Default"))
        if fn in ("Condition", "Fn::Condition"):
            return cfn_condition(tpl, arg, params, seen)
        if fn == "Fn::If":
            cond, yes, no = arg
            return cfn_eval(tpl, yes if cfn_condition(tpl, cond, params, seen) else no, params, seen)
        if fn == "Fn::Equals":
            a, b = (cfn_eval(tpl, x, params, seen) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not cfn_eval(tpl, arg[0], params, seen)
        if fn == "Fn::Or":
            return any(cfn_eval(tpl, x, params, seen) for x in arg)
        if fn == "Fn::And":
            return all(cfn_eval(tpl, x, params, seen) for x in arg)
        if fn == "Fn::Sub" and isinstance(arg, str):
            # Only the parameters given a value here; AWS::* and attributes stay.
            text = re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: str(params.get(m.group(1), m.group(0))), arg)
            return text if "${" not in text else {"Fn::Sub": text}
    out = {k: cfn_eval(tpl, v, params, seen) for k, v in node.items()}
    return {k: v for k, v in out.items() if v is not NO_VALUE}


def controller_statements(tpl, params):
    """The ControllerRole's inline policy statements as deployed with these parameter values."""
    role = cfn_eval(tpl, tpl.get("Resources", {}).get("ControllerRole", {}), params)
    return [st for pol in role.get("Properties", {}).get("Policies", []) for st in pol["PolicyDocument"]["Statement"]]


def check_signing_iam(tpl):
    """kms:Sign and kms:GetPublicKey on the signing key only: nothing without one; exactly that
    statement with SigningKeyArn, with CreateSigningKey, and on both with both. Returns the number
    of parameter sets looked at."""
    params = tpl.get("Parameters", {})
    for name in ("SigningKeyArn", "CreateSigningKey"):
        if name not in params:
            bad(f"the template has no parameter {name}")
            return 0
    if params["SigningKeyArn"].get("Default") != "" or params["CreateSigningKey"].get("Default") != "false":
        bad("SigningKeyArn should default to empty and CreateSigningKey to false (no signing key, no KMS permission)")
    pattern = params["SigningKeyArn"].get("AllowedPattern", "")
    good_arns = ["", "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                 "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"]
    bad_arns = ["*", "arn:aws:kms:us-east-1:123456789012:key/*", "arn:aws:kms:us-east-1:123456789012:alias/multiarch-operator-signing",
                "alias/multiarch-operator-signing", "1234abcd-12ab-34cd-56ef-1234567890ab", "awskms:///arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
    for arn in good_arns:
        if not re.fullmatch(pattern, arn):
            bad(f"SigningKeyArn's AllowedPattern refuses {arn!r}")
    for arn in bad_arns:
        if re.fullmatch(pattern, arn):
            bad(f"SigningKeyArn's AllowedPattern accepts {arn!r} (only a key ARN may be granted)")
    arn = good_arns[2]
    created = {"Fn::GetAtt": "SigningKey.Arn"}
    cases = [
        ({}, None),
        ({"SigningKeyArn": arn}, [arn]),
        ({"CreateSigningKey": "true"}, [created]),
        ({"SigningKeyArn": arn, "CreateSigningKey": "true"}, [arn, created]),
    ]
    for values, resources in cases:
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "no signing parameter"
        statements = controller_statements(tpl, values)
        kms = [st for st in statements if any(str(a).lower().startswith("kms:") for a in as_list(st.get("Action", [])))]
        if resources is None:
            if kms:
                bad(f"{label}: the controller role has KMS statements {kms}")
            continue
        want = {"Sid": "SignImages", "Effect": "Allow", "Action": SIGNING_ACTIONS, "Resource": resources}
        if kms != [want]:
            bad(f"{label}: the controller role's KMS statements are {kms}, expected exactly [{want}]")
    res = tpl.get("Resources", {})
    key = res.get("SigningKey", {})
    props = key.get("Properties", {})
    if key.get("Type") != "AWS::KMS::Key" or key.get("Condition") != "MakeSigningKey":
        bad("SigningKey should be an AWS::KMS::Key created only when CreateSigningKey is true")
    if (props.get("KeySpec"), props.get("KeyUsage")) != ("ECC_NIST_P256", "SIGN_VERIFY"):
        bad(f"SigningKey should be ECC_NIST_P256 / SIGN_VERIFY, is {props.get('KeySpec')} / {props.get('KeyUsage')}")
    admin = [st for st in props.get("KeyPolicy", {}).get("Statement", [])
             if st.get("Principal") == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
             and st.get("Action") == "kms:*" and st.get("Effect") == "Allow"]
    if len(admin) != 1 or len(props.get("KeyPolicy", {}).get("Statement", [])) != 1:
        bad("SigningKey's key policy should have one statement: the account root (partition-aware) administers it")
    alias = res.get("SigningKeyAlias", {})
    if alias.get("Condition") != "MakeSigningKey" or alias.get("Properties") != {
            "AliasName": "alias/multiarch-operator-signing", "TargetKeyId": {"Ref": "SigningKey"}}:
        bad("SigningKeyAlias should name the created key alias/multiarch-operator-signing")
    outputs = tpl.get("Outputs", {})
    if outputs.get("SigningKeyArn", {}).get("Value") != created:
        bad("the SigningKeyArn output should give the created key's ARN")
    uri = outputs.get("SigningKeyUri", {})
    for values, want in (({}, None), ({"SigningKeyArn": arn}, f"awskms:///{arn}"),
                         ({"CreateSigningKey": "true"}, {"Fn::Sub": "awskms:///${SigningKey.Arn}"})):
        shown = "Condition" in uri and cfn_condition(tpl, uri["Condition"], values)
        got = cfn_eval(tpl, uri.get("Value"), values) if shown else None
        if got != want:
            bad(f"with {values or 'no signing parameter'}, the SigningKeyUri output is {got}, expected {want}")
    return len(cases)


def cmd_iam(template, actions_file):
    tpl = load_cfn(template)
    with open(actions_file) as f:
        lines = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    wanted = set(lines)
    if len(lines) != len(wanted):
        bad(f"{actions_file} lists an action twice")
    for a in lines:
        if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", a):
            bad(f"{actions_file}: {a!r} is not one IAM action (service:Action, no wildcard)")
    if len(wanted) < 5:
        bad(f"{actions_file} has only {len(wanted)} actions")
    role = tpl.get("Resources", {}).get("ControllerRole")
    if not role:
        bad(f"{template} has no ControllerRole")
        finish("")
    # The signing actions are granted by their own conditional statement (check_signing_iam),
    # whether or not the actions file lists them; every other statement is unconditional.
    always = wanted - set(SIGNING_ACTIONS)
    granted = []
    statements = 0
    for pol in role["Properties"].get("Policies", []):
        for st in pol["PolicyDocument"]["Statement"]:
            if isinstance(st, dict) and "Fn::If" in st:
                cond, yes, no = st["Fn::If"]
                if not (cond == "SignsImages" and isinstance(yes, dict) and yes.get("Action") == SIGNING_ACTIONS and no == {"Ref": "AWS::NoValue"}):
                    bad(f"ControllerRole statement is conditional but not the signing key's: {st}")
                continue
            if not isinstance(st, dict) or "Effect" not in st:
                bad(f"ControllerRole statement is conditional or malformed: {st}")
                continue
            statements += 1
            if st["Effect"] != "Allow":
                continue
            if "NotAction" in st or "NotResource" in st:
                bad(f"ControllerRole statement {st.get('Sid')} uses NotAction/NotResource")
            granted += as_list(st["Action"])
    if role["Properties"].get("ManagedPolicyArns"):
        bad("ControllerRole has managed policies: its actions must all be in its inline policy")
    for a in granted:
        if "*" in a:
            bad(f"ControllerRole grants a wildcard action {a}")
    got = set(granted)
    for a in sorted(always - got):
        bad(f"the controller calls {a} but ControllerRole does not grant it")
    for a in sorted(got - always):
        bad(f"ControllerRole grants {a} unconditionally, which the controller does not call ({actions_file})")
    trust = role["Properties"].get("AssumeRolePolicyDocument")
    trust_text = json.dumps(trust)
    for needle in ("sts:AssumeRoleWithWebIdentity", ":sub", ":aud", "system:serviceaccount:${ControllerNamespace}:${ControllerServiceAccount}"):
        if needle not in trust_text:
            bad(f"ControllerRole trust policy lacks {needle!r}")
    cases = check_signing_iam(tpl)
    finish(f"ControllerRole grants exactly the {len(always)} actions of {actions_file.split('/')[-1]} ({statements} statements), "
           f"and {' and '.join(SIGNING_ACTIONS)} on the signing key only when there is one ({cases} parameter sets)")


def check_cache_setup(res):
    """The layer cache: the containerd image store turned on at boot (run the boothook's merge for
    real on a scratch daemon.json), and the cache repository's lifecycle and IAM."""
    data = res.get("BuildLaunchTemplate", {}).get("Properties", {}).get("LaunchTemplateData", {})
    user_data = data.get("UserData", {}).get("Fn::If", [None, {}])
    if user_data[0] != "UseContainerdImageStore":
        bad("the launch template's UserData should depend on the UseContainerdImageStore condition")
        return
    mime = user_data[1].get("Fn::Base64", "")
    if "multipart/mixed" not in mime or "text/cloud-boothook" not in mime:
        bad("the launch template's UserData should be MIME multi-part with a cloud-boothook (Batch merges it)")
    merge = re.search(r"python3 - <<'PY'\n(.*?)\nPY\n", mime, re.S)
    if not merge:
        bad("the boothook has no python3 merge of daemon.json")
        return
    with tempfile.TemporaryDirectory() as d:
        for before in (None, {"log-driver": "json-file", "features": {"buildkit": True}}):
            path = os.path.join(d, "daemon.json")
            if before is not None:
                with open(path, "w") as f:
                    json.dump(before, f)
            elif os.path.exists(path):
                os.remove(path)
            subprocess.run(["python3", "-c", merge.group(1).replace("/etc/docker/daemon.json", path)], check=True)
            after = json.load(open(path))
            want = dict(before or {})
            want["features"] = {**(before or {}).get("features", {}), "containerd-snapshotter": True}
            if after != want:
                bad(f"the boothook turned daemon.json {before} into {after}, wanted {want}")
    repo = res.get("CacheRepository", {})
    if repo.get("Condition") != "MakeCacheRepository":
        bad("the CacheRepository should exist only when CacheRepositoryName is set")
        return
    text = repo["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"].replace("${CacheExpiryDays}", "14")
    rules = json.loads(text)["rules"]
    tagged = [r for r in rules if r["selection"].get("tagPatternList") == ["buildcache-*"]]
    if not tagged or tagged[0]["selection"]["countNumber"] != 14:
        bad("the cache repository's lifecycle policy should expire buildcache-* after CacheExpiryDays")
    push = [st for pol in res["JobRole"]["Properties"]["Policies"] for st in pol["PolicyDocument"]["Statement"]
            if isinstance(st, dict) and st.get("Sid") == "EcrPushAndCache"]
    if not push or {"Fn::If": ["MakeCacheRepository", {"Fn::GetAtt": "CacheRepository.Arn"}, {"Ref": "AWS::NoValue"}]} not in push[0]["Resource"]:
        bad("the builder's job role should push and pull the cache repository")


def cmd_cfn_shape(template, values_path):
    with open(template) as f:
        text = f.read()
    tpl = load_cfn(template)
    res = tpl.get("Resources", {})
    params = tpl.get("Parameters", {})
    # Partition-aware: no ARN names the commercial partition literally.
    for n, line in enumerate(text.splitlines(), 1):
        if "arn:aws:" in line:
            bad(f"{template}:{n}: literal 'arn:aws:' (use ${{AWS::Partition}}): {line.strip()}")
    if "${AWS::Partition}" not in text:
        bad("the template never uses ${AWS::Partition}")
    ces = {k: v for k, v in res.items() if v.get("Type") == "AWS::Batch::ComputeEnvironment"}
    if len(ces) != 2:
        bad(f"expected 2 compute environments, found {sorted(ces)}")
    families = {}
    for name, ce in ces.items():
        cr = ce["Properties"]["ComputeResources"]
        if cr.get("Type") != {"Fn::If": ["IsSpot", "SPOT", "EC2"]}:
            bad(f"{name}: ComputeResources.Type should be EC2 or SPOT (never Fargate), got {cr.get('Type')}")
        if cr.get("AllocationStrategy") != {"Fn::If": ["IsSpot", "SPOT_PRICE_CAPACITY_OPTIMIZED", "BEST_FIT_PROGRESSIVE"]}:
            bad(f"{name}: AllocationStrategy should be SPOT_PRICE_CAPACITY_OPTIMIZED on Spot, else BEST_FIT_PROGRESSIVE")
        if cr.get("Ec2Configuration") != [{"ImageType": "ECS_AL2023"}]:
            bad(f"{name}: Ec2Configuration should be ECS_AL2023")
        ref = cr.get("InstanceTypes", {}).get("Ref")
        families[name] = params.get(ref, {}).get("Default")
        if not isinstance(cr.get("MaxvCpus"), dict) or "Ref" not in cr["MaxvCpus"]:
            bad(f"{name}: MaxvCpus should be a parameter")
        for k in ("Subnets", "SecurityGroupIds"):
            if not isinstance(cr.get(k), dict) or "Ref" not in cr[k]:
                bad(f"{name}: {k} should be a parameter")
    if families.get("Arm64ComputeEnvironment") != "m8g,c8g":
        bad(f"arm64 instance types default {families.get('Arm64ComputeEnvironment')!r}, expected m8g,c8g")
    if families.get("Amd64ComputeEnvironment") != "m7i,c7i":
        bad(f"amd64 instance types default {families.get('Amd64ComputeEnvironment')!r}, expected m7i,c7i")
    queues = [k for k, v in res.items() if v.get("Type") == "AWS::Batch::JobQueue"]
    if len(queues) != 2:
        bad(f"expected 2 job queues, found {queues}")
    jd = [v for v in res.values() if v.get("Type") == "AWS::Batch::JobDefinition"]
    if len(jd) != 1:
        bad(f"expected one job definition, found {len(jd)}")
    else:
        cp = jd[0]["Properties"]["ContainerProperties"]
        vols = {v["Name"]: v.get("Host", {}).get("SourcePath") for v in cp.get("Volumes", [])}
        mounts = {m["SourceVolume"]: m["ContainerPath"] for m in cp.get("MountPoints", [])}
        if "/var/run/docker.sock" not in vols.values() or "/var/run/docker.sock" not in mounts.values():
            bad("the job definition does not bind-mount /var/run/docker.sock")
        lc = cp.get("LogConfiguration", {})
        if lc.get("LogDriver") != "awslogs" or lc.get("Options", {}).get("awslogs-group") != "/aws/batch/job":
            bad("the job definition does not log with awslogs to /aws/batch/job")
        if cp.get("Image") != {"Ref": "BuilderImage"}:
            bad("the builder image should be the BuilderImage parameter")
        if jd[0]["Properties"].get("PlatformCapabilities") != ["EC2"]:
            bad("the job definition should be for EC2 only")
    check_cache_setup(res)
    # The IRSA defaults match the chart's defaults (release multiarch-operator in multiarch-system).
    values = load(values_path)
    if params.get("ControllerServiceAccount", {}).get("Default") != "multiarch-operator":
        bad("ControllerServiceAccount default should be the chart's default ServiceAccount, multiarch-operator")
    if params.get("ControllerNamespace", {}).get("Default") != "multiarch-system":
        bad("ControllerNamespace default should be multiarch-system (README, config/default)")
    if params.get("JobDefinitionName", {}).get("Default") != values["controller"]["defaultJobDefinition"]:
        bad("JobDefinitionName default should equal the chart's controller.defaultJobDefinition")
    finish(f"template shape: {len(res)} resources, 2 EC2 compute environments (m8g,c8g / m7i,c7i), 2 queues, DooD job definition, partition-aware")


ALERTS = {"MultiArchBuildsFailing": "warning", "MultiArchBuildsStuck": "critical"}


def cmd_prometheus_rule(on_render, off_render, release_ns):
    """metrics.prometheusRule.enabled: the PrometheusRule with the two alerts in the release
    namespace (Prometheus's own {{ $labels }} templates left for Prometheus, the log command naming
    the Deployment); none in the render with it off."""
    objs = load_all(on_render)
    rule = one(objs, "PrometheusRule")
    deployment = one(objs, "Deployment").get("metadata", {}).get("name")
    if rule.get("metadata", {}).get("namespace") != release_ns:
        bad(f"the PrometheusRule should be in {release_ns}, found {rule.get('metadata', {}).get('namespace')}")
    rules = [r for g in rule.get("spec", {}).get("groups", []) for r in g.get("rules", [])]
    found = {r.get("alert"): r for r in rules}
    if set(found) != set(ALERTS):
        bad(f"alerts {sorted(found, key=str)}, expected {sorted(ALERTS)}")
    for name, severity in ALERTS.items():
        r = found.get(name, {})
        if "multiarch_" not in r.get("expr", ""):
            bad(f"{name}: its expr uses no multiarch_ metric: {r.get('expr')!r}")
        if r.get("for") != "15m" or r.get("labels", {}).get("severity") != severity:
            bad(f"{name}: expected for: 15m and severity {severity}, found {r.get('for')!r}, {r.get('labels')!r}")
        if not r.get("annotations", {}).get("summary") or not r.get("annotations", {}).get("description"):
            bad(f"{name}: no summary or description")
    failing = found.get("MultiArchBuildsFailing", {}).get("annotations", {})
    if "{{ $labels.reason }}" not in failing.get("summary", ""):
        bad(f"MultiArchBuildsFailing's summary lost Prometheus's {{{{ $labels.reason }}}}: {failing.get('summary')!r}")
    stuck = found.get("MultiArchBuildsStuck", {}).get("annotations", {}).get("description", "")
    if f"kubectl -n {release_ns} logs deploy/{deployment};" not in stuck:
        bad(f"MultiArchBuildsStuck's description should name the Deployment {release_ns}/{deployment}: {stuck!r}")
    off = by_kind(load_all(off_render), "PrometheusRule")
    if off:
        bad(f"{len(off)} PrometheusRule(s) rendered with metrics.prometheusRule.enabled=false")
    finish(f"PrometheusRule {rule.get('metadata', {}).get('name')} with {', '.join(sorted(found, key=str))} when enabled, none when not")


SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://multiarch.dev/MultiArchBuild/v1"
BUILDER_ID_PREFIX = "https://multiarch.dev/multiarch-operator"
PEM_PUBLIC_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----\n.+\n-----END PUBLIC KEY-----\n?", re.S)


def check_key(where, key):
    """A cosign public-key authority: a PEM public key (or a KMS URI), tlog and SCT not required."""
    pem = key.get("publicKeys") or key.get("data")
    if not (pem and PEM_PUBLIC_KEY.fullmatch(pem)) and not str(key.get("kms", "")).startswith("awskms://"):
        bad(f"{where}: no PEM public key nor awskms:// key: {key}")


def cmd_signing_policies(kyverno_path, policy_controller_path, src_dir):
    """The admission policies of charts/multiarch-operator/docs that admit only images signed by
    the controller with its SLSA provenance: the fields that decide, in both, so that neither
    drifts from the other nor from the provenance the controller writes."""
    ky = load(kyverno_path)
    if (ky.get("apiVersion"), ky.get("kind")) != ("kyverno.io/v1", "ClusterPolicy"):
        bad(f"{kyverno_path}: not a kyverno.io/v1 ClusterPolicy")
    rules = [r for r in ky.get("spec", {}).get("rules", []) if r.get("verifyImages")]
    if len(rules) != 1 or len(rules[0]["verifyImages"]) != 1:
        bad(f"{kyverno_path}: expected one rule with one verifyImages entry")
        finish("")
    rule = rules[0]
    if {k for a in rule.get("match", {}).get("any", []) for k in a.get("resources", {}).get("kinds", [])} != {"Pod"}:
        bad(f"{kyverno_path}: the rule should match Pods")
    vi = rule["verifyImages"][0]
    refs = vi.get("imageReferences") or []
    if not refs or any(not r.endswith("/*") for r in refs):
        bad(f"{kyverno_path}: imageReferences should be repository patterns ending in /*: {refs}")
    for field in ("mutateDigest", "verifyDigest", "required"):
        if vi.get(field) is not True:
            bad(f"{kyverno_path}: verifyImages {field} should be true")
    if vi.get("failureAction") != "Enforce" or ky["spec"].get("webhookConfiguration", {}).get("failurePolicy") != "Fail":
        bad(f"{kyverno_path}: should enforce (failureAction Enforce) and fail closed (failurePolicy Fail)")
    attestor_sets = [("signature", vi.get("attestors", []))]
    atts = vi.get("attestations", [])
    if len(atts) != 1 or atts[0].get("type") != SLSA_PROVENANCE_V1:
        bad(f"{kyverno_path}: expected one attestation of type {SLSA_PROVENANCE_V1}, found {[a.get('type') for a in atts]}")
    else:
        attestor_sets.append(("attestation", atts[0].get("attestors", [])))
        conds = [c for block in atts[0].get("conditions", []) for c in block.get("all", [])]
        if any(block.get("any") for block in atts[0].get("conditions", [])):
            bad(f"{kyverno_path}: the attestation's conditions should all be required (all, not any)")
        want = [
            {"key": "{{ buildDefinition.buildType }}", "operator": "Equals", "value": BUILD_TYPE},
            {"key": f"{{{{ starts_with(runDetails.builder.id, '{BUILDER_ID_PREFIX}') }}}}", "operator": "Equals", "value": True},
        ]
        if conds != want:
            bad(f"{kyverno_path}: the attestation's conditions are {conds}, expected {want}")
    keys = []
    for what, sets in attestor_sets:
        entries = [e for s in sets for e in s.get("entries", [])]
        if len(entries) != 1 or "keys" not in entries[0]:
            bad(f"{kyverno_path}: the {what} should be verified by one key attestor, found {entries}")
            continue
        k = entries[0]["keys"]
        keys.append(k.get("publicKeys") or k.get("kms"))
        check_key(f"{kyverno_path} {what}", k)
        if not (k.get("rekor", {}).get("ignoreTlog") is True and k.get("ctlog", {}).get("ignoreSCT") is True):
            bad(f"{kyverno_path}: the {what}'s key should not require Rekor (rekor.ignoreTlog, ctlog.ignoreSCT): the controller does not upload")

    pc = load(policy_controller_path)
    if (pc.get("apiVersion"), pc.get("kind")) != ("policy.sigstore.dev/v1beta1", "ClusterImagePolicy"):
        bad(f"{policy_controller_path}: not a policy.sigstore.dev/v1beta1 ClusterImagePolicy")
    spec = pc.get("spec", {})
    globs = [i.get("glob", "") for i in spec.get("images", [])]
    if [g[:-3] for g in globs] != [r[:-2] for r in refs] or any(not g.endswith("/**") for g in globs):
        bad(f"{policy_controller_path}: images {globs} should be the Kyverno policy's repositories {refs} (as <repo>/**)")
    if spec.get("mode", "enforce") != "enforce":
        bad(f"{policy_controller_path}: mode should be enforce")
    auths = spec.get("authorities", [])
    if len(auths) != 1 or "key" not in auths[0]:
        bad(f"{policy_controller_path}: expected one key authority")
        finish("")
    auth = auths[0]
    key = auth["key"]
    check_key(policy_controller_path, key)
    if sum(1 for f in ("data", "kms", "secretRef") if key.get(f)) != 1:
        bad(f"{policy_controller_path}: the key should have exactly one of data, kms, secretRef")
    keys.append(key.get("data") or key.get("kms"))
    if len({(k or "").strip() for k in keys}) != 1:
        bad(f"the two policies do not name the same key: {keys}")
    if auth.get("ctlog") != {}:
        bad(f"{policy_controller_path}: ctlog should be {{}} (no Rekor verification: the controller does not upload)")
    patts = auth.get("attestations", [])
    if len(patts) != 1 or patts[0].get("predicateType") != SLSA_PROVENANCE_V1:
        bad(f"{policy_controller_path}: expected one attestation of predicateType {SLSA_PROVENANCE_V1}")
    else:
        pol = patts[0].get("policy", {})
        cue = pol.get("data", "")
        if pol.get("type") != "cue":
            bad(f"{policy_controller_path}: the attestation policy should be cue")
        for needle in (f'predicateType: "{SLSA_PROVENANCE_V1}"', f'buildType: "{BUILD_TYPE}"',
                       'runDetails: builder: id: =~"^' + BUILDER_ID_PREFIX.replace(".", "\\\\.") + '"'):
            if needle not in cue:
                bad(f"{policy_controller_path}: the cue policy lacks {needle!r}:\n{cue}")

    # Once the controller names its build type and builder id, they must be what the policies ask.
    seen = 0
    for root, _, files in os.walk(src_dir):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                text = f.read()
            for m in re.finditer(r'"(https://multiarch\.dev/MultiArchBuild/[^"]*)"', text):
                seen += 1
                if m.group(1) != BUILD_TYPE:
                    bad(f"{path}: build type {m.group(1)!r}, the policies ask for {BUILD_TYPE!r}")
            for m in re.finditer(r'"(https://multiarch\.dev/multiarch-operator[^"]*)"', text):
                seen += 1
    src_note = f"{seen} mention(s) in {src_dir} agree" if seen else f"{src_dir} names no build type yet"
    finish(f"Kyverno and policy-controller policies: same repositories and key, signature and {SLSA_PROVENANCE_V1} "
           f"attestation, buildType {BUILD_TYPE}, builder id {BUILDER_ID_PREFIX}*; {src_note}")


def cmd_notes(notes_output):
    with open(notes_output) as f:
        text = f.read()
    for needle in ("config/samples/vecoli.yaml", "kubectl apply -f", "kubectl get mab", " -w",
                   "kubectl wait", "--for=condition=Ready",
                   "kind: MultiArchBuildPolicy", "kubectl label namespace", "repositoryPrefixes", "kubectl get mabpolicy"):
        if needle not in text:
            bad(f"NOTES.txt does not mention {needle!r}")
    finish("NOTES.txt tells how to apply the sample, watch it and wait for Ready, and how to lock down a namespace")


COMMANDS = {
    "same-objects": cmd_same_objects,
    "admission": cmd_admission,
    "rbac": cmd_rbac,
    "rule-comments": cmd_rule_comments,
    "hardened": cmd_hardened,
    "options": cmd_options,
    "env-in-cli": cmd_env_in_cli,
    "signing": cmd_signing,
    "versions": cmd_versions,
    "iam": cmd_iam,
    "cfn-shape": cmd_cfn_shape,
    "notes": cmd_notes,
    "prometheus-rule": cmd_prometheus_rule,
    "signing-policies": cmd_signing_policies,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
