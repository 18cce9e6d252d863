//! Fuzz the parsing of registry answers: manifests, indexes, image configs and error bodies.
//! Any input must give `Ok` or an error with a message, never a panic, an abort or a hang.
//!
//! The first byte picks the `Content-Type` the "registry" sent; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/registry/parse.rs"]
mod parse;

use parse::{Manifest, is_image_manifest_type, is_index_type, is_sha256_digest};

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some(parse::OCI_MANIFEST),
    Some(parse::OCI_INDEX),
    Some(parse::DOCKER_MANIFEST),
    Some(parse::DOCKER_LIST),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/json; charset=utf-8"),
    Some(""),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    match parse::parse_manifest(body, content_type) {
        Ok(Manifest::Image(m)) => {
            assert!(is_image_manifest_type(m.media_type));
            assert!(is_sha256_digest(&m.config.digest));
            assert!(m.layers.iter().all(|l| is_sha256_digest(&l.digest)));
        }
        Ok(Manifest::Index(i)) => {
            assert!(is_index_type(i.media_type));
            for e in &i.manifests {
                assert!(is_sha256_digest(&e.descriptor.digest));
                let _ = e.is_attestation();
                let _ = e.platform.as_ref().map(ToString::to_string);
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    if let Ok(c) = parse::parse_config(body) {
        assert!(!c.platform.os.is_empty() && !c.platform.architecture.is_empty());
    }
    let _ = parse::parse_error_body(body);
    let _ = parse::base_media_type(&String::from_utf8_lossy(body));
});
