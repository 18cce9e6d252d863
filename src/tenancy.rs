//! Which registries a build may push to: by default only the ECR registries of the controller's
//! own AWS account and partition, plus the hosts an administrator lists. Checked before any
//! request is made for a build, so a spec cannot point the controller (and its credentials) at an
//! arbitrary host.

use crate::api::MultiArchBuildSpec;

/// An ECR registry host: `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` or the dual-stack
/// `<account>.dkr-ecr[-fips].<region>.on.aws`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    /// The host is under `amazonaws.com.cn`.
    pub china_domain: bool,
}

impl EcrHost {
    /// `host` (a port is ignored) as an ECR registry host, if it is one.
    pub fn parse(host: &str) -> Option<EcrHost> {
        let host = host.to_ascii_lowercase();
        let host = host.split(':').next().unwrap_or_default();
        let labels: Vec<&str> = host.split('.').collect();
        let (account, region, china_domain) = match labels.as_slice() {
            [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"] => (account, region, false),
            [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"] => (account, region, true),
            [account, "dkr-ecr" | "dkr-ecr-fips", region, "on", "aws"] => (account, region, false),
            _ => return None,
        };
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        let region_ok = !region.is_empty() && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        (account_ok && region_ok).then(|| EcrHost {
            account: (*account).to_string(),
            region: (*region).to_string(),
            china_domain,
        })
    }
}

/// The AWS partition a region belongs to.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// The registry hosts builds may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedRegistries {
    /// The controller's own AWS account and region: ECR hosts of that account in that region's
    /// partition are allowed. `None`: no ECR host is allowed by default.
    pub own: Option<(String, String)>,
    /// Further hosts (`host[:port]`, exactly as written in repositories), from
    /// `--allowed-registries`.
    pub listed: Vec<String>,
}

/// The flag and variable that list further hosts, named in refusals.
pub const ALLOWED_REGISTRIES_SETTING: &str =
    "--allowed-registries / MAB_ALLOWED_REGISTRIES (chart value controller.allowedRegistries)";

impl AllowedRegistries {
    /// Why `repository` may not be used, or `None` when its host is allowed.
    pub fn refusal(&self, repository: &str) -> Option<String> {
        let host = repository.split('/').next().unwrap_or_default();
        if self.listed.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return None;
        }
        let why = match (EcrHost::parse(host), &self.own) {
            (Some(ecr), Some((account, region))) => {
                let partition = partition_of(region);
                let same_partition =
                    partition_of(&ecr.region) == partition && ecr.china_domain == (partition == "aws-cn");
                if ecr.account == *account && same_partition {
                    return None;
                }
                format!(
                    "it is the ECR registry of account {} in {}, not of this controller's account {account} \
                     ({partition})",
                    ecr.account, ecr.region
                )
            }
            (Some(_), None) => "the controller's AWS account is unknown, so no ECR host is allowed by default".into(),
            (None, _) => "it is not an ECR registry of this controller's AWS account".into(),
        };
        Some(format!(
            "registry {host} is not allowed: {why}; an administrator can allow it with {ALLOWED_REGISTRIES_SETTING}"
        ))
    }

