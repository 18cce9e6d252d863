#!/usr/bin/env python3
"""Checks a signed index the way a verifier that shares no code with the controller would.

  verify_signed.py REPOSITORY@sha256:HEX KMS_KEY_ID

The public key comes from KMS (boto3 GetPublicKey, AWS_ENDPOINT_URL for moto); the signature
and the attestation are read from the registry over its HTTP API at the tags cosign uses
(sha256-HEX.sig / .att). The index signature is checked with Python's `cryptography` (ECDSA P-256,
SHA-256), the DSSE envelope with `securesystemslib` (its own DSSE pre-authentication encoding).
Then one byte of each signed payload is changed, and the check must fail.

Prints one JSON line (what was verified) and exits 0, or prints why not and exits 1.
Only for registries served over plain HTTP without auth (the local stack's).
"""
import base64
import json
import sys
import urllib.request

import boto3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def fail(why):
    print(f"verify_signed: {why}", file=sys.stderr)
    sys.exit(1)


def get(host, path, accept=None):
    request = urllib.request.Request(f"http://{host}/v2/{path}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def verifies(key, signature, message):
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def tampered(data):
    """The same bytes with the middle one changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def attached_layer(host, name, tag, media_type):
    manifest = json.loads(get(host, f"{name}/manifests/{tag}", ACCEPT))
    layers = [layer for layer in manifest.get("layers", []) if layer.get("mediaType") == media_type]
    if len(layers) != 1:
        fail(f"{tag}: expected one {media_type} layer, found {len(layers)}")
    layer = layers[0]
    blob = get(host, f"{name}/blobs/{layer['digest']}")
    return layer, blob


def envelope_verifies(key_pem, envelope):
    """Whether securesystemslib verifies a signature of the envelope with the key. It matches
    signatures to keys by keyid; cosign (and the controller) leave the keyid empty."""
    keyids = {s.get("keyid", "") for s in envelope["signatures"]}
    keys = [
        SSlibKey(keyid, "ecdsa", "ecdsa-sha2-nistp256", {"public": key_pem})
        for keyid in keyids
    ]
    try:
        Envelope.from_dict(json.loads(json.dumps(envelope))).verify(keys, 1)
        return True
    except VerificationError:
        return False


def main():
    if len(sys.argv) != 3 or "@" not in sys.argv[1]:
        fail("usage: verify_signed.py REPOSITORY@sha256:HEX KMS_KEY_ID")
    repository, digest = sys.argv[1].split("@", 1)
    host, name = repository.split("/", 1)
    key_der = boto3.client("kms").get_public_key(KeyId=sys.argv[2])["PublicKey"]
    key = load_der_public_key(key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        fail("the KMS key is not an ECDSA P-256 key")
    tag = "sha256-" + digest.split(":", 1)[1]

    # The index signature: cosign's simple-signing payload, naming the index digest.
    layer, payload = attached_layer(host, name, f"{tag}.sig", "application/vnd.dev.cosign.simplesigning.v1+json")
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    if not verifies(key, signature, payload):
        fail(f"{tag}.sig: the signature does not verify with the KMS public key")
    signed_digest = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
    if signed_digest != digest:
        fail(f"{tag}.sig signs {signed_digest}, not {digest}")
    if verifies(key, signature, tampered(payload)):
        fail(f"{tag}.sig: a payload with one byte changed still verifies")

    # The provenance: a DSSE envelope of an in-toto statement.
    _, envelope_bytes = attached_layer(host, name, f"{tag}.att", "application/vnd.dsse.envelope.v1+json")
    envelope = json.loads(envelope_bytes)
    key_pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    if not envelope["signatures"] or not envelope_verifies(key_pem, envelope):
        fail(f"{tag}.att: no envelope signature verifies with the KMS public key")
    statement_bytes = base64.b64decode(envelope["payload"])
    changed = dict(envelope, payload=base64.b64encode(tampered(statement_bytes)).decode())
    if envelope_verifies(key_pem, changed):
        fail(f"{tag}.att: a statement with one byte changed still verifies")

    statement = json.loads(statement_bytes)
    index = json.loads(get(host, f"{name}/manifests/{digest}", ACCEPT))
    children = sorted(m["digest"] for m in index["manifests"])
    subjects = sorted("sha256:" + s["digest"]["sha256"] for s in statement["subject"])
    if subjects != sorted([digest] + children):
        fail(f"the statement's subjects {subjects} are not the index {digest} and its images {children}")
    commit = next(
        d["digest"]["gitCommit"]
        for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        if d["uri"].startswith("git+")
    )
    print(json.dumps({
        "index": digest,
        "subjects": subjects,
        "predicateType": statement["predicateType"],
        "commit": commit,
        "builder": statement["predicate"]["runDetails"]["builder"]["id"],
        "jobs": [j["uri"] for j in statement["predicate"]["runDetails"]["byproducts"]],
    }))


if __name__ == "__main__":
    main()
