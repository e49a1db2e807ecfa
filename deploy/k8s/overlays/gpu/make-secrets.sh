#!/usr/bin/env bash
# Creates the files the gpu overlay turns into Secrets: random API and worker
# tokens, a private CA and a coordinator certificate signed by it.
#   ./make-secrets.sh [--out DIR] [--namespace NS] [--san DNS:name|IP:addr]... [--force]
# Existing files are kept unless --force (rotating the CA means every client
# needs the new ca.crt).
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/secrets"
ns=llmt
sans=()
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    --san) sans+=("$2"); shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "make-secrets.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "make-secrets.sh: openssl not found" >&2; exit 1; }
mkdir -p "$out"
umask 077

files=(api-tokens worker-token ca.crt tls.crt tls.key)
if [[ $force -eq 0 ]]; then
  for f in "${files[@]}"; do
    if [[ -e "$out/$f" ]]; then
      echo "make-secrets.sh: $out/$f exists; keeping all files (use --force to replace)" >&2
      exit 0
    fi
  done
fi

openssl rand -hex 32 >"$out/api-tokens"
openssl rand -hex 32 >"$out/worker-token"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# P-256 keys: small, fast handshakes, supported by gRPC's BoringSSL/OpenSSL.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$tmp/ca.key" -out "$out/ca.crt" -days 3650 -subj "/CN=llmt-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
san="DNS:llmt-coordinator,DNS:llmt-coordinator.$ns,DNS:llmt-coordinator.$ns.svc"
san+=",DNS:llmt-coordinator.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
for s in "${sans[@]}"; do san+=",$s"; done
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$out/tls.key" -out "$tmp/tls.csr" -subj "/CN=llmt-coordinator" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
  "$san" >"$tmp/ext"
openssl x509 -req -in "$tmp/tls.csr" -CA "$out/ca.crt" -CAkey "$tmp/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -out "$out/tls.crt" -days 825 -extfile "$tmp/ext" 2>/dev/null
# The CA key is not kept: issue a new CA (and hand out its ca.crt) to rotate.
echo "make-secrets.sh: wrote ${files[*]} to $out"
