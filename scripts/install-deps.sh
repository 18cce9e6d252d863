#!/usr/bin/env bash
# Installs the test tools the local stack does not bring, only what is missing (idempotent):
#   Debian: shellcheck, strace, openssl, unzip, lua5.4 (runs the Argo CD health check in tests/controller.rs)
# `install-deps.sh fips` installs instead what building the `fips` feature needs (aws-lc-fips-sys
# builds AWS-LC's FIPS module with cmake, Go and Perl; README "FIPS (GovCloud)"):
#   Debian: cmake, golang-go, perl, make, gcc, libc6-dev
# `e2e/local-stack up` installs the rest (docker.io, docker-registry, skopeo, git, moto[server]),
# with its guard against package scripts starting services and its one moto version range.
set -euo pipefail

debian_packages=(shellcheck strace openssl unzip lua5.4)
case ${1:-} in
    "") ;;
    fips) debian_packages=(cmake golang-go perl make gcc libc6-dev) ;;
    *) echo "usage: $0 [fips]" >&2; exit 2 ;;
esac
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
echo "install-deps: ok (${debian_packages[*]})"