    /// Why `spec` may not run here: the first repository it pushes to (the output repository, then
    /// the cache repository) whose host is not allowed. The cache repository's refusal names its
    /// field: a cache in a foreign registry could feed another team's layers into this build.
    pub fn spec_refusal(&self, spec: &MultiArchBuildSpec) -> Option<String> {
        spec.pushed_repositories().into_iter().find_map(|(field, repository)| {
            let refusal = self.refusal(repository)?;
            Some(if field == "spec.output.repository" {
                refusal
            } else {
                format!("{field} {repository:?}: {refusal}")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedRegistries {
        AllowedRegistries {
            own: Some(("123456789012".into(), "us-gov-west-1".into())),
            listed: vec!["registry.example.com:5000".into()],
        }
    }

    #[test]
    fn own_account_ecr_hosts_of_the_partition_are_allowed() {
        let a = allowed();
        for host in [
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
            "123456789012.dkr.ecr.us-gov-east-1.amazonaws.com",
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            "123456789012.dkr-ecr.us-gov-west-1.on.aws",
            "123456789012.dkr-ecr-fips.us-gov-east-1.on.aws",
            "registry.example.com:5000",
        ] {
            assert_eq!(a.refusal(&format!("{host}/team/app")), None, "{host}");
        }
    }

    #[test]
    fn other_accounts_partitions_and_hosts_are_refused_naming_the_setting() {
        let a = allowed();
        for (host, why) in [
            (
                "210987654321.dkr.ecr.us-gov-west-1.amazonaws.com",
                "account 210987654321",
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "not of this controller's account",
            ),
            ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "in cn-north-1"),
            ("169.254.169.254", "not an ECR registry"),
            ("registry.example.com", "not an ECR registry"),
            ("kubernetes.default.svc", "not an ECR registry"),
        ] {
            let refusal = a
                .refusal(&format!("{host}/app"))
                .unwrap_or_else(|| panic!("{host} allowed"));
            assert!(
                refusal.starts_with(&format!("registry {host} is not allowed: ")),
                "{refusal}"
            );
            assert!(refusal.contains(why), "{refusal}");
            assert!(refusal.contains("MAB_ALLOWED_REGISTRIES"), "{refusal}");
        }
        let unknown = AllowedRegistries::default();
        assert!(
            unknown
                .refusal("123456789012.dkr.ecr.us-east-1.amazonaws.com/app")
                .unwrap()
                .contains("account is unknown")
        );
    }

    #[test]
    fn the_cache_repository_is_held_to_the_same_registries_and_named_in_the_refusal() {
        let build: crate::api::MultiArchBuild =
            serde_yaml::from_str(include_str!("../config/samples/vecoli.yaml")).unwrap();
        let mut spec = build.spec;
        let a = allowed();
        assert_eq!(a.spec_refusal(&spec), None);
        spec.output.cache.repository = "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/cache".into();
        assert_eq!(a.spec_refusal(&spec), None);
        // validate() refuses a cache on another host; this holds even if something skipped it.
        spec.output.cache.repository = "210987654321.dkr.ecr.us-gov-west-1.amazonaws.com/theirs".into();
        let refusal = a.spec_refusal(&spec).unwrap();
        assert!(
            refusal.starts_with(
                "spec.output.cache.repository \"210987654321.dkr.ecr.us-gov-west-1.amazonaws.com/theirs\": registry"
            ),
            "{refusal}"
        );
        assert!(refusal.contains("account 210987654321"), "{refusal}");
        // The output repository first, with the message it always had.
        spec.output.repository = "registry.example.com/app".into();
        assert_eq!(
            a.spec_refusal(&spec),
            a.refusal("registry.example.com/app"),
            "the output repository is named first"
        );
    }

    #[test]
    fn china_hosts_are_allowed_only_in_the_china_partition() {
        let china = AllowedRegistries {
            own: Some(("123456789012".into(), "cn-north-1".into())),
            listed: vec![],
        };
        assert_eq!(
            china.refusal("123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn/app"),
            None
        );
        assert!(
            china
                .refusal("123456789012.dkr.ecr.cn-north-1.amazonaws.com/app")
                .is_some()
        );
        assert_eq!(partition_of("us-isob-east-1"), "aws-iso-b");
        assert_eq!(partition_of("eu-west-1"), "aws");
    }

    #[test]
    fn ecr_hosts_parse_with_and_without_port() {
        assert_eq!(
            EcrHost::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com:443"),
            Some(EcrHost {
                account: "123456789012".into(),
                region: "us-east-1".into(),
                china_domain: false
            })
        );
        assert_eq!(EcrHost::parse("12345.dkr.ecr.us-east-1.amazonaws.com"), None);
        assert_eq!(EcrHost::parse("123456789012.dkr.ecr..amazonaws.com"), None);
        assert_eq!(EcrHost::parse("public.ecr.aws"), None);
    }
}
