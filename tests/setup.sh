#!/usr/bin/env bash
# Installs what the tests need and is missing, on Debian bookworm. Idempotent:
# a second run installs nothing. Needs root (or sudo) only when a package is
# missing.
#
#   - PostgreSQL 15 server and client (the throwaway clusters, pg_recvlogical)
#   - etcd-server, Go 1.19, rsync: to build and run a real kube-apiserver,
#     built once per machine by tests/k8s/build-kube-apiserver.sh into
#     ~/.cache/realtime (outside the repository)
#   - cargo-nextest: the test runner
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/pg_recvlogical ] || missing+=(postgresql-client-15)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
[ -x /usr/lib/go-1.19/bin/go ] || missing+=(golang-1.19-go)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # postgresql-15's post-install creates and starts a system cluster; the tests
  # never use it (each starts its own), so it is stopped to free the CPU.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    as_root pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest >&2
fi

log "kube-apiserver: $(bash tests/k8s/build-kube-apiserver.sh)"
