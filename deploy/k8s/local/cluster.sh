#!/bin/bash
# A single-node Kubernetes on this host, from the binaries deploy/k8s/local/build.sh makes:
# etcd, the API server, controller manager and scheduler, Debian's containerd (a private
# instance: its own socket, root and state under $RUN) with runc, a CNI bridge, kube-proxy
# (iptables) and CoreDNS, so pods reach each other and services by name. No registry:
# images are imported into containerd and pods use imagePullPolicy: Never.
#
#   cluster.sh up      start it (root), wait until the node and DNS are Ready
#   cluster.sh down    stop what `up` started (by recorded PIDs) and leave the host as found:
#                      iptables rules, sysctls, the cni0 bridge, cgroups and mounts
#   cluster.sh import IMAGE.tar...   load docker-save archives into the node's containerd
#
# KUBECONFIG for kubectl: $RUN/pki/admin.kubeconfig (printed by `up`).
set -euo pipefail

cd "$(dirname "$0")/../../.."
REPO=$PWD
STATE=${K8S_STATE:-$REPO/.kbatch/k8s}
RUN=$STATE/run
BIN=$STATE/bin
LOCAL=$REPO/deploy/k8s/local
CNI_DIR=${CNI_DIR:-/usr/lib/cni}
NODE_IP=$(ip -4 route get 1.1.1.1 | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
NODE=$(hostname | tr '[:upper:]' '[:lower:]')
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.0/24
DNS_IP=10.96.0.10
CTR=(ctr --address "$RUN/containerd/containerd.sock" -n k8s.io)
export KUBECONFIG=$RUN/pki/admin.kubeconfig

# shellcheck source=deploy/local/iptables.sh
source "$REPO/deploy/local/iptables.sh"

log() { printf '[k8s %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
kubectl() { "$BIN/kubectl" "$@"; }

# The sysctls the kubelet and kube-proxy change (the kubelet sets kernel.panic=10 and
# panic_on_oops=1: an oops would reboot the machine), restored by `down`.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet
  net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)

render() {  # TEMPLATE OUT: @RUN@ @NODE@ @NODE_IP@ @CNI_DIR@ @POD_CIDR@ @DNS_IP@ substituted
  sed -e "s#@RUN@#$RUN#g" -e "s#@NODE@#$NODE#g" -e "s#@NODE_IP@#$NODE_IP#g" \
    -e "s#@CNI_DIR@#$CNI_DIR#g" -e "s#@POD_CIDR@#$POD_CIDR#g" -e "s#@DNS_IP@#$DNS_IP#g" "$1" >"$2"
}

start() {  # NAME COMMAND...: in the background, its PID recorded for `down`
  local name=$1; shift
  "$@" >"$RUN/logs/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name"
}

wait_until() {  # SECONDS WHAT COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$((seconds * 2))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$what not ready after ${seconds} s"; return 1
}

certificates() {
  local pki=$RUN/pki
  mkdir -p "$pki"
  openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj /CN=kbatch-local-ca -days 30 -out "$pki/ca.crt"
  issue() {  # NAME CN ORG SANS
    local name=$1 cn=$2 org=$3 sans=$4 subject="/CN=$2"
    [[ -n $org ]] && subject="/O=$org/CN=$cn"
    openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"
      [[ -n $sans ]] && echo "subjectAltName=$sans"
    } >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  }
  local names="DNS:localhost,DNS:$NODE,IP:127.0.0.1,IP:$NODE_IP"
  issue apiserver kube-apiserver "" \
    "$names,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1"
  issue admin kbatch-admin system:masters ""
  issue controller-manager system:kube-controller-manager "" ""
  issue scheduler system:kube-scheduler "" ""
  issue kubelet "system:node:$NODE" system:nodes "$names"
  issue kube-proxy system:kube-proxy "" ""
  issue apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  openssl genrsa -out "$pki/service-accounts.key" 2048 2>/dev/null
  openssl rsa -in "$pki/service-accounts.key" -pubout -out "$pki/service-accounts.pub" 2>/dev/null
  for user in admin controller-manager scheduler kubelet kube-proxy; do
    cat >"$pki/$user.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {certificate-authority: $pki/ca.crt, server: "https://127.0.0.1:6443"}}]
users: [{name: $user, user: {client-certificate: $pki/$user.crt, client-key: $pki/$user.key}}]
contexts: [{name: local, context: {cluster: local, user: $user}}]
current-context: local
KUBECONFIG
  done
}

remember_host() {
  iptables-save >"$RUN/iptables.before"
  modprobe br_netfilter 2>/dev/null || true
  : >"$RUN/sysctl.before"
  for key in "${SYSCTLS[@]}"; do
    value=$(sysctl -n "$key" 2>/dev/null) && echo "$key=$value" >>"$RUN/sysctl.before"
  done
  sysctl -qw net.ipv4.ip_forward=1
}

# A service address kube-proxy has not (yet) mapped to a pod must fail as in any cluster.
# Here it would leave by the default route, and this host's network answers anything: a
# client kept an HTTP connection to that answer and read 404s from it for good. Inserted
# once the first pod is up: ahead of the CNI plugin's FORWARD rules, which accept
# whatever a pod sends, and which it adds with that first pod.
reject_unmapped_services() {
  for chain in FORWARD OUTPUT; do
    iptables -I "$chain" 1 -d "$SERVICE_CIDR" -p tcp -j REJECT --reject-with tcp-reset
    iptables -I "$chain" 2 -d "$SERVICE_CIDR" -j REJECT
  done
}

