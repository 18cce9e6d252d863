//! Multi-tenant clusters: the MultiArchBuildPolicy CRD, the controller's check (`violations()`,
//! `selects()`, `policy_violations()`) and the two ValidatingAdmissionPolicies of
//! config/admission/ (which the chart renders alike: e2e/install_test.sh), whose CEL is evaluated
//! here in-process with kube's evaluator (`object`, `oldObject`, `params`, `namespaceObject` and
//! `request` bound).
//!
//! The build policy is enforced twice, at `kubectl apply` and by the controller; every case below
//! must get the same verdict, and the same messages, from both.
//!
//! `MAB_WRITE_CRDS=1 cargo test --test policy committed_policy_crd_matches_the_types` rewrites
//! crds/multiarch.dev_multiarchbuildpolicies.yaml (what `make crds` runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    CustomResourceExt,
    core::cel::{KubeCelExt, ScopeContext, Validator, WarningKind, analyze_rule, apply_defaults, cel, compile_schema},
};
use multiarch_operator::{
    api::{self, MultiArchBuild, MultiArchBuildPolicy, MultiArchBuildPolicySpec, MultiArchBuildStatus, Phase},
    controller::gating::{self, AFTER_LABEL, NOTIFIED_ANNOTATION},
};
use serde::Deserialize;
use serde_json::{Value, json};

const POLICY_CRD: &str = "crds/multiarch.dev_multiarchbuildpolicies.yaml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn policy_schema() -> Value {
    schema_of(&MultiArchBuildPolicy::crd())
}

fn build_schema() -> Value {
    schema_of(&MultiArchBuild::crd())
}

// ------------------------------------------------------------------------------------ the CRD

