#!/usr/bin/env bash
# Builds the operator (debug) and prints the path of its executable as cargo reports it: that is
# not target/debug/multiarch-operator when CARGO_TARGET_DIR points elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo build --quiet --locked --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "multiarch-operator":
        print(m["executable"])
' | tail -n 1)
[ -x "$bin" ] || { echo "operator-bin: cargo build did not produce the multiarch-operator binary" >&2; exit 1; }
echo "$bin"
