#!/usr/bin/env bash
# make slurm-down      (= bash launch/slurm-down.sh; works from any directory)
#
# Stops the local cluster that launch/slurm-up.sh started, in reverse order: cancels its jobs, stops slurmd (every
# node's), slurmctld, slurmdbd and MariaDB by pid, then munged if slurm-up started it, and checks that nothing is left
# running. For a cluster of several nodes it then removes the network namespaces, veth pairs and bridge that slurm-up
# created (exactly those listed in run/net-created, nothing else).
# Safe to run when nothing (or only part of it) runs. Keeps the logs in the state dir
# (${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/log); removes env.sh. The next slurm-up wipes the job database too.
set -euo pipefail

STATE_DIR="${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}"
[[ "$STATE_DIR" = /* ]] || STATE_DIR="$(pwd)/$STATE_DIR"
CONF="$STATE_DIR/slurm.conf"
PATH="$PATH:/usr/sbin:/sbin"

log() { echo "slurm-down: $*"; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/pids.sh
source "$HERE/pids.sh"
# shellcheck source=launch/netns.sh
source "$HERE/netns.sh"
# Send TERM, wait up to $3 seconds, then KILL.
stop_pid() {
    local pid="$1" name="$2" wait_s="${3:-10}" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 10; i++)); do
        pid_alive "$pid" || {
            log "stopped $name (pid $pid)"
            return 0
        }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    log "killed $name (pid $pid) after ${wait_s}s"
}

if [[ ! -d "$STATE_DIR" ]]; then
    log "no state dir $STATE_DIR; nothing to stop"
    exit 0
fi

ctld="$(our_pid "$STATE_DIR/run/slurmctld.pid" slurmctld)"
dbd="$(our_pid "$STATE_DIR/run/slurmdbd.pid" slurmdbd)"
db="$(our_pid "$STATE_DIR/mariadb/mariadbd.pid" mariadbd)"
# Every node's slurmd: run/slurmd.pid (one node) or run/slurmd-<node>.pid (--nodes N).
slurmd_pids=()
for pidfile in "$STATE_DIR"/run/slurmd.pid "$STATE_DIR"/run/slurmd-*.pid; do
    pid="$(our_pid "$pidfile" slurmd)"
    [[ -n "$pid" ]] && slurmd_pids+=("$pid")
done

# 1. Jobs first: slurmstepd and job processes outlive slurmd, so cancel them while the daemons still run.
if [[ -n "$ctld" && ${#slurmd_pids[@]} -gt 0 && -f "$CONF" ]]; then
    export SLURM_CONF="$CONF"
    jobs="$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)"
    if [[ -n "${jobs// /}" ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        # KillWait (5 s) after SIGTERM, then SIGKILL: give them a bit longer than that.
        for _ in $(seq 100); do
            left="$(timeout 5 squeue -h -t RUNNING,COMPLETING,SUSPENDED,CONFIGURING -o %i 2>/dev/null || true)"
            [[ -z "$left" ]] && break
            sleep 0.1
        done
        [[ -z "$left" ]] || log "jobs still ending after 10 s: $(echo "$left" | tr '\n' ' ') (killing them below)"
    fi
fi

# 2. Daemons, by pid.
# Every node's slurmd takes ~2 s to exit: signal them all first, then wait for each.
for pid in "${slurmd_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${slurmd_pids[@]}"; do
    if pid_alive "$pid"; then stop_pid "$pid" slurmd 10; else log "stopped slurmd (pid $pid)"; fi
done
[[ -n "$ctld" ]] && stop_pid "$ctld" slurmctld 10
[[ -z "${slurmd_pids[*]}$ctld" ]] && log "slurmctld/slurmd of $STATE_DIR not running"
# Accounting after slurmctld (which sends slurmdbd its last job records on the way down), MariaDB last.
[[ -n "$dbd" ]] && stop_pid "$dbd" slurmdbd 10
[[ -n "$db" ]] && stop_pid "$db" mariadbd 20

# 3. Strays: slurmstepd (and anything else) forked from our slurmd carries DPO_SWEEPS_SLURM_DIR in its env.
for env_file in /proc/[0-9]*/environ; do
    pid="${env_file#/proc/}"
    pid="${pid%/environ}"
    [[ "$pid" == "$$" ]] && continue
    if grep -qzxF "DPO_SWEEPS_SLURM_DIR=$STATE_DIR" "$env_file" 2>/dev/null; then
        cmd="$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null || true)"
        case "$cmd" in
        slurmstepd* | *slurmd* | *slurmctld* | *mariadbd*)
            kill -KILL "$pid" 2>/dev/null && log "killed stray $cmd(pid $pid)"
            ;;
        esac
    fi
done

# 4. The nodes' namespaces, veth pairs and bridge (--nodes N): after their processes, which would keep a namespace.
if [[ -f "$STATE_DIR/run/net-created" ]]; then
    net_down "$STATE_DIR/run/net-created" | sed 's/^/slurm-down: /' ||
        log "could not remove everything listed in $STATE_DIR/run/net-created (see above); run slurm-down again"
fi

# 5. munged, only if slurm-up started it and no other cluster (another DPO_SWEEPS_SLURM_DIR) still uses it: there is
# one munged per machine, shared by every cluster on it.
other_slurm_daemons() {
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"
        pid="${pid%/cmdline}"
        case "$({ tr '\0' ' ' <"$f"; } 2>/dev/null || true)" in
        slurmctld* | slurmd* | */slurmctld* | */slurmd*) echo "$pid" ;; # slurmd* also matches slurmdbd
        esac
    done
}
if [[ -f "$STATE_DIR/run/munged.started-by-slurm-up" && -n "$(other_slurm_daemons)" ]]; then
    log "munged is still used by other SLURM daemons (pids $(other_slurm_daemons | tr '\n' ' ')); leaving it running"
    rm -f "$STATE_DIR/run/munged.started-by-slurm-up"
elif [[ -f "$STATE_DIR/run/munged.started-by-slurm-up" ]]; then
    mpid="$(our_pid /run/munge/munged.pid munged)"
    [[ -n "$mpid" ]] || mpid="$(pid_from "$STATE_DIR/run/munged.started-by-slurm-up")"
    if pid_alive "$mpid" && grep -qa munged "/proc/$mpid/cmdline" 2>/dev/null; then
        stop_pid "$mpid" munged 5
    else
        log "munged already gone"
    fi
    rm -f "$STATE_DIR/run/munged.started-by-slurm-up"
else
    log "munged was not started by slurm-up; leaving it alone"
fi

rm -f "$STATE_DIR/env.sh" "$STATE_DIR/run/slurmctld.pid" "$STATE_DIR/run/slurmd.pid" "$STATE_DIR"/run/slurmd-*.pid \
    "$STATE_DIR/run/slurmdbd.pid"
log "done; logs kept in $STATE_DIR/log"