#[test]
fn committed_policy_crd_matches_the_types() {
    let generated = api::policy_crd_yaml().unwrap();
    if std::env::var_os("MAB_WRITE_CRDS").is_some() {
        std::fs::write(repo(POLICY_CRD), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(repo(POLICY_CRD)).unwrap_or_default();
    assert!(committed == generated, "{POLICY_CRD} is stale: run `make crds`");
}

#[test]
fn the_policy_crd_is_cluster_scoped_with_its_short_name_and_explains_every_field() {
    let crd = MultiArchBuildPolicy::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.group, "multiarch.dev");
    assert_eq!(crd.spec.names.plural, "multiarchbuildpolicies");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mabpolicy".to_string()]));
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");

    // `kubectl explain multiarchbuildpolicy.spec...` has text for every field.
    fn described(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if !matches!(name.as_str(), "apiVersion" | "kind" | "metadata") && child.get("description").is_none() {
                    missing.push(p.clone());
                }
                described(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            described(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    described(&policy_schema(), "", &mut missing);
    assert_eq!(missing, Vec::<String>::new(), "fields without a description");
}

/// Every list and string a CEL expression walks is bounded, so the admission policy's runtime cost
/// stays small whatever an administrator writes.
#[test]
fn every_list_and_string_of_the_policy_is_bounded() {
    let schema = policy_schema();
    fn walk(node: &Value, path: &str, unbounded: &mut Vec<String>) {
        match node.get("type").and_then(Value::as_str) {
            Some("array") if node.get("maxItems").is_none() => unbounded.push(path.to_string()),
            Some("string") if node.get("maxLength").is_none() && node.get("enum").is_none() => {
                unbounded.push(path.to_string())
            }
            Some("object") if node.get("additionalProperties").is_some() && node.get("maxProperties").is_none() => {
                unbounded.push(path.to_string())
            }
            _ => {}
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                if name != "metadata" {
                    walk(child, &format!("{path}.{name}"), unbounded);
                }
            }
        }
        for sub in ["items", "additionalProperties"] {
            if let Some(child) = node.get(sub).filter(|c| c.is_object()) {
                walk(child, &format!("{path}.{sub}"), unbounded);
            }
        }
    }
    let mut unbounded = Vec::new();
    walk(&schema["properties"]["spec"], "spec", &mut unbounded);
    assert_eq!(unbounded, Vec::<String>::new());
}

#[test]
fn the_policy_crd_cel_rules_compile_within_the_cost_budget_and_refuse_bad_selectors() {
    let schema = policy_schema();
    assert!(!compile_schema(&schema).has_errors());
    let requirement =
        &schema["properties"]["spec"]["properties"]["namespaceSelector"]["properties"]["matchExpressions"]["items"];
    let rules = requirement["x-kubernetes-validations"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let compiled = compile_schema(requirement);
    assert!(!compiled.has_errors(), "{:?}", compiled.compilation_errors());
    for rule in rules {
        let rule = rule["rule"].as_str().unwrap();
        let serious: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
            .into_iter()
            .filter(|w| {
                matches!(
                    w.kind,
                    WarningKind::CostExceeded | WarningKind::MissingBounds | WarningKind::WrongScope
                )
            })
            .collect();
        assert!(serious.is_empty(), "{rule}: {serious:?}");
    }

    let object = |selector: Value| {
        json!({"apiVersion": "multiarch.dev/v1alpha1", "kind": "MultiArchBuildPolicy",
               "metadata": {"name": "p"}, "spec": {"namespaceSelector": selector}})
    };
    for good in [
        json!({}),
        json!({"matchLabels": {"multiarch.dev/team": "a"}}),
        json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}),
        json!({"matchExpressions": [{"key": "multiarch.dev/team", "operator": "DoesNotExist"}]}),
    ] {
        Validator::new()
            .validate(&schema, &apply_defaults(&schema, &object(good.clone())), None)
            .unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
    for bad in [
        json!({"matchExpressions": [{"key": "env", "operator": "In"}]}),
        json!({"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]}),
    ] {
        let errors = Validator::new()
            .validate(&schema, &apply_defaults(&schema, &object(bad.clone())), None)
            .expect_err(&bad.to_string());
        assert!(
            errors.iter().any(|e| e.message.contains("In and NotIn need values")),
            "{bad}: {errors:?}"
        );
    }
}

// ------------------------------------------------------------------------------------ the YAML

fn load_all(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// What the API server binds for one admission request: `object`, `oldObject` (null on CREATE),
/// `params`, `namespaceObject` and `request`.
///
/// The expressions run on kube's CEL (kube-cel's Kubernetes function library on the `cel`
/// interpreter, as kube-cel's `VapEvaluator` does), but the values are bound without kube-cel's
/// key escaping: `VapEvaluator` (kube-cel 0.8) escapes every object key as for a CRD rule's
/// `self` (`app.kubernetes.io/managed-by` becomes `app__dot__kubernetes__dot__io__slash__managed-by`),
/// while the API server binds a VAP's objects as plain maps, so a label key with `.` or `/` would
/// never be found.
struct Request {
    object: Value,
    old_object: Value,
    params: Value,
    namespace_object: Value,
    request: Value,
}

impl Request {
    fn context(&self) -> cel::Context<'static> {
        let mut ctx = cel::Context::default().with_all();
        for (name, value) in [
            ("object", &self.object),
            ("oldObject", &self.old_object),
            ("params", &self.params),
            ("namespaceObject", &self.namespace_object),
            ("request", &self.request),
        ] {
            ctx.add_variable_from_value(name, cel::to_value(value).unwrap());
        }
        ctx
    }
}

fn request_json(operation: &str, username: &str, gvr: (&str, &str, &str), namespace: &str, name: &str) -> Value {
    let (group, version, resource) = gvr;
    json!({
        "operation": operation, "name": name, "namespace": namespace, "dryRun": false,
        "userInfo": {"username": username, "uid": "", "groups": []},
        "resource": {"group": group, "version": version, "resource": resource},
    })
}

/// One validation of an admission policy.
struct Validation {
    expression: cel::Program,
    message: Option<String>,
    message_expression: Option<cel::Program>,
}

/// An admission policy's expressions, compiled, `variables.<name>` replaced by the variable's
/// expression (CEL variables are pure and evaluated lazily, so inlining them is exact).
struct Policy {
    match_conditions: Vec<cel::Program>,
    validations: Vec<Validation>,
}

fn compile(path: &str, expression: &str) -> cel::Program {
    cel::Program::compile(expression).unwrap_or_else(|e| panic!("{path}: {expression}: {e}"))
}

fn admission_policy(path: &str) -> (Policy, Value, Value) {
    let docs = load_all(path);
    let vap = kind(&docs, "ValidatingAdmissionPolicy").clone();
    let binding = kind(&docs, "ValidatingAdmissionPolicyBinding").clone();
    assert_eq!(vap["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    let variables: Vec<(String, String)> = vap["spec"]["variables"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["expression"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let inline = |expression: &str| {
        let mut out = expression.to_string();
        for (name, value) in &variables {
            let pattern = regex::Regex::new(&format!(r"variables\.{name}\b")).unwrap();
            out = pattern
                .replace_all(&out, regex::NoExpand(&format!("({value})")))
                .into_owned();
        }
        assert!(!out.contains("variables."), "unknown variable in {expression}");
        compile(path, &out)
    };
    let policy = Policy {
        match_conditions: vap["spec"]["matchConditions"]
            .as_array()
            .map(|cs| cs.iter().map(|c| inline(c["expression"].as_str().unwrap())).collect())
            .unwrap_or_default(),
        validations: vap["spec"]["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| Validation {
                expression: inline(v["expression"].as_str().unwrap()),
                message: v["message"].as_str().map(str::to_string),
                message_expression: v["messageExpression"].as_str().map(inline),
            })
            .collect(),
    };
    (policy, vap, binding)
}

impl Policy {
    /// `None` when a matchCondition leaves the request alone; otherwise the failed validations'
    /// messages, as the API server makes them (empty: admitted). An expression that does not
    /// evaluate to a bool fails the test: with failurePolicy Fail it would refuse everything.
    fn evaluate(&self, request: &Request) -> Option<Vec<String>> {
        let ctx = request.context();
        for condition in &self.match_conditions {
            match condition.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return None,
                other => panic!("a matchCondition did not evaluate to a bool: {other:?}"),
            }
        }
        let mut failed = Vec::new();
        for validation in &self.validations {
            match validation.expression.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = match validation.message_expression.as_ref().map(|m| m.execute(&ctx)) {
                        Some(Ok(cel::Value::String(text))) if !text.trim().is_empty() => text.to_string(),
                        Some(other) => panic!("a messageExpression failed: {other:?}"),
                        None => validation.message.clone().unwrap_or_default(),
                    };
                    failed.push(message);
                }
                other => panic!("a validation did not evaluate to a bool: {other:?}"),
            }
        }
        Some(failed)
    }
}

// ------------------------------------------------------------------------------------ build policy

const ECR: &str = "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com";
const TEAM_A_PAT: &str = "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:team-a-pat";

/// Team a's policy; the cases' builds start out complying with it.
const TEAM_A: &str = r#"
metadata: {name: team-a}
spec:
  namespaceSelector:
    matchLabels: {multiarch.dev/team: a}
  repositoryPrefixes: [123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/team-a]
  credentialsSecretArns: [arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:team-a-pat]
  jobQueues: [build-arm64, build-amd64]
  jobDefinitions: [multiarch-builder]
  maxPlatforms: 2
  maxTimeoutSeconds: 7200
"#;

const TEAM_B: &str = r#"
metadata: {name: team-b}
spec:
  namespaceSelector:
    matchLabels: {multiarch.dev/team: b}
  repositoryPrefixes: [123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/team-b]
  jobQueues: [build-arm64-b, build-amd64-b]
"#;

/// Namespaces without a team label may not build at all.
const NO_TEAM_NO_BUILD: &str = r#"
metadata: {name: no-team-no-build}
spec:
  namespaceSelector:
    matchExpressions:
      - {key: multiarch.dev/team, operator: DoesNotExist}
  repositoryPrefixes: []
"#;

/// A second policy on every namespace: at most 3 hours.
const EVERYWHERE_3H: &str = r#"
metadata: {name: everywhere-3h}
spec:
  maxTimeoutSeconds: 10800
"#;

struct Case {
    name: &'static str,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    policies: &'static [&'static str],
    edit: fn(&mut Value),
    /// The fields refused, in message order; empty: admitted.
    refused: &'static [&'static str],
}

const TEAM_A_NS: &[(&str, &str)] = &[("multiarch.dev/team", "a")];

fn no_edit(_: &mut Value) {}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a build that complies",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "repository nested under the prefix",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = format!("{ECR}/team-a/sims/vecoli").into(),
            refused: &[],
        },
        Case {
            name: "repository equal to the prefix",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = format!("{ECR}/team-a").into(),
            refused: &[],
        },
        Case {
            name: "repository sharing only a string prefix (team-ab)",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = format!("{ECR}/team-ab").into(),
            refused: &["spec.output.repository"],
        },
        Case {
            name: "repository of another team",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = format!("{ECR}/team-b/vecoli").into(),
            refused: &["spec.output.repository"],
        },
        Case {
            name: "repository in another registry",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["output"]["repository"] = "999999999999.dkr.ecr.us-gov-west-1.amazonaws.com/team-a/x".into()
            },
            refused: &["spec.output.repository"],
        },
        Case {
            name: "cache repository under the prefix",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["output"]["cache"] =
                    json!({"mode": "min", "repository": format!("{ECR}/team-a/cache/vecoli")})
            },
            refused: &[],
        },
        Case {
            name: "cache repository empty: the output repository, already checked",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["cache"] = json!({"repository": ""}),
            refused: &[],
        },
        Case {
            name: "cache repository of another team (poisoning its builds' layers)",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["cache"] = json!({"repository": format!("{ECR}/team-b/vecoli")}),
            refused: &["spec.output.cache.repository"],
        },
        Case {
            name: "cache repository sharing only a string prefix (team-ab)",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["cache"] = json!({"mode": "max", "repository": format!("{ECR}/team-ab")}),
            refused: &["spec.output.cache.repository"],
        },
        Case {
            name: "cache off but its repository still outside the prefixes",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["cache"] = json!({"mode": "off", "repository": format!("{ECR}/team-b/x")}),
            refused: &["spec.output.cache.repository"],
        },
        Case {
            name: "output and cache repositories both of another team",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["output"]["repository"] = format!("{ECR}/team-b/vecoli").into();
                b["spec"]["output"]["cache"] = json!({"repository": format!("{ECR}/team-b/cache")});
            },
            refused: &["spec.output.repository", "spec.output.cache.repository"],
        },
        Case {
            name: "credentials not listed",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["source"]["git"]["credentialsSecretArn"] =
                    "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:admin-pat".into()
            },
            refused: &["spec.source.git.credentialsSecretArn"],
        },
        Case {
            name: "no credentials",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["source"]["git"]
                    .as_object_mut()
                    .unwrap()
                    .remove("credentialsSecretArn");
            },
            refused: &[],
        },
        Case {
            name: "credentials null",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["source"]["git"]["credentialsSecretArn"] = Value::Null,
            refused: &[],
        },
        Case {
            name: "one queue not listed",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["platforms"][1]["jobQueue"] = "gpu-queue".into(),
            refused: &["spec.platforms[1].jobQueue"],
        },
        Case {
            name: "both queues not listed",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["platforms"][0]["jobQueue"] = "other-arm64".into();
                b["spec"]["platforms"][1]["jobQueue"] = "other-amd64".into();
            },
            refused: &["spec.platforms[0].jobQueue", "spec.platforms[1].jobQueue"],
        },
        Case {
            name: "a listed queue named by its ARN (a different entry)",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["platforms"][0]["jobQueue"] =
                    "arn:aws-us-gov:batch:us-gov-west-1:123456789012:job-queue/build-arm64".into()
            },
            refused: &["spec.platforms[0].jobQueue"],
        },
        Case {
            name: "job definition not listed",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["jobDefinition"] = "privileged-builder".into(),
            refused: &["spec.jobDefinition"],
        },
        Case {
            name: "job definition with a revision the list does not name",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["jobDefinition"] = "multiarch-builder:3".into(),
            refused: &["spec.jobDefinition"],
        },
        Case {
            name: "no job definition: the controller's default",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"].as_object_mut().unwrap().remove("jobDefinition");
            },
            refused: &[],
        },
        Case {
            name: "job definition null",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["jobDefinition"] = Value::Null,
            refused: &[],
        },
        Case {
            name: "too many platforms",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                b["spec"]["platforms"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"platform": "linux/amd64/v3", "jobQueue": "build-amd64"}))
            },
            refused: &["spec.platforms"],
        },
        Case {
            name: "timeout at the maximum",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["timeoutSeconds"] = 7200.into(),
            refused: &[],
        },
        Case {
            name: "timeout above the maximum",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| b["spec"]["timeoutSeconds"] = 7201.into(),
            refused: &["spec.timeoutSeconds"],
        },
        Case {
            name: "no timeout: the default 3600 is checked",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &["metadata: {name: short}\nspec: {maxTimeoutSeconds: 1800}"],
            edit: |b| {
                b["spec"].as_object_mut().unwrap().remove("timeoutSeconds");
            },
            refused: &["spec.timeoutSeconds"],
        },
        Case {
            name: "everything refused at once",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A],
            edit: |b| {
                let spec = &mut b["spec"];
                spec["source"]["git"]["credentialsSecretArn"] =
                    "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x".into();
                spec["output"]["repository"] = "ghcr.io/someone/else".into();
                spec["platforms"] = json!([
                    {"platform": "linux/arm64", "jobQueue": "q1"},
                    {"platform": "linux/amd64", "jobQueue": "build-amd64"},
                    {"platform": "linux/amd64/v2", "jobQueue": "q3"},
                ]);
                spec["jobDefinition"] = "other".into();
                spec["timeoutSeconds"] = 604_800.into();
            },
            refused: &[
                "spec.source.git.credentialsSecretArn",
                "spec.output.repository",
                "spec.platforms",
                "spec.platforms[0].jobQueue",
                "spec.platforms[2].jobQueue",
                "spec.jobDefinition",
                "spec.timeoutSeconds",
            ],
        },
        Case {
            name: "a policy whose selector does not match: nothing checked",
            namespace: "ci",
            labels: &[("multiarch.dev/team", "b-not-a")],
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = "ghcr.io/someone/else".into(),
            refused: &[],
        },
        Case {
            name: "no label at all: team a's policy does not apply",
            namespace: "default",
            labels: &[],
            policies: &[TEAM_A],
            edit: |b| b["spec"]["output"]["repository"] = "ghcr.io/someone/else".into(),
            refused: &[],
        },
        Case {
            name: "team b's namespace under team b's policy",
            namespace: "team-b",
            labels: &[("multiarch.dev/team", "b")],
            policies: &[TEAM_A, TEAM_B, NO_TEAM_NO_BUILD],
            edit: |b| b["spec"]["output"]["repository"] = format!("{ECR}/team-a/vecoli").into(),
            refused: &[
                "spec.output.repository",
                "spec.platforms[0].jobQueue",
                "spec.platforms[1].jobQueue",
            ],
        },
        Case {
            name: "an unlabelled namespace when unlabelled namespaces may not build",
            namespace: "default",
            labels: &[],
            policies: &[TEAM_A, TEAM_B, NO_TEAM_NO_BUILD],
            edit: no_edit,
            refused: &["spec.output.repository"],
        },
        Case {
            name: "team a's namespace is not caught by the unlabelled-namespaces policy",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A, TEAM_B, NO_TEAM_NO_BUILD],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "two policies select a namespace: both apply",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[TEAM_A, EVERYWHERE_3H],
            edit: |b| {
                b["spec"]["timeoutSeconds"] = 14_400.into();
                b["spec"]["jobDefinition"] = "other".into();
            },
            refused: &["spec.timeoutSeconds", "spec.jobDefinition", "spec.timeoutSeconds"],
        },
        Case {
            name: "select by name (kubernetes.io/metadata.name)",
            namespace: "sims",
            labels: &[],
            policies: &[
                "metadata: {name: sims-only}\nspec:\n  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: sims}}\n  maxPlatforms: 1",
            ],
            edit: no_edit,
            refused: &["spec.platforms"],
        },
        Case {
            name: "select by name: another namespace",
            namespace: "ci",
            labels: &[],
            policies: &[
                "metadata: {name: sims-only}\nspec:\n  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: sims}}\n  maxPlatforms: 1",
            ],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "In: the label is one of the values",
            namespace: "prod",
            labels: &[("env", "prod")],
            policies: &[
                "metadata: {name: prod}\nspec:\n  namespaceSelector:\n    matchExpressions: [{key: env, operator: In, values: [prod, staging]}]\n  jobDefinitions: [pinned:4]",
            ],
            edit: no_edit,
            refused: &["spec.jobDefinition"],
        },
        Case {
            name: "In: the label is another value",
            namespace: "dev",
            labels: &[("env", "dev")],
            policies: &[
                "metadata: {name: prod}\nspec:\n  namespaceSelector:\n    matchExpressions: [{key: env, operator: In, values: [prod, staging]}]\n  jobDefinitions: [pinned:4]",
            ],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "NotIn: a namespace without the label is selected",
            namespace: "dev",
            labels: &[],
            policies: &[
                "metadata: {name: not-prod}\nspec:\n  namespaceSelector:\n    matchExpressions: [{key: env, operator: NotIn, values: [prod]}]\n  maxPlatforms: 1",
            ],
            edit: no_edit,
            refused: &["spec.platforms"],
        },
        Case {
            name: "NotIn: the excluded value is not selected",
            namespace: "prod",
            labels: &[("env", "prod")],
            policies: &[
                "metadata: {name: not-prod}\nspec:\n  namespaceSelector:\n    matchExpressions: [{key: env, operator: NotIn, values: [prod]}]\n  maxPlatforms: 1",
            ],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "Exists, and matchLabels ANDed with matchExpressions",
            namespace: "sims",
            labels: &[("multiarch.dev/team", "a"), ("gpu", "yes")],
            policies: &[
                "metadata: {name: gpu-a}\nspec:\n  namespaceSelector:\n    matchLabels: {multiarch.dev/team: a}\n    matchExpressions: [{key: gpu, operator: Exists}]\n  jobQueues: [gpu-arm64]",
            ],
            edit: no_edit,
            refused: &["spec.platforms[0].jobQueue", "spec.platforms[1].jobQueue"],
        },
        Case {
            name: "Exists: the label is missing",
            namespace: "sims",
            labels: TEAM_A_NS,
            policies: &[
                "metadata: {name: gpu-a}\nspec:\n  namespaceSelector:\n    matchLabels: {multiarch.dev/team: a}\n    matchExpressions: [{key: gpu, operator: Exists}]\n  jobQueues: [gpu-arm64]",
            ],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "empty lists allow nothing",
            namespace: "sims",
            labels: &[],
            policies: &[
                "metadata: {name: nothing}\nspec: {credentialsSecretArns: [], jobQueues: [], jobDefinitions: []}",
            ],
            edit: no_edit,
            refused: &[
                "spec.source.git.credentialsSecretArn",
                "spec.platforms[0].jobQueue",
                "spec.platforms[1].jobQueue",
                "spec.jobDefinition",
            ],
        },
        Case {
            name: "a policy that sets nothing restricts nothing",
            namespace: "sims",
            labels: &[],
            policies: &["metadata: {name: empty}\nspec: {}"],
            edit: |b| b["spec"]["timeoutSeconds"] = 604_800.into(),
            refused: &[],
        },
        Case {
            name: "a registry host alone allows every repository in it",
            namespace: "sims",
            labels: &[],
            policies: &[
                "metadata: {name: registry}\nspec: {repositoryPrefixes: [123456789012.dkr.ecr.us-gov-west-1.amazonaws.com]}",
            ],
            edit: no_edit,
            refused: &[],
        },
        Case {
            name: "no policy at all",
            namespace: "sims",
            labels: &[],
            policies: &[],
            edit: |b| b["spec"]["output"]["repository"] = "ghcr.io/anyone/anything".into(),
            refused: &[],
        },
    ]
}

