//! What the benches share: the build they run many times, and its references.

use multiarch_operator::{api::MultiArchBuildSpec, batch::BuildRef};

/// A two-platform build on the moto queue that never reuses an existing index.
pub fn spec(queue: &str) -> MultiArchBuildSpec {
    serde_yaml::from_str(&format!(
        "source: {{git: {{url: 'https://github.com/example/app.git', revision: main}}}}\n\
         output: {{repository: 123456789012.dkr.ecr.us-east-1.amazonaws.com/app, tag: v1, reuseExisting: false}}\n\
         platforms: [{{platform: linux/amd64, jobQueue: {queue}}}, {{platform: linux/arm64, jobQueue: {queue}}}]\n"
    ))
    .expect("bench spec")
}

/// Distinct builds numbered `numbers` (distinct uids, so distinct job names).
pub fn build_refs(numbers: std::ops::Range<usize>) -> Vec<BuildRef> {
    numbers
        .map(|n| {
            BuildRef::new(
                "bench",
                format!("build-{n}"),
                format!("{n:08x}-0000-4000-8000-000000000000"),
            )
        })
        .collect()
}
