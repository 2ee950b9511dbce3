#!/bin/bash
# `make test-k8s`: deploy/k8s applied to a real single-node Kubernetes on this host.
# Builds the cluster's binaries (once per machine) and kbatch's images (those `make
# test-deploy` builds), starts the cluster, imports the images, runs tests/k8s, and stops
# the cluster on every exit path, leaving the host as it found it.
set -euo pipefail

cd "$(dirname "$0")/../../.."
REPO=$PWD
STATE=${K8S_STATE:-$REPO/.kbatch/k8s}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
LOCAL=$REPO/deploy/k8s/local
log() { printf '[test-k8s %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

started=$SECONDS
"$LOCAL/build.sh"
log "binaries ready after $((SECONDS - started)) s"
rm -rf "$STATE/images"
deploy/local/test-deploy.sh --images-to "$STATE/images"
log "images ready after $((SECONDS - started)) s"

trap '"$LOCAL/cluster.sh" down' EXIT
"$LOCAL/cluster.sh" up
"$LOCAL/cluster.sh" import "$STATE"/images/*.tar
log "cluster up with kbatch's images after $((SECONDS - started)) s"

status=0
RUN_K8S_TEST=1 KUBECONFIG=$STATE/run/pki/admin.kubeconfig KUBECTL=$STATE/bin/kubectl \
  "$PYTHON" -m pytest -p no:cacheprovider tests/k8s "$@" || status=$?
log "make test-k8s took $((SECONDS - started)) s"
exit "$status"
