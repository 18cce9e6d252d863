#!/usr/bin/env bash
# Fuzz the registry answer parser (src/registry/parse.rs) for a bounded time.
#   fuzz/run.sh [SECONDS]      default 60; the first build takes about a minute more
# Needs the nightly toolchain and cargo-fuzz (installed here if missing). Crashes land in
# fuzz/artifacts/manifest_parser/ and make the script fail; the corpus grows in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/manifest_parser
exec cargo +nightly fuzz run manifest_parser corpus/manifest_parser seeds/manifest_parser -- \
  -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
