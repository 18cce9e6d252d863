//! The local real stack (`e2e/local-stack`) for tests that use it: its environment, or a skip
//! when it is down (a failure when `MAB_E2E_REQUIRED=1`), and what its registry's images hold.

// Test tooling: a failed step must stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The stack's environment (`e2e/local-stack env`), or `None` when it is not up (after saying
/// SKIPPED); panics instead when `MAB_E2E_REQUIRED=1`.
pub fn stack() -> Option<HashMap<String, String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/local-stack");
    let out = Command::new(script)
        .arg("env")
        .output()
        .expect("run e2e/local-stack env");
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if std::env::var("MAB_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("the local stack is required but not up: {why}");
        }
        eprintln!("SKIPPED: the local stack is not up ({why}); run `e2e/local-stack up` or `make test`");
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').trim_matches('"').to_string()))
            .collect(),
    )
}

/// The files of `reference`'s image for `arch`, from its layers (skopeo copy to a directory).
pub fn image_files(reference: &str, arch: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--override-os",
            "linux",
            "--override-arch",
            arch,
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let blob = dir
            .path()
            .join(layer["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let listed = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
        assert!(listed.status.success(), "tar -tzf {}", blob.display());
        files.extend(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .map(|l| l.trim_start_matches("./").to_string()),
        );
    }
    files
}
