//! `multiarch-operator verify`: what a user runs before trusting an image. It checks, with a
//! public key, the index's signature, the provenance's signature, that the provenance names the
//! index and every platform image as its subjects, and that every image and the provenance name
//! the same commit (the one asked for, with `--commit`).

use aws_config::SdkConfig;
use serde_json::Value;

use crate::{
    api::SignatureStatus,
    attest::{self, statement},
    batch::registry_auth,
    cli::VerifyArgs,
    config,
    provenance::{REVISION_LABEL, is_commit_id},
    registry::IndexChild,
    signing::{KeyUri, PublicKey, Signer},
};

/// Checks `args.image`; the report when everything verifies, else one line saying why not.
pub async fn run(args: &VerifyArgs) -> Result<String, String> {
    let (repository, reference) = split_image(&args.image)?;
    if let Some(commit) = &args.commit
        && !is_commit_id(commit)
    {
        return Err(format!(
            "--commit {commit:?}: expected a full commit id (40 lowercase hex digits)"
        ));
    }
    let key_uri = key_uri(&args.key);
    let needs_aws = matches!(key_uri, KeyUri::Kms { .. }) || registry_auth(repository) == "ecr";
    let aws = if needs_aws {
        config::aws_for_cli(args.region.as_deref()).await?
    } else {
        SdkConfig::builder().build()
    };
    let key = public_key(key_uri, &aws).await?;
    let registry = config::registry(&args.registry, repository, &aws);
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", args.image);

    let index = registry
        .manifest(repository, reference)
        .await
        .map_err(|e| unreadable(&e))?
        .ok_or_else(|| format!("refused {}: the registry has no such image", args.image))?;
    let pinned = format!("{repository}@{}", index.digest);
    let refused = |reason: String| format!("refused {pinned}: {reason}");
    let found = attest::check(&registry, repository, &index.digest, Some(&key))
        .await
        .map_err(|e| unreadable(&e))?;
    let signature = found.signature.map_err(refused)?;
    let (provenance, statement) = found.provenance.map_err(refused)?;
    let children = registry
        .index_children(repository, &index)
        .await
        .map_err(|e| unreadable(&e))?;
    let commit = judge(&statement, &children, args.commit.as_deref()).map_err(refused)?;
    Ok(report(
        &pinned,
        &args.key,
        &signature,
        &provenance.image,
        &statement,
        &commit,
        &children,
    ))
}

/// `repository@sha256:…` or `repository:tag` (a `:` after the last `/` starts the tag).
fn split_image(image: &str) -> Result<(&str, &str), String> {
    let split = image.split_once('@').or_else(|| {
        let (repository, tag) = image.rsplit_once(':')?;
        (!tag.contains('/')).then_some((repository, tag))
    });
    match split {
        Some((repository, reference)) if !repository.is_empty() && !reference.is_empty() => Ok((repository, reference)),
        _ => Err(format!(
            "{image:?}: expected repository@sha256:<hex> (what status.image names) or repository:tag"
        )),
    }
}

/// `awskms://…` and `file://…` as for `--signing-key`; anything else is a path.
fn key_uri(key: &str) -> KeyUri {
    key.parse()
        .unwrap_or_else(|_| KeyUri::File(key.strip_prefix("file://").unwrap_or(key).into()))
}

/// The public key: from KMS (GetPublicKey), or from a PEM file (a public key, or the public half
/// of a private key).
async fn public_key(uri: KeyUri, aws: &SdkConfig) -> Result<PublicKey, String> {
    match uri {
        KeyUri::File(path) => {
            let pem =
                std::fs::read_to_string(&path).map_err(|e| format!("--key {}: cannot read it: {e}", path.display()))?;
            PublicKey::from_pem(&pem).map_err(|e| format!("--key {}: {e}", path.display()))
        }
        kms => {
            let signer = Signer::open(kms, aws_sdk_kms::config::Builder::from(aws)).map_err(|e| e.to_string())?;
            signer.public_key().await.map_err(|e| e.to_string())
        }
    }
}

/// Whether the verified `statement` covers the index's `children` (each a subject) and names
/// the commit every child's revision label names (and `expected`, when given); that commit.
fn judge(statement: &Value, children: &[IndexChild], expected: Option<&str>) -> Result<String, String> {
    let commit = statement::source_commit(statement)
        .filter(|c| is_commit_id(c))
        .ok_or("the provenance names no source commit")?;
    if let Some(expected) = expected
        && commit != expected
    {
        return Err(format!(
            "the provenance names commit {commit}, not {expected} (--commit)"
        ));
    }
    for child in children {
        if !statement::names_subject(statement, &child.digest) {
            return Err(format!(
                "the provenance does not name the {} image {} as a subject",
                child.platform, child.digest
            ));
        }
        let labelled = child.labels.get(REVISION_LABEL).map(String::as_str);
        if labelled != Some(commit) {
            return Err(format!(
                "the {} image {} is labelled {REVISION_LABEL}={}, but the provenance names commit {commit}",
                child.platform,
                child.digest,
                labelled.unwrap_or("(none)")
            ));
        }
    }
    Ok(commit.to_string())
}

