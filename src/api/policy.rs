//! The MultiArchBuildPolicy v1alpha1 resource: what the builds of a namespace may use.
//!
//! A cluster administrator writes one policy per team (or per group of namespaces). It is enforced
//! twice, with the same verdicts: at `kubectl apply` by the ValidatingAdmissionPolicy
//! `multiarch-operator-build-policy` (CEL over `object`, `params` = each policy, and
//! `namespaceObject`; config/admission/build_policy.yaml), and by the controller before it submits
//! anything ([`policy_violations()`]). tests/policy.rs evaluates the admission policy's CEL
//! in-process against the same cases as [`violations()`].
//!
//! Semantics, in one place:
//! - a policy applies to a namespace when its `namespaceSelector` selects the namespace's labels
//!   ([`selects()`], the `metav1.LabelSelector` rules restricted to what CEL can evaluate);
//! - every policy that applies must be satisfied (policies add up, like the admission policy's
//!   params: each one is evaluated, any one refuses);
//! - a field that is absent restricts nothing; a list that is present but empty allows nothing;
//! - no policy at all restricts nothing (today's behaviour).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MultiArchBuildSpec, validate::patterns};

/// `host[:port]` optionally followed by whole path segments: a repository or a prefix of one.
/// [`patterns::REPOSITORY`] with the path made optional and no trailing `/`.
pub const REPOSITORY_PREFIX: &str = r"^(localhost|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+)(:[0-9]{1,5})?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*$";

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
const LABEL_KEY: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// A label value: empty, or at most 63 characters of letters, digits, `-`, `_`, `.`.
const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// What the MultiArchBuilds of some namespaces may use: which repositories they push to, which
/// git credentials the builder may read, which Batch queues and job definitions run them, how many
/// platforms and how long. Cluster-scoped: only a cluster administrator writes it. Every policy
/// whose namespaceSelector selects a build's namespace applies, and the build must satisfy all of
/// them; a field left out restricts nothing. Enforced at `kubectl apply` (the
/// ValidatingAdmissionPolicy multiarch-operator-build-policy) and again by the controller before it
/// submits any job (condition Ready=False, reason PolicyViolation).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "multiarch.dev",
    version = "v1alpha1",
    kind = "MultiArchBuildPolicy",
    plural = "multiarchbuildpolicies",
    shortname = "mabpolicy",
    derive = "PartialEq",
    derive = "Default",
    doc = "A MultiArchBuildPolicy: what the MultiArchBuilds of the namespaces it selects may use (repositories, git credentials, Batch queues and job definitions, platforms, timeout).",
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".spec.namespaceSelector",
        description = "The namespaces this policy applies to"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MultiArchBuildPolicySpec {
    /// The namespaces this policy applies to, by their labels (`kubernetes.io/metadata.name`
    /// carries each namespace's name). Empty or left out: every namespace.
    #[serde(default)]
    pub namespace_selector: NamespaceSelector,

    /// `spec.output.repository`, and `spec.output.cache.repository` when set, must be one of these
    /// or lie under one, compared on whole path segments: `r.example/team-a` allows
    /// `r.example/team-a` and `r.example/team-a/app`, not `r.example/team-ab`; a registry host
    /// alone (`123456789012.dkr.ecr.us-east-1.amazonaws.com`) allows every repository in it. At
    /// most 64 entries. Empty list: no repository is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512), pattern(REPOSITORY_PREFIX)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub repository_prefixes: Option<Vec<String>>,

    /// The Secrets Manager secret ARNs a build may name in `spec.source.git.credentialsSecretArn`,
    /// exactly as builds write them. A build without credentials is always allowed. At most 64
    /// entries. Empty list: no build may use credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 2048), pattern(patterns::SECRET_ARN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub credentials_secret_arns: Option<Vec<String>>,

    /// The AWS Batch job queues every `spec.platforms[].jobQueue` must be one of, exactly as
    /// builds write them (a name and its ARN are different entries). At most 64 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256), pattern(patterns::JOB_QUEUE)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub job_queues: Option<Vec<String>>,

    /// The Batch job definitions `spec.jobDefinition` may name, exactly (`name`, `name:revision`
    /// or ARN; `multiarch-builder` does not allow `multiarch-builder:3`). A build without
    /// `spec.jobDefinition` runs the controller's `--default-job-definition` and is always
    /// allowed. At most 64 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 256), pattern(patterns::JOB_DEFINITION))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub job_definitions: Option<Vec<String>>,

    /// The most entries `spec.platforms` may have (1 to 8): each platform is one Batch job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(range(min = 1, max = 8))]
    pub max_platforms: Option<i32>,

    /// The longest `spec.timeoutSeconds` allowed (60 to 604800). A build that sets none runs with
    /// the default 3600 and is checked as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    #[schemars(range(min = 60, max = 604_800))]
    pub max_timeout_seconds: Option<i64>,
}