/// Team a's build, from the vecoli sample.
fn base_build(namespace: &str) -> Value {
    let mut build: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("config/samples/vecoli.yaml")).unwrap()).unwrap();
    build["metadata"]["namespace"] = namespace.into();
    build["spec"]["output"]["repository"] = format!("{ECR}/team-a/vecoli").into();
    build["spec"]["source"]["git"]["credentialsSecretArn"] = TEAM_A_PAT.into();
    build
}

fn policy_object(yaml: &str) -> Value {
    let mut policy: Value = serde_yaml::from_str(yaml).unwrap();
    policy["apiVersion"] = "multiarch.dev/v1alpha1".into();
    policy["kind"] = "MultiArchBuildPolicy".into();
    policy
}

fn namespace_object(name: &str, labels: &[(&str, &str)]) -> (Value, BTreeMap<String, String>) {
    let mut map: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // The API server sets this label on every namespace.
    map.insert("kubernetes.io/metadata.name".into(), name.into());
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": map}});
    (object, map)
}

#[test]
fn the_build_policy_binds_every_policy_as_a_param_and_allows_when_there_is_none() {
    let (_, vap, binding) = admission_policy("config/admission/build_policy.yaml");
    let crd = MultiArchBuildPolicy::crd();
    assert_eq!(
        vap["spec"]["paramKind"],
        json!({"apiVersion": format!("{}/{}", crd.spec.group, crd.spec.versions[0].name), "kind": crd.spec.names.kind})
    );
    assert_eq!(
        vap["spec"]["matchConstraints"]["resourceRules"],
        json!([{"apiGroups": ["multiarch.dev"], "apiVersions": ["*"], "resources": ["multiarchbuilds"], "operations": ["CREATE"]}])
    );
    assert_eq!(
        binding["spec"]["paramRef"],
        json!({"selector": {}, "parameterNotFoundAction": "Allow"})
    );
}