control_plane() {
  local pki=$RUN/pki
  start etcd "$BIN/etcd" --data-dir "$RUN/etcd" --name local \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster local=http://127.0.0.1:2380
  wait_until 30 etcd curl -sf http://127.0.0.1:2379/health
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$NODE_IP" --secure-port 6443 --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --service-account-key-file "$pki/service-accounts.pub" \
    --service-account-signing-key-file "$pki/service-accounts.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
  wait_until 60 "the API server" kubectl get --raw /readyz
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$pki/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$pki/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$pki/controller-manager.kubeconfig" \
    --service-account-private-key-file "$pki/service-accounts.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --leader-elect=false --service-cluster-ip-range "$SERVICE_CIDR"
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$pki/scheduler.kubeconfig" \
    --authentication-kubeconfig "$pki/scheduler.kubeconfig" \
    --authorization-kubeconfig "$pki/scheduler.kubeconfig" --leader-elect=false
}

node() {
  mkdir -p "$RUN/containerd" "$RUN/cni-conf" "$RUN/kubelet"
  render "$LOCAL/containerd.toml" "$RUN/containerd/config.toml"
  render "$LOCAL/cni-bridge.conflist" "$RUN/cni-conf/10-bridge.conflist"
  render "$LOCAL/kubelet.yaml" "$RUN/kubelet/config.yaml"
  start containerd containerd --config "$RUN/containerd/config.toml"
  wait_until 30 containerd "${CTR[@]}" version
  "$LOCAL/oci_image.py" "$RUN/pause.tar" localhost/pause:kbatch "$BIN/pause" /pause
  "$LOCAL/oci_image.py" "$RUN/coredns.tar" localhost/coredns:kbatch "$BIN/coredns" /coredns
  "${CTR[@]}" images import "$RUN/pause.tar" >/dev/null
  "${CTR[@]}" images import "$RUN/coredns.tar" >/dev/null
  start kubelet "$BIN/kubelet" --config "$RUN/kubelet/config.yaml" \
    --kubeconfig "$RUN/pki/kubelet.kubeconfig" --root-dir "$RUN/kubelet/root" \
    --node-ip "$NODE_IP" --hostname-override "$NODE"
  start kube-proxy "$BIN/kube-proxy" --kubeconfig "$RUN/pki/kube-proxy.kubeconfig" \
    --hostname-override "$NODE" --cluster-cidr "$POD_CIDR" --proxy-mode iptables \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --iptables-localhost-nodeports=false --oom-score-adj 0
  kubectl create clusterrolebinding kube-proxy-node-proxier --clusterrole system:node-proxier \
    --user system:kube-proxy >/dev/null
  wait_until 120 "the node" kubectl wait --for condition=Ready "node/$NODE" --timeout 1s
  render "$LOCAL/coredns.yaml" "$RUN/coredns.yaml"
  kubectl apply -f "$RUN/coredns.yaml" >/dev/null
  kubectl -n kube-system rollout status deployment/coredns --timeout 120s >/dev/null
  reject_unmapped_services
}

up() {
  [[ $(id -u) -eq 0 ]] || { log "a node needs root"; exit 1; }
  [[ -x $BIN/kubelet ]] || "$LOCAL/build.sh"
  if [[ -d $RUN/pids ]]; then log "a cluster runs already (cluster.sh down first)"; exit 1; fi
  rm -rf "$RUN"
  mkdir -p "$RUN/logs" "$RUN/pids"
  local started=$SECONDS
  remember_host
  certificates
  control_plane
  node
  log "cluster ready in $((SECONDS - started)) s; export KUBECONFIG=$KUBECONFIG"
}

stop_pid() {  # NAME [GRACE_S]: SIGTERM, then SIGKILL after the grace period
  local file=$RUN/pids/$1 grace=${2:-20} pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
  for _ in $(seq "$((grace * 2))"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

down() {
  [[ -d $RUN ]] || return 0
  if [[ -f $RUN/pids/kube-apiserver ]]; then
    kubectl delete namespace kbatch --ignore-not-found --wait=true --timeout 90s >/dev/null 2>&1 || true
  fi
  stop_pid kubelet
  stop_pid kube-proxy
  if [[ -S $RUN/containerd/containerd.sock ]]; then
    for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s KILL "$task" || true; done
    sleep 1
    for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$task" || true; done
    for container in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$container" || true; done
  fi
  stop_pid containerd
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver 45  # may sit on SIGTERM for over 40 s
  stop_pid etcd
  "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  ip link delete cni0 2>/dev/null || true
  for group in /sys/fs/cgroup/*/kubepods; do
    [[ -d $group ]] && find "$group" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  grep " $RUN" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  if [[ -f $RUN/iptables.before ]]; then restore_iptables "$RUN/iptables.before"; fi
  if [[ -f $RUN/sysctl.before ]]; then
    while IFS= read -r setting; do sysctl -qw "$setting" || true; done <"$RUN/sysctl.before"
  fi
  rm -rf "$RUN/pids"
  log "cluster stopped; the host's iptables rules and sysctls restored"
}

import_images() {
  for archive in "$@"; do "${CTR[@]}" images import "$archive" >/dev/null; done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  import) shift; import_images "$@" ;;
  *) echo "usage: $0 up|down|import IMAGE.tar..." >&2; exit 2 ;;
esac
