#!/usr/bin/env bash
# Installs the Debian packages the test suite runs against: the container
# clients (skopeo, podman, buildah, containerd with ctr, and docker.io for
# dockerd and the Docker CLI), umoci for building images without a network,
# the reference registry (docker-registry), jq, and slapd, ldap-utils and
# openssl for the LDAP tests, postgresql for the second pass of the tests,
# and wrk, the load generator of the benchmark. The tests start their own
# daemons, PostgreSQL included. Safe to run again: packages already present
# are skipped. Needs root (apt-get).
set -euo pipefail

packages=(skopeo podman buildah umoci docker-registry jq slapd ldap-utils openssl postgresql containerd docker.io wrk)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "test dependencies already installed: ${packages[*]}"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; run this script as root (sudo $0)" >&2
  exit 1
fi

echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests start their own slapd; keep the package from configuring and
# starting a system directory server on port 389.
echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
