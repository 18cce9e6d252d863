//! The platforms a MultiArchBuild can target, and how each one is named in tags, Batch job names
//! and OCI descriptors.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A target platform `os/architecture[/variant]`.
///
/// Only platforms that AWS Batch can run natively are accepted: x86-64 (optionally with a
/// microarchitecture level) and 64-bit Arm (Graviton). No emulation is ever used.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    #[serde(rename = "linux/amd64")]
    LinuxAmd64,
    #[serde(rename = "linux/amd64/v2")]
    LinuxAmd64V2,
    #[serde(rename = "linux/amd64/v3")]
    LinuxAmd64V3,
    #[serde(rename = "linux/amd64/v4")]
    LinuxAmd64V4,
    #[serde(rename = "linux/arm64")]
    LinuxArm64,
    #[serde(rename = "linux/arm64/v8")]
    LinuxArm64V8,
    #[serde(rename = "linux/arm64/v9")]
    LinuxArm64V9,
}

impl Platform {
    /// Every accepted platform, in the order used in messages.
    pub const ALL: [Platform; 7] = [
        Platform::LinuxAmd64,
        Platform::LinuxAmd64V2,
        Platform::LinuxAmd64V3,
        Platform::LinuxAmd64V4,
        Platform::LinuxArm64,
        Platform::LinuxArm64V8,
        Platform::LinuxArm64V9,
    ];

    /// The `os/architecture[/variant]` spelling used in the API and by docker.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "linux/amd64",
            Platform::LinuxAmd64V2 => "linux/amd64/v2",
            Platform::LinuxAmd64V3 => "linux/amd64/v3",
            Platform::LinuxAmd64V4 => "linux/amd64/v4",
            Platform::LinuxArm64 => "linux/arm64",
            Platform::LinuxArm64V8 => "linux/arm64/v8",
            Platform::LinuxArm64V9 => "linux/arm64/v9",
        }
    }

    pub fn os(self) -> &'static str {
        "linux"
    }

    /// The OCI `architecture` value (GOARCH spelling).
    pub fn architecture(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 | Platform::LinuxAmd64V2 | Platform::LinuxAmd64V3 | Platform::LinuxAmd64V4 => "amd64",
            Platform::LinuxArm64 | Platform::LinuxArm64V8 | Platform::LinuxArm64V9 => "arm64",
        }
    }

    /// The variant as written by the user, if any.
    pub fn variant(self) -> Option<&'static str> {
        self.as_str().splitn(3, '/').nth(2)
    }

    /// The variant to put in the index descriptor: arm64 without a variant is `v8`, as containerd
    /// normalises it, so clients that ask for `linux/arm64/v8` match.
    pub fn descriptor_variant(self) -> Option<&'static str> {
        match self {
            Platform::LinuxArm64 => Some("v8"),
            other => other.variant(),
        }
    }

    /// The suffix of the per-platform tag and job name: `amd64`, `arm64`, `arm64-v8`.
    pub fn tag_suffix(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "amd64",
            Platform::LinuxAmd64V2 => "amd64-v2",
            Platform::LinuxAmd64V3 => "amd64-v3",
            Platform::LinuxAmd64V4 => "amd64-v4",
            Platform::LinuxArm64 => "arm64",
            Platform::LinuxArm64V8 => "arm64-v8",
            Platform::LinuxArm64V9 => "arm64-v9",
        }
    }

    /// The longest tag suffix including its leading `-`, which the index tag must leave room for.
    pub const LONGEST_SUFFIX: usize = 9;

    /// Whether an image config's `os`/`architecture`/`variant` is this platform. A config that
    /// omits the variant matches; one that names a different variant does not.
    pub fn matches_config(self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os()
            && architecture == self.architecture()
            && match (self.descriptor_variant(), variant) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown platform {s:?}; allowed: {}", allowed_platforms()))
    }
}

/// The accepted platforms as one comma-separated list, for error messages.
pub fn allowed_platforms() -> String {
    Platform::ALL.map(Platform::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for p in Platform::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(p.as_str().parse::<Platform>().unwrap(), p);
            assert!(format!("-{}", p.tag_suffix()).len() <= Platform::LONGEST_SUFFIX);
        }
    }

    #[test]
    fn arm64_descriptor_gets_v8_and_configs_match_by_arch() {
        assert_eq!(Platform::LinuxArm64.variant(), None);
        assert_eq!(Platform::LinuxArm64.descriptor_variant(), Some("v8"));
        assert_eq!(Platform::LinuxAmd64.descriptor_variant(), None);
        assert!(Platform::LinuxArm64.matches_config("linux", "arm64", None));
        assert!(Platform::LinuxArm64.matches_config("linux", "arm64", Some("v8")));
        assert!(!Platform::LinuxArm64V9.matches_config("linux", "arm64", Some("v8")));
        assert!(!Platform::LinuxArm64.matches_config("linux", "amd64", None));
        assert!("linux/riscv64".parse::<Platform>().unwrap_err().contains("linux/amd64"));
    }
}