/// What was verified, a fact a line.
fn report(
    pinned: &str,
    key: &str,
    signature: &SignatureStatus,
    provenance_image: &str,
    statement: &Value,
    commit: &str,
    children: &[IndexChild],
) -> String {
    let build = &statement["predicate"]["buildDefinition"];
    let source = &build["externalParameters"]["source"];
    let mut lines = vec![
        format!("verified {pinned}"),
        format!("  signature   {} (key {key})", signature.image),
        format!("  provenance  {provenance_image} (SLSA provenance v1, signed)"),
        format!(
            "  builder     {}",
            statement["predicate"]["runDetails"]["builder"]["id"]
                .as_str()
                .unwrap_or("(not named)")
        ),
        format!(
            "  source      {} at {commit} (revision {})",
            source["url"].as_str().unwrap_or("(not named)"),
            source["revision"].as_str().unwrap_or("(not named)")
        ),
    ];
    let jobs = statement["predicate"]["runDetails"]["byproducts"].as_array();
    for child in children {
        let job = jobs
            .into_iter()
            .flatten()
            .find(|j| j["annotations"]["platform"] == child.platform.as_str());
        let ran = job.map_or(String::new(), |j| {
            format!(
                ", Batch job {} ({} attempt(s))",
                j["uri"].as_str().unwrap_or_default(),
                j["annotations"]["attempts"].as_i64().unwrap_or_default()
            )
        });
        lines.push(format!("  {:<11} {}{ran}", child.platform.as_str(), child.digest));
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::api::Platform;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn child(platform: Platform, digest: &str, commit: &str) -> IndexChild {
        IndexChild {
            platform,
            digest: digest.into(),
            labels: BTreeMap::from([(REVISION_LABEL.to_string(), commit.to_string())]),
        }
    }

    fn statement(subjects: &[&str]) -> Value {
        json!({
            "subject": subjects.iter().map(|d| json!({"digest": {"sha256": d.trim_start_matches("sha256:")}})).collect::<Vec<_>>(),
            "predicate": {"buildDefinition": {"resolvedDependencies": [
                {"uri": "git+https://git.example/app.git", "digest": {"gitCommit": COMMIT}},
            ]}},
        })
    }

    #[test]
    fn images_are_named_by_digest_or_tag() {
        assert_eq!(split_image("reg:5000/a/b@sha256:ab"), Ok(("reg:5000/a/b", "sha256:ab")));
        assert_eq!(split_image("reg:5000/a/b:v1"), Ok(("reg:5000/a/b", "v1")));
        assert!(
            split_image("reg:5000/a/b")
                .unwrap_err()
                .contains("expected repository@sha256")
        );
        assert!(split_image("a/b:").is_err());
    }

    #[test]
    fn a_statement_covering_every_image_and_one_commit_verifies() {
        let children = [
            child(Platform::LinuxAmd64, "sha256:aa", COMMIT),
            child(Platform::LinuxArm64, "sha256:bb", COMMIT),
        ];
        let statement = statement(&["sha256:ii", "sha256:aa", "sha256:bb"]);
        assert_eq!(judge(&statement, &children, None), Ok(COMMIT.to_string()));
        assert_eq!(judge(&statement, &children, Some(COMMIT)), Ok(COMMIT.to_string()));
    }

    #[test]
    fn another_commit_a_missing_subject_or_a_relabelled_image_is_refused() {
        let children = [child(Platform::LinuxAmd64, "sha256:aa", COMMIT)];
        let other = "f".repeat(40);
        assert_eq!(
            judge(&statement(&["sha256:aa"]), &children, Some(&other)),
            Err(format!("the provenance names commit {COMMIT}, not {other} (--commit)"))
        );
        assert_eq!(
            judge(&statement(&["sha256:ii"]), &children, None),
            Err("the provenance does not name the linux/amd64 image sha256:aa as a subject".into())
        );
        let relabelled = [child(Platform::LinuxAmd64, "sha256:aa", &other)];
        assert!(
            judge(&statement(&["sha256:aa"]), &relabelled, None)
                .unwrap_err()
                .contains("but the provenance names commit")
        );
    }
}
