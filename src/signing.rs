//! The key that signs indexes and their provenance, and the public key that checks them.
//!
//! One algorithm only, the one cosign, Kyverno and policy-controller verify with a KMS key:
//! ECDSA on P-256 with SHA-256, signatures ASN.1 DER. The private key is either an AWS KMS key
//! (`awskms:///<key id | key ARN | alias/NAME | alias ARN>`, cosign's URI form; it never leaves
//! KMS) or a local PEM file (`file:///path`, PKCS#8 or SEC 1, unencrypted) for clusters without
//! KMS. Public keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo) files, what
//! `cosign public-key` and `aws kms get-public-key` (DER) give.

use std::{fmt, path::PathBuf, str::FromStr};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    signature::{
        self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
    },
};
use aws_sdk_kms::{
    primitives::Blob,
    types::{MessageType, SigningAlgorithmSpec},
};
use base64::Engine as _;
use tokio::sync::OnceCell;

/// KMS signs a RAW message of at most this many bytes; longer ones are sent as their SHA-256.
const KMS_MAX_RAW_MESSAGE: usize = 4096;

/// Why a key could not be read or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The `--signing-key` value is not a key URI this controller reads.
    #[error("--signing-key {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    /// The key file or the key in it is unusable.
    #[error("signing key {key}: {reason}")]
    BadKey { key: String, reason: String },
    /// KMS refused or failed (disabled key, access denied, throttled, unreachable): retried.
    #[error("KMS could not {operation} with {key}: {reason}")]
    Kms {
        operation: &'static str,
        key: String,
        reason: String,
    },
}

/// Where the private key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyUri {
    /// A KMS key: id, ARN, `alias/NAME` or alias ARN; `endpoint` overrides KMS's URL (tests).
    Kms { endpoint: Option<String>, key_id: String },
    /// A PEM file on disk.
    File(PathBuf),
}

impl FromStr for KeyUri {
    type Err = SigningError;

    fn from_str(uri: &str) -> Result<KeyUri, SigningError> {
        let bad = |reason: &str| SigningError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("awskms://") {
            let (endpoint, key_id) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected awskms:///<key id, key ARN or alias/NAME>"))?;
            let empty_alias = key_id.strip_prefix("alias/").is_some_and(str::is_empty);
            if key_id.is_empty() || empty_alias || key_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("expected awskms:///<key id, key ARN or alias/NAME>"));
            }
            let endpoint = (!endpoint.is_empty()).then(|| format!("https://{endpoint}"));
            return Ok(KeyUri::Kms {
                endpoint,
                key_id: key_id.to_string(),
            });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("expected file:///absolute/path/to/key.pem"));
            }
            return Ok(KeyUri::File(PathBuf::from(path)));
        }
        Err(bad(
            "expected awskms:///<key id, key ARN or alias/NAME> or file:///path/to/key.pem",
        ))
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::Kms { key_id, .. } => write!(f, "awskms:///{key_id}"),
            KeyUri::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// A public key that checks signatures: ECDSA P-256, as SubjectPublicKeyInfo DER.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki_der: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pem())
    }
}

impl PublicKey {
    /// A key from SubjectPublicKeyInfo DER (what KMS GetPublicKey returns); refuses anything but
    /// a P-256 key.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, String> {
        signature::ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .map_err(|_| "not an ECDSA P-256 public key (SubjectPublicKeyInfo)".to_string())?;
        Ok(PublicKey { spki_der: der.to_vec() })
    }

    /// A key from a PEM `PUBLIC KEY` block, or the public half of a PEM private key.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        match pem_block(pem)? {
            (label, der) if label == "PUBLIC KEY" => PublicKey::from_der(&der),
            (label, der) if label == "PRIVATE KEY" || label == "EC PRIVATE KEY" => Ok(key_pair(&der)?.1),
            (label, _) => Err(format!(
                "a PEM {label:?} block; expected PUBLIC KEY (or an EC private key)"
            )),
        }
    }

    /// Whether `signature` (ASN.1 DER) is this key's ECDSA P-256 SHA-256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.spki_der)
            .verify(message, signature)
            .is_ok()
    }

    /// The key as a PEM `PUBLIC KEY` block.
    pub fn pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.spki_der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }
}

/// Signs with the configured key.
pub struct Signer {
    uri: KeyUri,
    key: SignerKey,
}