/// The heart of it: for every case, the admission policy (each policy a param, evaluated as the
/// API server does, raw and with the CRDs' defaults applied) and the controller's check agree on
/// the verdict and on every message.
#[test]
fn the_admission_policy_and_the_controller_give_the_same_verdicts() {
    let (vap, _, _) = admission_policy("config/admission/build_policy.yaml");
    let build_schema = build_schema();
    let policy_schema = policy_schema();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let (mut admitted, mut refused) = (0, 0);
    for case in &cases {
        let mut object = base_build(case.namespace);
        (case.edit)(&mut object);
        let (namespace, labels) = namespace_object(case.namespace, case.labels);
        let policies: Vec<Value> = case.policies.iter().map(|y| policy_object(y)).collect();

        // The controller's check.
        let build: MultiArchBuild = serde_json::from_value(object.clone()).unwrap();
        api::validate(&build.spec).unwrap_or_else(|e| panic!("{}: the case's build is invalid: {e}", case.name));
        let typed: Vec<MultiArchBuildPolicy> = policies
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let controller = api::policy_violations(&typed, case.namespace, &labels, &build.spec);
        let fields: Vec<&str> = controller.iter().map(|m| m.split(' ').next().unwrap()).collect();
        assert_eq!(
            fields, case.refused,
            "{}: the controller refused {controller:#?}",
            case.name
        );

        // The admission policy, each MultiArchBuildPolicy as a param, in name order.
        for defaulted in [false, true] {
            let object = if defaulted {
                apply_defaults(&build_schema, &object)
            } else {
                object.clone()
            };
            let mut params = policies.clone();
            if defaulted {
                params = params.iter().map(|p| apply_defaults(&policy_schema, p)).collect();
            }
            params.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
            let mut admission = Vec::new();
            for param in params {
                let request = Request {
                    object: object.clone(),
                    old_object: Value::Null,
                    params: param,
                    namespace_object: namespace.clone(),
                    request: request_json(
                        "CREATE",
                        "alice",
                        ("multiarch.dev", "v1alpha1", "multiarchbuilds"),
                        case.namespace,
                        "vecoli-3f2a9c1",
                    ),
                };
                admission.extend(vap.evaluate(&request).unwrap());
            }
            assert_eq!(
                admission.join("; "),
                controller.join("; "),
                "{} (CRD defaults applied: {defaulted}): admission and controller disagree",
                case.name
            );
        }
        if controller.is_empty() {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        admitted >= 10 && refused >= 10,
        "{admitted} admitted, {refused} refused"
    );
}

#[test]
fn messages_name_the_field_the_value_the_namespace_the_policy_and_what_is_allowed() {
    let policy: MultiArchBuildPolicy = serde_json::from_value(policy_object(TEAM_A)).unwrap();
    let mut build: MultiArchBuild = serde_json::from_value(base_build("sims")).unwrap();
    build.spec.platforms[1].job_queue = "gpu-queue".into();
    assert_eq!(
        api::violations("team-a", &policy.spec, "sims", &build.spec),
        vec![
            "spec.platforms[1].jobQueue \"gpu-queue\" is not allowed in namespace sims by MultiArchBuildPolicy team-a (allowed: build-arm64, build-amd64)"
        ]
    );
    build.spec.platforms[1].job_queue = "build-amd64".into();
    build.spec.output.repository = format!("{ECR}/team-ab");
    assert_eq!(
        api::violations("team-a", &policy.spec, "sims", &build.spec),
        vec![format!(
            "spec.output.repository \"{ECR}/team-ab\" is not allowed in namespace sims by MultiArchBuildPolicy team-a (allowed prefixes: {ECR}/team-a)"
        )]
    );
    build.spec.output.repository = format!("{ECR}/team-a/vecoli");
    build.spec.output.cache.repository = format!("{ECR}/team-b/vecoli");
    assert_eq!(
        api::violations("team-a", &policy.spec, "sims", &build.spec),
        vec![format!(
            "spec.output.cache.repository \"{ECR}/team-b/vecoli\" is not allowed in namespace sims by MultiArchBuildPolicy team-a (allowed prefixes: {ECR}/team-a)"
        )]
    );
}

#[test]
fn selects_follows_the_label_selector_rules() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let spec = |yaml: &str| -> MultiArchBuildPolicySpec { serde_yaml::from_str(yaml).unwrap() };
    assert!(api::selects(&spec("{}"), &labels(&[])));
    assert!(api::selects(&spec("namespaceSelector: {}"), &labels(&[("a", "b")])));
    let team_a = spec("namespaceSelector: {matchLabels: {team: a, tier: build}}");
    assert!(api::selects(
        &team_a,
        &labels(&[("team", "a"), ("tier", "build"), ("x", "y")])
    ));
    assert!(!api::selects(&team_a, &labels(&[("team", "a")])));
    assert!(!api::selects(&team_a, &labels(&[("team", "b"), ("tier", "build")])));
    let in_ = spec("namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod, staging]}]}");
    assert!(api::selects(&in_, &labels(&[("env", "staging")])));
    assert!(!api::selects(&in_, &labels(&[("env", "dev")])));
    assert!(!api::selects(&in_, &labels(&[])));
    let not_in = spec("namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}");
    assert!(api::selects(&not_in, &labels(&[])));
    assert!(api::selects(&not_in, &labels(&[("env", "dev")])));
    assert!(!api::selects(&not_in, &labels(&[("env", "prod")])));
    let exists = spec("namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}");
    assert!(api::selects(&exists, &labels(&[("env", "")])));
    assert!(!api::selects(&exists, &labels(&[])));
    let absent = spec("namespaceSelector: {matchExpressions: [{key: env, operator: DoesNotExist}]}");
    assert!(api::selects(&absent, &labels(&[])));
    assert!(!api::selects(&absent, &labels(&[("env", "dev")])));
}