/// Which namespaces a policy applies to: a `metav1.LabelSelector` (matchLabels and
/// matchExpressions, ANDed). Empty: every namespace.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels the namespace must carry with exactly these values. At most 16.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE}))]
    pub match_labels: BTreeMap<String, String>,

    /// Label requirements the namespace must all meet. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One label requirement, as in a `metav1.LabelSelector`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0").message("namespaceSelector.matchExpressions[]: In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct LabelRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317), pattern(LABEL_KEY))]
    pub key: String,

    /// `In` (the label is one of `values`), `NotIn` (the label is missing or not one of
    /// `values`), `Exists` or `DoesNotExist`.
    pub operator: LabelOperator,

    /// The values for `In` and `NotIn`; none for `Exists` and `DoesNotExist`. At most 16.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 63), pattern(LABEL_VALUE)))]
    pub values: Vec<String>,
}

/// How a label requirement compares.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOperator {
    /// The label is set to one of the values.
    In,
    /// The label is missing or set to none of the values.
    NotIn,
    /// The label is set, to anything.
    Exists,
    /// The label is not set.
    DoesNotExist,
}

/// Leaves a field out of the schema's `nullable` set: the API server then drops an explicit `null`
/// (as serde reads it: no restriction) instead of storing it, so the admission policy's CEL never
/// sees a null where the controller sees nothing.
fn not_nullable(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            schema.insert("type".into(), only);
        }
    }
}

/// Whether `policy` applies to a namespace with these labels (pass the Namespace object's labels
/// as the API server has them, `kubernetes.io/metadata.name` included).
pub fn selects(policy: &MultiArchBuildPolicySpec, namespace_labels: &BTreeMap<String, String>) -> bool {
    let selector = &policy.namespace_selector;
    let labels_match = selector
        .match_labels
        .iter()
        .all(|(key, value)| namespace_labels.get(key) == Some(value));
    let expressions_match = selector.match_expressions.iter().all(|requirement| {
        let label = namespace_labels.get(&requirement.key);
        match requirement.operator {
            LabelOperator::In => label.is_some_and(|v| requirement.values.contains(v)),
            LabelOperator::NotIn => label.is_none_or(|v| !requirement.values.contains(v)),
            LabelOperator::Exists => label.is_some(),
            LabelOperator::DoesNotExist => label.is_none(),
        }
    });
    labels_match && expressions_match
}

