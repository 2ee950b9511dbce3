# Sourced by test-deploy.sh and deploy/k8s/local/cluster.sh: put the host's iptables back
# as a snapshot (iptables-save) found them. iptables-restore rewrites only the tables the
# snapshot holds; a table it lacks had never been loaded, so it was empty with ACCEPT
# policies, and is made so again (dockerd's and the kubelet's chains there go too).
restore_iptables() {
  local snapshot=$1 table chain
  iptables-restore <"$snapshot"
  for table in filter nat mangle raw; do
    grep -q "^\*$table" "$snapshot" && continue
    iptables -t "$table" -F 2>/dev/null || continue
    iptables -t "$table" -X
    for chain in $(iptables -t "$table" -S | awk '$1 == "-P" {print $2}'); do
      iptables -t "$table" -P "$chain" ACCEPT
    done
  done
}