// ------------------------------------------------------------------------------------ least authority

const CONTROLLER: &str = "system:serviceaccount:multiarch-system:multiarch-operator";

struct Write<'a> {
    username: &'a str,
    operation: &'a str,
    resource: (&'a str, &'a str),
    namespace: &'a str,
    name: &'a str,
    object: Value,
    old_object: Option<Value>,
}

fn least_authority(write: Write<'_>) -> Option<Vec<String>> {
    let (vap, _, _) = admission_policy("config/admission/least_authority.yaml");
    let (group, resource) = write.resource;
    vap.evaluate(&Request {
        object: write.object,
        old_object: write.old_object.unwrap_or(Value::Null),
        params: Value::Null,
        namespace_object: Value::Null,
        request: request_json(
            write.operation,
            write.username,
            (group, "v1", resource),
            write.namespace,
            write.name,
        ),
    })
}

/// The ConfigMap the controller writes for a succeeded build (src/controller/gating.rs).
fn image_configmap() -> Value {
    let mut build: MultiArchBuild = serde_json::from_value(base_build("sims")).unwrap();
    build.metadata.uid = Some("5f0c-uid".into());
    build.status = Some(MultiArchBuildStatus {
        phase: Some(Phase::Succeeded),
        image: Some(format!("{ECR}/team-a/vecoli@sha256:{}", "a".repeat(64))),
        digest: Some(format!("sha256:{}", "a".repeat(64))),
        ..Default::default()
    });
    let configmap: ConfigMap = gating::image_configmap(&build).unwrap();
    assert_eq!(configmap.metadata.name.as_deref(), Some("vecoli-3f2a9c1-image"));
    serde_json::to_value(configmap).unwrap()
}

