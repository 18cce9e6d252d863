//! Strict reading of a MultiArchBuild file for the command line: every field is checked against
//! the CRD's structural schema, so a misspelt or misplaced field is an error naming its path
//! instead of being dropped silently. The API types themselves stay tolerant: the controller must
//! read objects written under a newer CRD.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use serde_yaml::Value;

use crate::api::MultiArchBuild;

/// Reads `text` as a MultiArchBuild, refusing what the cluster would refuse or prune: an empty
/// document, another kind or apiVersion, a field the schema does not know. The error is one line
/// and names the field path.
pub fn parse_build(text: &str) -> Result<MultiArchBuild, String> {
    let crd = MultiArchBuild::crd();
    let kind = crd.spec.names.kind.clone();
    let versions: Vec<String> = crd
        .spec
        .versions
        .iter()
        .map(|v| format!("{}/{}", crd.spec.group, v.name))
        .collect();
    let expected = versions.first().cloned().unwrap_or_default();
    let value: Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML: {}", crate::util::one_line(&e.to_string())))?;
    let map = match &value {
        Value::Null => {
            return Err(format!(
                "empty: expected a {kind} (apiVersion: {expected}, kind: {kind})"
            ));
        }
        Value::Mapping(map) => map,
        _ => {
            return Err(format!(
                "not a {kind}: expected a YAML mapping with apiVersion: {expected} and kind: {kind}"
            ));
        }
    };
    let found = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    match found("kind") {
        Some(k) if k == kind => {}
        Some(k) => return Err(format!("kind: expected {kind}, found {k}")),
        None => return Err(format!("kind: missing; expected kind: {kind}")),
    }
    match found("apiVersion") {
        Some(v) if versions.contains(&v) => {}
        Some(v) => return Err(format!("apiVersion: expected {expected}, found {v}")),
        None => return Err(format!("apiVersion: missing; expected apiVersion: {expected}")),
    }
    let schema = crd
        .spec
        .versions
        .iter()
        .find(|v| found("apiVersion").as_deref() == Some(&format!("{}/{}", crd.spec.group, v.name)))
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or("the CRD has no schema")?;
    check(&value, schema, schema, "")?;
    serde_yaml::from_str(text).map_err(|e| crate::util::one_line(&e.to_string()))
}

/// The properties an object schema names, its `anyOf`/`oneOf`/`allOf` branches' included.
fn properties(schema: &JSONSchemaProps) -> BTreeMap<&str, &JSONSchemaProps> {
    let mut out: BTreeMap<&str, &JSONSchemaProps> = BTreeMap::new();
    for (name, prop) in schema.properties.iter().flatten() {
        out.insert(name, prop);
    }
    for branch in [&schema.any_of, &schema.one_of, &schema.all_of]
        .into_iter()
        .flatten()
        .flatten()
    {
        for (name, prop) in properties(branch) {
            out.entry(name).or_insert(prop);
        }
    }
    out
}

fn check(value: &Value, schema: &JSONSchemaProps, root: &JSONSchemaProps, path: &str) -> Result<(), String> {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return Ok(());
    }
    match value {
        Value::Mapping(map) => {
            let known = properties(schema);
            let additional = match &schema.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(s)) => Some(Some(s.as_ref())),
                Some(JSONSchemaPropsOrBool::Bool(true)) => Some(None),
                _ => None,
            };
            // An object schema without properties (metadata) is not checked further.
            if known.is_empty() && additional.is_none() {
                return Ok(());
            }
            for (key, child) in map {
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                // Every object has these; the CRD's schema leaves them to the API server.
                if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match (known.get(name.as_str()), additional) {
                    (Some(s), _) => check(child, s, root, &child_path)?,
                    (None, Some(Some(s))) => check(child, s, root, &child_path)?,
                    (None, Some(None)) => {}
                    (None, None) => {
                        let hint = suggestion(&name, &known, root, path);
                        return Err(format!("{child_path}: unknown field{hint}"));
                    }
                }
            }
            Ok(())
        }
        Value::Sequence(items) => {
            let item_schema = match &schema.items {
                Some(JSONSchemaPropsOrArray::Schema(s)) => s.as_ref(),
                _ => return Ok(()),
            };
            for (i, item) in items.iter().enumerate() {
                check(item, item_schema, root, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `; did you mean X?`: a sibling spelt nearly the same, else the same name elsewhere in the
/// schema (a field put one level too high or low), else nothing.
fn suggestion(name: &str, siblings: &BTreeMap<&str, &JSONSchemaProps>, root: &JSONSchemaProps, parent: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let close = siblings
        .keys()
        .map(|s| (distance(&lower, &s.to_ascii_lowercase()), *s))
        .filter(|(d, s)| *d <= name.len().div_ceil(3).max(2) || (name.len() >= 4 && s.starts_with(name)))
        .min();
    if let Some((_, s)) = close {
        return format!("; did you mean {s}?");
    }
    let mut found = Vec::new();
    find(root, "", name, &mut found, 0);
    // Prefer a place under the object the field was written in.
    found.sort_by_key(|p| !p.starts_with(parent));
    match found.first() {
        Some(p) => format!("; did you mean {p}?"),
        None => String::new(),
    }
}

/// Paths (array items written `[]`) where a property called `name` exists.
fn find(schema: &JSONSchemaProps, path: &str, name: &str, out: &mut Vec<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    for (key, prop) in properties(schema) {
        let p = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        if key == name {
            out.push(p.clone());
        }
        find(prop, &p, name, out, depth + 1);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        find(items, &format!("{path}[]"), name, out, depth + 1);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = &schema.additional_properties {
        find(s, &format!("{path}.*"), name, out, depth + 1);
    }
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb)).min(row[j] + 1).min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("timeoutsecs", "timeoutseconds"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("retries", "retry"), 3);
    }
}
