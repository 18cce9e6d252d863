#!/usr/bin/env bash
# Installs what the test suite runs against, only what is missing (idempotent):
#   Debian: docker-registry (CNCF distribution), skopeo, git, shellcheck, strace, openssl, unzip
#   PyPI:   moto[server] (AWS Batch and CloudWatch Logs)
set -euo pipefail

debian_packages=(docker-registry skopeo git shellcheck strace openssl unzip)
missing=()
for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "install-deps: installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v moto_server >/dev/null 2>&1; then
    echo "install-deps: installing moto[server] from PyPI"
    python3 -m pip install --quiet 'moto[server]>=5,<6'
fi
echo "install-deps: ok (docker-registry, skopeo, git, shellcheck, strace, openssl, unzip, moto_server)"