fn configmap_write(operation: &str, object: Value, old_object: Option<Value>) -> Option<Vec<String>> {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("sims").to_string();
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    least_authority(Write {
        username: CONTROLLER,
        operation,
        resource: ("", "configmaps"),
        namespace: &namespace,
        name: &name,
        object,
        old_object,
    })
}

fn allowed(verdict: Option<Vec<String>>, what: &str) {
    assert_eq!(verdict, Some(vec![]), "{what} should be allowed");
}

fn refused(verdict: Option<Vec<String>>, what: &str, message: &str) {
    let messages = verdict.unwrap_or_else(|| panic!("{what}: the policy did not apply"));
    assert!(
        messages.iter().any(|m| m.contains(message)),
        "{what} should be refused with {message:?}: {messages:?}"
    );
}

fn aws_auth() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "aws-auth", "namespace": "kube-system"},
           "data": {"mapRoles": "- rolearn: arn:aws:iam::123456789012:role/nodes\n  groups: [system:masters]\n"}})
}

#[test]
fn the_controller_writes_only_its_own_image_configmaps() {
    let own = image_configmap();
    allowed(
        configmap_write("CREATE", own.clone(), None),
        "creating its <build>-image ConfigMap",
    );
    let mut rewritten = own.clone();
    rewritten["data"]["tag"] = "other".into();
    allowed(
        configmap_write("UPDATE", rewritten, Some(own.clone())),
        "re-applying its ConfigMap",
    );

    refused(
        configmap_write("CREATE", aws_auth(), None),
        "creating kube-system/aws-auth",
        "refused kube-system/aws-auth",
    );
    let mut hijacked = aws_auth();
    hijacked["data"]["mapRoles"] =
        "- rolearn: arn:aws:iam::123456789012:role/attacker\n  groups: [system:masters]\n".into();
    refused(
        configmap_write("UPDATE", hijacked, Some(aws_auth())),
        "patching kube-system/aws-auth",
        "kube-system/aws-auth",
    );

    // Dressing aws-auth up as an image ConfigMap does not help: its old self is not ours.
    let mut disguised = aws_auth();
    disguised["metadata"] = own["metadata"].clone();
    disguised["metadata"]["name"] = "aws-auth".into();
    disguised["metadata"]["namespace"] = "kube-system".into();
    refused(
        configmap_write("UPDATE", disguised, Some(aws_auth())),
        "aws-auth with the label",
        "writes only the ConfigMaps <build>-image",
    );

    let mut unlabelled = own.clone();
    unlabelled["metadata"].as_object_mut().unwrap().remove("labels");
    refused(
        configmap_write("CREATE", unlabelled.clone(), None),
        "an image ConfigMap without the label",
        "<build>-image",
    );
    let mut taken_over = own.clone();
    taken_over["metadata"]["resourceVersion"] = "7".into();
    refused(
        configmap_write("UPDATE", own.clone(), Some(unlabelled)),
        "taking over someone else's <name>-image ConfigMap",
        "changes only ConfigMaps it created",
    );
    let mut orphan = own.clone();
    orphan["metadata"].as_object_mut().unwrap().remove("ownerReferences");
    refused(
        configmap_write("CREATE", orphan, None),
        "an image ConfigMap without owner",
        "controlled by that MultiArchBuild",
    );
    let mut misnamed = own.clone();
    misnamed["metadata"]["name"] = "other-build-image".into();
    refused(
        configmap_write("CREATE", misnamed, None),
        "an image ConfigMap of another build's name",
        "<build>-image",
    );

    // The <job>-images ConfigMap of a Job waiting on several builds, owned by that Job.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": "nextflow-head", "namespace": "sims", "uid": "job-uid",
                                  "labels": {AFTER_LABEL: ""},
                                  "annotations": {gating::AFTER_BUILDS_ANNOTATION: "base,vecoli-3f2a9c1"}},
                     "spec": {"suspend": true, "template": {"spec": {"containers": []}}}});
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(job).unwrap();
    let succeeded = |name: &str| {
        let mut build: MultiArchBuild = serde_json::from_value(base_build("sims")).unwrap();
        build.metadata.name = Some(name.into());
        build.status = Some(MultiArchBuildStatus {
            phase: Some(Phase::Succeeded),
            image: Some(format!("{ECR}/team-a/{name}@sha256:{}", "a".repeat(64))),
            ..Default::default()
        });
        (name.to_string(), Some(build))
    };
    let builds = [succeeded("base"), succeeded("vecoli-3f2a9c1")].into_iter().collect();
    let images = serde_json::to_value(gating::images_configmap(&job, &builds).unwrap()).unwrap();
    assert_eq!(images["metadata"]["name"], "nextflow-head-images");
    allowed(
        configmap_write("CREATE", images.clone(), None),
        "creating the <job>-images ConfigMap of a waiting Job",
    );
    let mut other_job = images.clone();
    other_job["metadata"]["name"] = "other-job-images".into();
    refused(
        configmap_write("CREATE", other_job, None),
        "a <job>-images ConfigMap of another Job's name",
        "<job>-images (owned by that Job)",
    );
    let mut job_owned_image = images.clone();
    job_owned_image["metadata"]["name"] = "nextflow-head-image".into();
    refused(
        configmap_write("CREATE", job_owned_image, None),
        "a <name>-image ConfigMap owned by a Job",
        "<build>-image (controlled by that MultiArchBuild)",
    );

    refused(
        configmap_write("DELETE", Value::Null, Some(own.clone())),
        "deleting its ConfigMap",
        "never deletes configmaps",
    );

    // Anyone else is not this policy's business.
    for user in ["kubernetes-admin", "system:serviceaccount:kube-system:aws-node"] {
        let verdict = least_authority(Write {
            username: user,
            operation: "UPDATE",
            resource: ("", "configmaps"),
            namespace: "kube-system",
            name: "aws-auth",
            object: aws_auth(),
            old_object: Some(aws_auth()),
        });
        assert_eq!(verdict, None, "{user}: the policy applies only to the controller");
    }
    // The same ServiceAccount name in another namespace (an overlay moved the controller) is held too.
    let moved = least_authority(Write {
        username: "system:serviceaccount:other:multiarch-operator",
        operation: "CREATE",
        resource: ("", "configmaps"),
        namespace: "kube-system",
        name: "aws-auth",
        object: aws_auth(),
        old_object: None,
    });
    refused(
        moved,
        "the controller moved to another namespace",
        "kube-system/aws-auth",
    );
}

