# shellcheck shell=bash
# Sourced by slurm-up.sh and slurm-down.sh: finding and checking the daemons they start, by pid file.
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
# shellcheck disable=SC2015  # an empty or missing file gives no pid, not an error
pid_from() { [[ -s "$1" ]] && tr -dc '0-9' <"$1" || true; }
# The process behind a pid file, only if it is the program we expect (a stale file may name an unrelated pid).
our_pid() {
    local pid
    pid="$(pid_from "$1")"
    if pid_alive "$pid" && grep -qa "$2" "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; fi
}
# Node names of a local cluster of $1 nodes: `localhost` alone, or n1 .. n<N> (launch/slurm-up.sh --nodes N).
node_names() { if (($1 == 1)); then echo localhost; else seq -f 'n%g' -s ' ' 1 "$1"; fi; }
# slurmd's pid file for node $3 of the cluster of $2 nodes in state dir $1 (SlurmdPidFile in slurm.conf).
slurmd_pidfile() { if (($2 == 1)); then echo "$1/run/slurmd.pid"; else echo "$1/run/slurmd-$3.pid"; fi; }
# The node count of the cluster whose env.sh is $1: a cluster started before --nodes existed had one node.
cluster_nodes() {
    local n
    n="$(sed -n 's/^export DPO_SWEEPS_SLURM_NODES=//p' "$1" 2>/dev/null || true)"
    echo "${n:-1}"
}