enum SignerKey {
    Local {
        pair: EcdsaKeyPair,
        public: PublicKey,
    },
    Kms {
        client: aws_sdk_kms::Client,
        key_id: String,
        /// GetPublicKey's answer, asked once (a failure is asked again next time).
        public: OnceCell<PublicKey>,
    },
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.uri)
    }
}

impl Signer {
    /// The signer for `uri`: a file key is read now (an unusable one is an error at start); a
    /// KMS key is only named, and first used when something is signed, by a client made from
    /// `kms` (the caller's AWS configuration, and its call counter).
    pub fn open(uri: KeyUri, kms: aws_sdk_kms::config::Builder) -> Result<Signer, SigningError> {
        let key = match &uri {
            KeyUri::File(path) => {
                let bad = |reason: String| SigningError::BadKey {
                    key: uri.to_string(),
                    reason,
                };
                let pem = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
                let (label, der) = pem_block(&pem).map_err(bad)?;
                if label != "PRIVATE KEY" && label != "EC PRIVATE KEY" {
                    return Err(bad(format!(
                        "a PEM {label:?} block; expected an unencrypted EC P-256 private key (PRIVATE KEY or EC PRIVATE KEY)"
                    )));
                }
                let (pair, public) = key_pair(&der).map_err(bad)?;
                SignerKey::Local { pair, public }
            }
            KeyUri::Kms { endpoint, key_id } => {
                let mut config = kms;
                if let Some(endpoint) = endpoint {
                    config = config.endpoint_url(endpoint);
                }
                SignerKey::Kms {
                    client: aws_sdk_kms::Client::from_conf(config.build()),
                    key_id: key_id.clone(),
                    public: OnceCell::new(),
                }
            }
        };
        Ok(Signer { uri, key })
    }

    /// The key's URI, as configured (`awskms:///alias/…`, `file:///…`).
    pub fn uri(&self) -> &KeyUri {
        &self.uri
    }

    /// The public key (KMS GetPublicKey, asked once).
    pub async fn public_key(&self) -> Result<PublicKey, SigningError> {
        match &self.key {
            SignerKey::Local { public, .. } => Ok(public.clone()),
            SignerKey::Kms { client, key_id, public } => public
                .get_or_try_init(|| async {
                    let answer = client
                        .get_public_key()
                        .key_id(key_id)
                        .send()
                        .await
                        .map_err(|e| self.kms_error("read the public key", &e))?;
                    let der = answer.public_key().map(Blob::as_ref).unwrap_or_default();
                    PublicKey::from_der(der).map_err(|reason| SigningError::Kms {
                        operation: "read the public key",
                        key: self.uri.to_string(),
                        reason: format!("{reason}: the key must be ECC_NIST_P256 with usage SIGN_VERIFY"),
                    })
                })
                .await
                .cloned(),
        }
    }

    /// The ECDSA P-256 SHA-256 signature (ASN.1 DER) of `message`.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        match &self.key {
            SignerKey::Local { pair, .. } => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SigningError::BadKey {
                    key: self.uri.to_string(),
                    reason: "signing failed".into(),
                }),
            SignerKey::Kms { client, key_id, .. } => {
                // KMS hashes a RAW message itself; a longer one is sent as its digest.
                let (message_type, message) = if message.len() <= KMS_MAX_RAW_MESSAGE {
                    (MessageType::Raw, message.to_vec())
                } else {
                    (MessageType::Digest, crate::crypto::sha256(message).to_vec())
                };
                let answer = client
                    .sign()
                    .key_id(key_id)
                    .message(Blob::new(message))
                    .message_type(message_type)
                    .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                    .send()
                    .await
                    .map_err(|e| self.kms_error("sign", &e))?;
                answer
                    .signature()
                    .map(|s| s.as_ref().to_vec())
                    .ok_or_else(|| SigningError::Kms {
                        operation: "sign",
                        key: self.uri.to_string(),
                        reason: "KMS answered without a signature".into(),
                    })
            }
        }
    }

    fn kms_error<E, R>(&self, operation: &'static str, error: &aws_sdk_kms::error::SdkError<E, R>) -> SigningError
    where
        E: std::error::Error + 'static,
        R: fmt::Debug + 'static,
    {
        SigningError::Kms {
            operation,
            key: self.uri.to_string(),
            reason: crate::util::error_chain(error),
        }
    }
}

