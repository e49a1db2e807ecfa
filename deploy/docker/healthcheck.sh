#!/bin/bash
# Container HEALTHCHECK for the llmt daemons: GET http://127.0.0.1:PORT/PATH
# must answer 200. Plain bash (/dev/tcp), so the slim runtime images need no
# HTTP client package.
#   healthcheck.sh [PORT] [PATH]    defaults: $LLMT_HTTP_PORT or 7071, /healthz
set -u
port="${1:-${LLMT_HTTP_PORT:-7071}}"
path="${2:-/healthz}"
if ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
  echo "healthcheck: nothing listens on port $port"
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
read -r -t 5 status_line <&3 || { echo "healthcheck: no answer on port $port"; exit 1; }
exec 3<&-
case "$status_line" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "healthcheck: $path on port $port answered: ${status_line%$'\r'}"; exit 1 ;;
esac
