#!/usr/bin/env bash
# Installs every build/test/runtime dependency from Debian 12's archive.
# Idempotent: does nothing (and needs no network) when all packages are present.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git ca-certificates
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libgloo-dev libcivetweb-dev civetweb libssl-dev
  libopenblas-dev libsentencepiece-dev sentencepiece libyaml-cpp-dev
  libgtest-dev libgmock-dev googletest
  bible-kjv python3 python3-torch python3-numpy
  curl
  # deploy/ checks (tests/integration/deploy): Prometheus server + promtool, yamllint,
  # offline Kubernetes schema (python3-kubernetes), openssl for make-secrets.sh.
  # kubectl comes with the machine image (Debian's kubernetes-client 1.20 is too old).
  prometheus yamllint python3-yaml python3-kubernetes openssl kubectl
)
# Extra packages for the deploy/monitoring checks (issue: deploy); optional here.
if [[ -n "${LLMT_EXTRA_PKGS:-}" ]]; then
  read -r -a extra <<<"${LLMT_EXTRA_PKGS}"
  PKGS+=("${extra[@]}")
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