/// The signing key pair in PKCS#8 or SEC 1 DER, and its public key.
fn key_pair(der: &[u8]) -> Result<(EcdsaKeyPair, PublicKey), String> {
    let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
        .map_err(|e| format!("not an unencrypted EC P-256 private key ({e})"))?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| "cannot encode its public key".to_string())?;
    let public = PublicKey::from_der(spki.as_ref())?;
    Ok((pair, public))
}

/// The label and DER bytes of the first PEM block in `text`.
fn pem_block(text: &str) -> Result<(String, Vec<u8>), String> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or("no PEM block (-----BEGIN …-----) in it")?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let (label, rest) = rest.split_once("-----").ok_or("a malformed PEM header")?;
    if label.contains("ENCRYPTED") {
        return Err(format!(
            "an encrypted key ({label}); give an unencrypted PKCS#8 key (openssl pkcs8 -topk8 -nocrypt)"
        ));
    }
    let end_marker = format!("-----END {label}-----");
    let body = rest.split_once(&end_marker).ok_or("no PEM end line")?.0;
    if body.contains(':') {
        return Err("a PEM block with headers (an encrypted key?); give an unencrypted PKCS#8 key".into());
    }
    let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    Ok((label.to_string(), der))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    const PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgupNX+JcFY0wUa3EI
rhHNewi40i/sOt33ouycJLja+GKhRANCAARoHZKFbz6ph+EbFMK10GOHblyPmpZR
vyrZLx4EF/GQmQDlvVcXu/qDF1utW/kpt0Ueg0/RUXjVcLIgENTUwUw/
-----END PRIVATE KEY-----
";

    fn local(pem: &str) -> Result<Signer, SigningError> {
        let dir = tempfile::tempdir().map_err(|e| SigningError::BadKey {
            key: "tmp".into(),
            reason: e.to_string(),
        })?;
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem).map_err(|e| SigningError::BadKey {
            key: "tmp".into(),
            reason: e.to_string(),
        })?;
        Signer::open(KeyUri::File(path), aws_sdk_kms::config::Builder::new())
    }

    #[tokio::test]
    async fn a_file_key_signs_what_its_public_key_verifies_and_nothing_else() {
        let signer = local(PKCS8).expect("the key reads");
        let public = signer.public_key().await.expect("public key");
        let signature = signer.sign(b"payload").await.expect("signs");
        assert!(public.verifies(b"payload", &signature));
        assert!(!public.verifies(b"payloae", &signature));
        let again = PublicKey::from_pem(&public.pem()).expect("its PEM reads back");
        assert_eq!(again, public);
        assert_eq!(
            PublicKey::from_pem(PKCS8).expect("public half of the private key"),
            public
        );
    }

    #[test]
    fn key_uris_read_as_cosign_writes_them() {
        let parse = |s: &str| s.parse::<KeyUri>();
        assert_eq!(
            parse("awskms:///alias/mab").expect("alias"),
            KeyUri::Kms {
                endpoint: None,
                key_id: "alias/mab".into()
            }
        );
        assert_eq!(
            parse("awskms://localhost:4566/arn:aws-us-gov:kms:us-gov-west-1:1:key/abc").expect("endpoint"),
            KeyUri::Kms {
                endpoint: Some("https://localhost:4566".into()),
                key_id: "arn:aws-us-gov:kms:us-gov-west-1:1:key/abc".into()
            }
        );
        assert_eq!(parse("file:///k.pem").expect("file"), KeyUri::File("/k.pem".into()));
        for bad in [
            "awskms://",
            "awskms:///",
            "awskms:///alias/",
            "file://k.pem",
            "k.pem",
            "gcpkms://x",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--signing-key {bad:?}: expected ")), "{e}");
        }
    }

    #[test]
    fn unusable_keys_are_refused_with_the_reason() {
        let e = local("hello").expect_err("not PEM").to_string();
        assert!(e.ends_with("no PEM block (-----BEGIN …-----) in it"), "{e}");
        let e = local("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n")
            .expect_err("encrypted")
            .to_string();
        assert!(e.contains("an encrypted key"), "{e}");
        let e = local("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("not an unencrypted EC P-256 private key"), "{e}");
        assert!(PublicKey::from_der(b"junk").is_err());
    }
}
