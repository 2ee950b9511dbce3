#!/bin/bash
# The single-node cluster's binaries, built from the Go module proxy once per machine
# (~15 min on 2 cores the first time; the module and build caches stay in $STATE):
# Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl), etcd, CoreDNS and a pause binary for pod sandboxes, into $STATE/bin.
#
# k8s.io/kubernetes and etcd's server cannot be `go install`ed (their go.mod replace their
# own modules with ../ paths): each is built from a wrapper module that requires it and
# maps each of those modules to its published release, derived from their own go.mod.
set -euo pipefail

cd "$(dirname "$0")/../../.."
STATE=${K8S_STATE:-$PWD/.kbatch/k8s}
K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.13}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOMODCACHE=$STATE/gomod GOCACHE=$STATE/gocache GOFLAGS=-trimpath
BIN=$STATE/bin
mkdir -p "$BIN"

log() { printf '[k8s-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# A wrapper module in $1 requiring $2@$3, importing the packages $4...
wrapper() {
  local dir=$1 module=$2 version=$3; shift 3
  mkdir -p "$dir"
  printf 'module kbatch.local/build\n\ngo 1.24.0\n\nrequire %s %s\n' "$module" "$version" >"$dir/go.mod"
  {
    printf '//go:build tools\n\npackage build\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } >"$dir/tools.go"
}

built() { [[ -x $BIN/$1 && -f $BIN/.$1.$2 ]]; }
mark() { rm -f "$BIN/.$1".*; touch "$BIN/.$1.$2"; }

build_kubernetes() {
  local commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local missing=()
  for c in "${commands[@]}"; do built "$c" "$K8S_VERSION" || missing+=("$c"); done
  ((${#missing[@]})) || return 0
  local dir=$STATE/build/kubernetes
  wrapper "$dir" k8s.io/kubernetes "$K8S_VERSION" "${commands[@]/#/k8s.io/kubernetes/cmd/}"
  (
    cd "$dir"
    # Its staging modules (k8s.io/api => ./staging/src/k8s.io/api, ...) are published as
    # v0.<minor>.<patch> of the same release.
    local gomod staging=v0${K8S_VERSION#v1}
    gomod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$gomod" | while read -r module; do
      printf 'replace %s => %s %s\n' "$module" "$module" "$staging"
    done >>go.mod
    "$GO" mod tidy >/dev/null 2>&1 || "$GO" mod tidy
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
    ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    for c in "${missing[@]}"; do
      log "building $c $K8S_VERSION"
      "$GO" build -ldflags="$ld" -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c"
      mark "$c" "$K8S_VERSION"
    done
  )
}

build_etcd() {
  built etcd "$ETCD_VERSION" && return 0
  local dir=$STATE/build/etcd
  wrapper "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
  log "building etcd $ETCD_VERSION"
  (cd "$dir" && "$GO" mod tidy >/dev/null 2>&1 && "$GO" build -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  mark etcd "$ETCD_VERSION"
}

build_coredns() {
  built coredns "$COREDNS_VERSION" && return 0
  log "building coredns $COREDNS_VERSION"
  CGO_ENABLED=0 GOBIN=$BIN "$GO" install -ldflags="-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mark coredns "$COREDNS_VERSION"
}

build_pause() {
  built pause 1 && return 0
  local dir=$STATE/build/pause
  mkdir -p "$dir"
  cp deploy/k8s/local/pause.go "$dir/main.go"
  printf 'module kbatch.local/pause\n\ngo 1.24.0\n' >"$dir/go.mod"
  (cd "$dir" && CGO_ENABLED=0 "$GO" build -ldflags="-s -w" -o "$BIN/pause" .)
  mark pause 1
}

started=$SECONDS
build_pause
build_etcd
build_coredns
build_kubernetes
log "binaries ready in $BIN ($((SECONDS - started)) s)"
