#!/usr/bin/env bash
# Builds kube-apiserver v1.20.2 from Debian's `kubernetes` source package, once
# per machine, into a cache directory outside the repository.
#
# Why: the tests need a real Kubernetes API server and no prebuilt binary can be
# had from the package registries these machines reach. Debian's source package
# builds one; its vendored reflect2 crashes under Go >= 1.18 on the first
# server-side apply of a custom resource, so the vendored reflect2 and
# json-iterator are replaced with Debian's fixed copies.
#
# Prints the path of the binary on its last line. Idempotent: a cached binary is
# reused. Needs root for apt-get (or the packages already installed).
#
#   KUBE_APISERVER_CACHE   cache directory (default: ${XDG_CACHE_HOME:-~/.cache}/realtime)
set -euo pipefail

VERSION=v1.20.2
CACHE=${KUBE_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime}
OUT="$CACHE/kube-apiserver-$VERSION/kube-apiserver"

if [ -x "$OUT" ]; then
  echo "$OUT"
  exit 0
fi

log() { echo "[build-kube-apiserver] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
[ -x /usr/lib/go-1.19/bin/go ] || need_pkgs+=(golang-1.19-go)
command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
command -v dpkg-source >/dev/null 2>&1 || need_pkgs+=(dpkg-dev)
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kube-apiserver-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Source entries for the suites this machine already uses: never a host name in
# the repository. deb822 (debian.sources) and one-line (sources.list) formats.
APT="$WORK/apt"
mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/archives/partial"
: > "$APT/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$APT/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  grep -E '^\s*deb\s' "$f" | sed -E 's/^\s*deb\s/deb-src /' >> "$APT/sources.list" || true
done
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list"
          -o "Dir::Etc::SourceParts=$APT/sources.list.d"
          -o "Dir::State::Lists=$APT/lists"
          -o "Dir::Cache::Archives=$APT/archives")

log "fetching the kubernetes source package"
apt-get "${APT_OPTS[@]}" update -qq >&2
cd "$WORK"
apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2
dsc=$(ls kubernetes_*.dsc | head -n1)
dpkg-source -x "$dsc" src >&2

log "replacing vendored reflect2 and json-iterator with Debian's fixed copies"
mkdir -p debs
(cd debs && apt-get download golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >&2)
for d in debs/*.deb; do dpkg -x "$d" debs/root; done
rm -rf src/vendor/github.com/modern-go/reflect2 src/vendor/github.com/json-iterator/go
cp -r debs/root/usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2
cp -r debs/root/usr/share/gocode/src/github.com/json-iterator/go src/vendor/github.com/json-iterator/go

log "building cmd/kube-apiserver (several minutes)"
mkdir -p gopath/src/k8s.io
ln -s "$WORK/src" gopath/src/k8s.io/kubernetes
cd gopath/src/k8s.io/kubernetes
GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" \
  PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 \
  make WHAT=cmd/kube-apiserver >&2

bin=$(find _output -type f -name kube-apiserver -perm -u+x | head -n1)
[ -n "$bin" ] || { log "build produced no kube-apiserver"; exit 1; }
mkdir -p "$(dirname "$OUT")"
cp "$bin" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "built $OUT"
echo "$OUT"
