//! The command line's own messages, each asserted exactly: strict reading of build files, a
//! missing region, AWS out of reach. No cluster, no AWS: AWS is a closed port here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const VALID: &str = "apiVersion: multiarch.dev/v1alpha1
kind: MultiArchBuild
metadata:
  name: demo
spec:
  source:
    git:
      url: https://github.com/example/app.git
      revision: main
  output:
    repository: registry.example.com/team/app
    tag: v1
  platforms:
    - platform: linux/amd64
      jobQueue: amd
    - platform: linux/arm64
      jobQueue: arm
  timeoutSeconds: 600
";

/// Runs `multiarch-operator ARGS` in `dir` with no AWS configuration from the environment.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multiarch-operator"));
    cmd.current_dir(dir).args(args).stdin(Stdio::null());
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    // No ~/.aws: no profile, no region, no credentials.
    cmd.env("HOME", dir)
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE");
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stderr)
}

/// `build -f build.yaml` over `yaml`: the exit status and standard error.
fn build(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("build.yaml"), yaml).unwrap();
    let mut all = vec!["build", "-f", "build.yaml"];
    all.extend_from_slice(args);
    run_in(dir.path(), &all, env)
}

/// The one-line error `build --dry-run` prints for `yaml`.
fn refusal(yaml: &str) -> String {
    let (out, stderr) = build(yaml, &["--dry-run"], &[]);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn the_valid_file_is_accepted() {
    let (out, stderr) = build(VALID, &["--dry-run"], &[]);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let cases = [
        (
            VALID.replace("  timeoutSeconds: 600", "  timeoutSecs: 7200"),
            "spec.timeoutSecs: unknown field; did you mean timeoutSeconds?",
        ),
        (
            format!("{VALID}  retries: 3\n"),
            "spec.retries: unknown field; did you mean retry?",
        ),
        (
            format!("{VALID}  contextDir: app\n"),
            "spec.contextDir: unknown field; did you mean spec.source.contextDir?",
        ),
        (
            VALID.replace("      jobQueue: arm", "      jobQueu: arm"),
            "spec.platforms[1].jobQueu: unknown field; did you mean jobQueue?",
        ),
        (
            VALID.replace("      revision: main", "      revision: main\n      depth: 1"),
            "spec.source.git.depth: unknown field",
        ),
        (format!("{VALID}colour: blue\n"), "colour: unknown field"),
    ];
    for (yaml, message) in cases {
        assert_eq!(refusal(&yaml), format!("multiarch-operator: build.yaml: {message}"));
    }
}

#[test]
fn another_kind_version_or_nothing_is_refused() {
    let cases = [
        (
            VALID.replace("kind: MultiArchBuild", "kind: MultiArchBiuld"),
            "kind: expected MultiArchBuild, found MultiArchBiuld",
        ),
        (
            VALID.replace("multiarch.dev/v1alpha1", "multiarch.dev/v9"),
            "apiVersion: expected multiarch.dev/v1alpha1, found multiarch.dev/v9",
        ),
        (
            String::new(),
            "empty: expected a MultiArchBuild (apiVersion: multiarch.dev/v1alpha1, kind: MultiArchBuild)",
        ),
        (
            "# nothing but a comment\n".into(),
            "empty: expected a MultiArchBuild (apiVersion: multiarch.dev/v1alpha1, kind: MultiArchBuild)",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n".into(),
            "kind: expected MultiArchBuild, found Deployment",
        ),
        (
            "- a\n- b\n".into(),
            "not a MultiArchBuild: expected a YAML mapping with apiVersion: multiarch.dev/v1alpha1 and kind: MultiArchBuild",
        ),
        (
            VALID.replace("kind: MultiArchBuild\n", ""),
            "kind: missing; expected kind: MultiArchBuild",
        ),
    ];
    for (yaml, message) in cases {
        assert_eq!(refusal(&yaml), format!("multiarch-operator: build.yaml: {message}"));
    }
}

#[test]
fn no_region_is_said_in_one_line_before_any_probe() {
    let started = Instant::now();
    for wait in [&[][..], &["--wait"][..]] {
        let (out, stderr) = build(VALID, wait, &[]);
        assert!(!out.status.success());
        assert_eq!(
            stderr,
            "multiarch-operator: no AWS region: set AWS_REGION or --region (or a profile with a region)\n"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A port nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn aws_out_of_reach_fails_in_one_line_saying_nothing_was_submitted() {
    let endpoint = closed_port();
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    for (args, region) in [
        (&["--region", "eu-west-1"][..], None),
        (&["--wait"][..], Some("us-east-1")),
    ] {
        let mut env = env.to_vec();
        if let Some(region) = region {
            env.push(("AWS_REGION", region));
        }
        let (out, stderr) = build(VALID, args, &env);
        assert!(!out.status.success(), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(
                "multiarch-operator: cannot learn the AWS account (STS GetCallerIdentity), so the allowed registries \
                 are unknown: dispatch failure: "
            ),
            "{stderr}"
        );
        assert!(stderr.trim_end().ends_with("; nothing was submitted"), "{stderr}");
        assert!(stderr.contains("Connection refused"), "{stderr}");
        for debug in ["DispatchFailure", "ConnectorError", " { ", "giving up", "will retry"] {
            assert!(!stderr.contains(debug), "{debug:?} in {stderr}");
        }
    }
}

#[test]
fn help_describes_the_new_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run_in(dir.path(), &["build", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--region <REGION>"), "{help}");
    assert!(help.contains("[env: AWS_REGION"), "{help}");
    assert!(help.contains("--follow-logs"), "{help}");
    let (out, stderr) = build(VALID, &["--follow-logs"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: the following required arguments were not provided:\n  --wait"),
        "{stderr}"
    );
}

#[test]
fn logs_has_help_and_needs_a_region_first() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run_in(dir.path(), &["logs", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "Usage: multiarch-operator logs [OPTIONS] <NAME>",
        "-n, --namespace <NAMESPACE>",
        "-f, --follow",
        "--platform <PLATFORM>",
        "--region <REGION>",
    ] {
        assert!(help.contains(flag), "{flag} not in {help}");
    }
    let (out, stderr) = run_in(dir.path(), &["logs", "demo"], &[]);
    assert!(!out.status.success());
    assert_eq!(
        stderr,
        "multiarch-operator: no AWS region: set AWS_REGION or --region (or a profile with a region)\n"
    );
}

/// Linked as `kubectl-mab`, the binary is the same command line, named `kubectl mab`.
#[test]
fn as_a_kubectl_plugin_it_is_named_kubectl_mab() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl-mab");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_multiarch-operator"), &link).unwrap();
    let out = Command::new(&link).args(["logs", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("Usage: kubectl mab logs [OPTIONS] <NAME>"), "{help}");
}