/// What `spec` does that the policy named `policy_name` does not allow in `namespace`: one message
/// per violation, naming the field, the value, the namespace, the policy and what is allowed, in
/// field order. Empty when the build complies. Does not look at the namespace selector: call
/// [`selects()`] first (or use [`policy_violations()`]).
///
/// The admission policy's CEL messages are these very strings (one validation per field; the
/// job queues' messages joined with `; `).
pub fn violations(
    policy_name: &str,
    policy: &MultiArchBuildPolicySpec,
    namespace: &str,
    spec: &MultiArchBuildSpec,
) -> Vec<String> {
    let scope = format!(" in namespace {namespace} by MultiArchBuildPolicy {policy_name}");
    let mut out = Vec::new();

    if let (Some(allowed), Some(arn)) = (&policy.credentials_secret_arns, &spec.source.git.credentials_secret_arn)
        && !allowed.contains(arn)
    {
        out.push(format!(
            "spec.source.git.credentialsSecretArn \"{arn}\" is not allowed{scope} (allowed: {})",
            listed(allowed)
        ));
    }
    if let Some(prefixes) = &policy.repository_prefixes {
        // The cache repository too: a cache under another team's prefix would let this namespace
        // write the layers that team's builds read.
        for (field, repository) in spec.pushed_repositories() {
            if !prefixes.iter().any(|prefix| under_prefix(repository, prefix)) {
                out.push(format!(
                    "{field} \"{repository}\" is not allowed{scope} (allowed prefixes: {})",
                    listed(prefixes)
                ));
            }
        }
    }
    if let Some(max) = policy.max_platforms
        && spec.platforms.len() > usize::try_from(max).unwrap_or(0)
    {
        out.push(format!(
            "spec.platforms has {} entries; at most {max} are allowed{scope}",
            spec.platforms.len()
        ));
    }
    if let Some(queues) = &policy.job_queues {
        for (i, target) in spec.platforms.iter().enumerate() {
            if !queues.contains(&target.job_queue) {
                out.push(format!(
                    "spec.platforms[{i}].jobQueue \"{}\" is not allowed{scope} (allowed: {})",
                    target.job_queue,
                    listed(queues)
                ));
            }
        }
    }
    if let (Some(allowed), Some(definition)) = (&policy.job_definitions, &spec.job_definition)
        && !allowed.contains(definition)
    {
        out.push(format!(
            "spec.jobDefinition \"{definition}\" is not allowed{scope} (allowed: {})",
            listed(allowed)
        ));
    }
    if let Some(max) = policy.max_timeout_seconds
        && spec.timeout_seconds > max
    {
        out.push(format!(
            "spec.timeoutSeconds {} is more than the {max} allowed{scope}",
            spec.timeout_seconds
        ));
    }
    out
}

/// Every violation of every policy that selects the namespace, policies in name order: what the
/// controller checks before it submits anything. `namespace_labels` are the Namespace object's
/// labels. Empty when the build may run (also when no policy exists).
pub fn policy_violations<'a>(
    policies: impl IntoIterator<Item = &'a MultiArchBuildPolicy>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    spec: &MultiArchBuildSpec,
) -> Vec<String> {
    let mut selecting: Vec<&MultiArchBuildPolicy> = policies
        .into_iter()
        .filter(|policy| selects(&policy.spec, namespace_labels))
        .collect();
    selecting.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selecting
        .into_iter()
        .flat_map(|policy| {
            let name = policy.metadata.name.as_deref().unwrap_or_default();
            violations(name, &policy.spec, namespace, spec)
        })
        .collect()
}

/// Whether `repository` is `prefix` or lies under it, on whole path segments.
fn under_prefix(repository: &str, prefix: &str) -> bool {
    repository
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn listed(values: &[String]) -> String {
    if values.is_empty() {
        "none".into()
    } else {
        values.join(", ")
    }
}

/// The policy CRD as YAML, exactly as committed in `crds/multiarch.dev_multiarchbuildpolicies.yaml`.
pub fn policy_crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    super::crd_to_yaml(&MultiArchBuildPolicy::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compare_whole_segments() {
        assert!(under_prefix("r.example/team-a", "r.example/team-a"));
        assert!(under_prefix("r.example/team-a/app", "r.example/team-a"));
        assert!(under_prefix("r.example/team-a/app", "r.example"));
        assert!(!under_prefix("r.example/team-ab", "r.example/team-a"));
        assert!(!under_prefix("r.example:5000/team-a", "r.example"));
    }

    #[test]
    fn patterns_compile_and_read_as_intended() {
        let prefix = regex::Regex::new(REPOSITORY_PREFIX).unwrap();
        assert!(prefix.is_match("123456789012.dkr.ecr.us-east-1.amazonaws.com"));
        assert!(prefix.is_match("r.example/team-a"));
        assert!(!prefix.is_match("r.example/team-a/"));
        assert!(!prefix.is_match("r.example/Team-A"));
        let key = regex::Regex::new(LABEL_KEY).unwrap();
        assert!(key.is_match("kubernetes.io/metadata.name"));
        assert!(key.is_match("team"));
        assert!(!key.is_match("/team"));
        let value = regex::Regex::new(LABEL_VALUE).unwrap();
        assert!(value.is_match(""));
        assert!(value.is_match("team-a"));
        assert!(!value.is_match("-a"));
    }
}