fn waiting_job() -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nextflow-head", "namespace": "sims", "resourceVersion": "41", "generation": 1,
                     "labels": {AFTER_LABEL: "vecoli-3f2a9c1"},
                     "annotations": {"team": "a"}},
        "spec": {"suspend": true, "backoffLimit": 0, "parallelism": 1,
                 "template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "head", "image": "nextflow/nextflow:24.10.0"}]}}},
        "status": {}
    })
}

fn job_update(old: &Value, patch: Value) -> Option<Vec<String>> {
    let mut new = old.clone();
    json_patch::merge(&mut new, &patch);
    // What the API server changes on any update.
    new["metadata"]["resourceVersion"] = "42".into();
    new["metadata"]["generation"] = 2.into();
    least_authority(Write {
        username: CONTROLLER,
        operation: "UPDATE",
        resource: ("batch", "jobs"),
        namespace: "sims",
        name: "nextflow-head",
        object: new,
        old_object: Some(old.clone()),
    })
}

#[test]
fn the_controller_only_releases_waiting_jobs() {
    let job = waiting_job();
    // The two merge patches src/controller/downstream.rs sends.
    allowed(
        job_update(&job, json!({"spec": {"suspend": false}})),
        "releasing a waiting Job",
    );
    allowed(
        job_update(
            &job,
            json!({"metadata": {"annotations": {NOTIFIED_ANNOTATION: "uid/Failed"}}}),
        ),
        "marking a waiting Job as told",
    );

    let only_release = "may only release a Job labelled multiarch.dev/after";
    refused(
        job_update(
            &job,
            json!({"spec": {"suspend": false, "template": {"spec": {"containers": [{"name": "head", "image": "attacker/miner"}]}}}}),
        ),
        "changing the image",
        only_release,
    );
    refused(
        job_update(&job, json!({"spec": {"parallelism": 50}})),
        "changing parallelism",
        only_release,
    );
    refused(
        job_update(&job, json!({"spec": {"ttlSecondsAfterFinished": 1}})),
        "adding a spec field",
        only_release,
    );
    refused(
        job_update(&job, json!({"spec": {"backoffLimit": null}})),
        "removing a spec field",
        only_release,
    );
    refused(
        job_update(&job, json!({"metadata": {"annotations": {"team": "b"}}})),
        "changing another annotation",
        only_release,
    );
    refused(
        job_update(&job, json!({"metadata": {"labels": {"extra": "x"}}})),
        "adding a label",
        only_release,
    );
    refused(
        job_update(&job, json!({"metadata": {"finalizers": ["x/y"]}})),
        "adding a finalizer",
        only_release,
    );
    let mut running = job.clone();
    running["spec"]["suspend"] = false.into();
    refused(
        job_update(&running, json!({"spec": {"suspend": true}})),
        "suspending a running Job",
        only_release,
    );
    let mut unrelated = job.clone();
    unrelated["metadata"].as_object_mut().unwrap().remove("labels");
    refused(
        job_update(&unrelated, json!({"spec": {"suspend": false}})),
        "releasing a Job that waits on nothing",
        only_release,
    );

    let write = |operation: &str, object: Value, old: Option<Value>| {
        least_authority(Write {
            username: CONTROLLER,
            operation,
            resource: ("batch", "jobs"),
            namespace: "sims",
            name: "nextflow-head",
            object,
            old_object: old,
        })
    };
    refused(
        write("CREATE", job.clone(), None),
        "creating a Job",
        "never creates Jobs",
    );
    refused(
        write("DELETE", Value::Null, Some(job.clone())),
        "deleting a Job",
        "never deletes jobs",
    );
}
