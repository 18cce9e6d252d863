//! The crypto behind every TLS connection: ring by default; with the `fips` feature, aws-lc-rs's
//! FIPS 140-3 module (aws-lc-fips-sys), for the three clients:
//! - the Kubernetes client (kube) and the registry client (reqwest) take rustls's process-wide
//!   provider, which [`install`] sets;
//! - the AWS SDK builds its own rustls config, from the provider its HTTP client names (not the
//!   process-wide one), so [`aws_http_client`] names the FIPS one.

/// What `version` prints after `crypto: `: `ring`, or `aws-lc-rs (FIPS), AWS-LC FIPS 4.2.0` with
/// the version the linked module reports.
pub fn describe() -> String {
    #[cfg(not(feature = "fips"))]
    {
        "ring".into()
    }
    #[cfg(feature = "fips")]
    {
        format!("aws-lc-rs (FIPS), AWS-LC FIPS {}", aws_lc_rs::awslc_version())
    }
}

/// Installs the process-wide rustls provider; first thing in `main`, before any client exists.
/// With `fips`, an error unless the provider in force is FIPS: every cipher suite, key exchange,
/// signature algorithm and the random source approved, and the module in FIPS mode (its
/// power-on self tests passed).
pub fn install() -> Result<(), String> {
    #[cfg(not(feature = "fips"))]
    {
        // kube (ring) and the AWS SDK (aws-lc-rs) each bring a provider; with two, rustls cannot
        // pick one by itself for the Kubernetes client. An error means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(())
    }
    #[cfg(feature = "fips")]
    {
        // An error means one is already installed: the check below judges whichever it is.
        let _ = rustls::crypto::default_fips_provider().install_default();
        if let Err(e) = aws_lc_rs::try_fips_mode() {
            return Err(format!("built for FIPS, but aws-lc-rs is not in FIPS mode: {e}"));
        }
        match rustls::crypto::CryptoProvider::get_default() {
            Some(provider) if provider.fips() => Ok(()),
            Some(_) => Err("built for FIPS, but the rustls crypto provider in force is not FIPS-approved".into()),
            None => Err("built for FIPS, but no rustls crypto provider is installed".into()),
        }
    }
}

/// The AWS SDK's HTTPS client on the FIPS provider. The rest mirrors the SDK's default client
/// (aws-smithy-runtime's `default_https_client`): its connector settings, sleep and proxy from
/// the environment (`HTTPS_PROXY`, `NO_PROXY`, ...).
#[cfg(feature = "fips")]
pub fn aws_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{
        Builder, ConnectorBuilder,
        proxy::ProxyConfig,
        tls::{Provider, rustls_provider::CryptoMode},
    };
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLcFips));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The SHA-256 of `bytes` (content digests), from the FIPS module in a `fips` build.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    #[cfg(not(feature = "fips"))]
    {
        use sha2::Digest as _;
        sha2::Sha256::digest(bytes).into()
    }
    #[cfg(feature = "fips")]
    {
        let mut out = [0; 32];
        out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    /// What `main` does first. In a `fips` build this runs the module for real: its self tests
    /// and integrity check (`make fips-check`).
    #[test]
    fn the_provider_installs_and_is_the_one_version_names() {
        assert_eq!(super::install(), Ok(()));
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        #[cfg(feature = "fips")]
        {
            assert!(provider.fips());
            assert!(
                super::describe().starts_with("aws-lc-rs (FIPS), AWS-LC FIPS "),
                "{}",
                super::describe()
            );
        }
        #[cfg(not(feature = "fips"))]
        {
            assert!(!provider.fips());
            assert_eq!(super::describe(), "ring");
        }
    }

    #[test]
    fn sha256_of_abc() {
        let hex: String = super::sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
