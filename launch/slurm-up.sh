#!/usr/bin/env bash
# make slurm-up            (= bash launch/slurm-up.sh; works from any directory)
# make slurm-up NODES=2    (= bash launch/slurm-up.sh --nodes 2: two nodes, each in its own network namespace)
#
# Starts a real SLURM cluster on this machine (Debian's slurm-wlm + munge) with job accounting, for tests, CI and
# demos: munged, then MariaDB (its own data dir and port) -> slurmdbd -> slurmctld -> slurmd, with configs generated
# into a fresh state directory, so that `sacct` works and submitit sees real job states. Then:
#   source "${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/env.sh"      # sets SLURM_CONF, DPO_SWEEPS_SLURM_NODES
#   sinfo; sbatch ...; python -m dpo_sweeps -m hydra/launcher=slurm ...
# Stop it with `make slurm-down`. Running this again while the cluster is up (with the same --nodes) does nothing.
#
# --nodes 1 (the default): one node called `localhost`, NodeAddr 127.0.0.1, all of the machine's CPUs.
# --nodes N (N >= 2): nodes n1..nN, one controller (and slurmdbd/MariaDB as above) in the root namespace, and one
#   `slurmd -N n<i>` per node in its own network namespace (address <subnet>.<i>), UTS namespace (hostname n<i>) and
#   private mount namespace (a hosts file naming every node bind-mounted over /etc/hosts; the machine's own
#   /etc/hosts is never touched). A bridge holding <subnet>.254 joins them to the root namespace; the nodes have no
#   default route. `scontrol show node` shows each NodeAddr. slurm-down removes every namespace, interface and daemon
#   it started. Where namespaces cannot be created (no `ip netns`, nsenter or unshare), it says so in one line and
#   starts the one-node cluster instead.
#
# Environment knobs:
#   DPO_SWEEPS_SLURM_DIR            state dir (config, logs, spool, pids, env.sh)   default /tmp/dpo_sweeps_slurm
#   DPO_SWEEPS_SLURMCTLD_PORT       slurmctld port (not the default 6817, so a real install is left alone)   16817
#   DPO_SWEEPS_SLURMD_PORT          slurmd port (with --nodes N every node uses it in its own namespace)   16818
#   DPO_SWEEPS_SLURMDBD_PORT        slurmdbd port (accounting daemon)                default 16819
#   DPO_SWEEPS_MARIADB_PORT         MariaDB port, 127.0.0.1 only (not 3306: a real MariaDB is left alone)   16820
#   DPO_SWEEPS_SLURM_START_TIMEOUT  seconds to wait for each daemon to be ready (node idle, database up)  60
#   DPO_SWEEPS_SLURM_MAX_ARRAY_SIZE slurm.conf MaxArraySize (tasks per array job)     default 3 (SLURM's own: 1001)
#   DPO_SWEEPS_SLURM_MAX_JOB_COUNT  slurm.conf MaxJobCount (jobs slurmctld holds)    default 10000 (SLURM's own)
#   DPO_SWEEPS_SLURM_ENFORCE_MEMORY 1 = memory is a consumable resource and a job step over its --mem is killed
#                                   (no cgroups needed: jobacct_gather's OverMemoryKill, polled every second); each
#                                   CPU's default share is RealMemory / CPUs, so jobs that ask for none still run as
#                                   many at once. The job then ends FAILED with "exceeded memory limit" in its log
#                                   (OUT_OF_MEMORY is what task/cgroup sites record). tests/test_replan_slurm.py
#                                   starts a second cluster with it.                  default 0
# Only with --nodes N >= 2:
#   DPO_SWEEPS_SLURM_SUBNET         the nodes' /24, as its first three octets: node i is .i, the bridge .254
#                                                                                    default 10.123.0
#   DPO_SWEEPS_SLURM_BRIDGE         the bridge in the root namespace (at most 15 characters)   default dposlurm-br0
#   DPO_SWEEPS_SLURM_NETNS_PREFIX   node i's network namespace and the root end of its veth pair are <prefix>-n<i>
#                                   (at most 10 characters)                           default dposlurm
#   DPO_SWEEPS_SLURM_NODE_CPUS      CPUs per node in slurm.conf   default: the machine's CPUs / N, at least 1 (the
#                                   nodes share the machine's cores; more than that oversubscribes them)
# Two clusters run side by side when each has its own DPO_SWEEPS_SLURM_DIR and its own four ports (and, with
# --nodes N, its own subnet, bridge and namespace prefix).
# Needs root: slurmd launches jobs, munged runs as the munge user, and the namespaces need it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}"
CTLD_PORT="${DPO_SWEEPS_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${DPO_SWEEPS_SLURMD_PORT:-16818}"
DBD_PORT="${DPO_SWEEPS_SLURMDBD_PORT:-16819}"
DB_PORT="${DPO_SWEEPS_MARIADB_PORT:-16820}"
START_TIMEOUT="${DPO_SWEEPS_SLURM_START_TIMEOUT:-60}"
# Deliberately small: every test sweep of 4+ points is split into several arrays, as on a site with a low limit.
MAX_ARRAY_SIZE="${DPO_SWEEPS_SLURM_MAX_ARRAY_SIZE:-3}"
MAX_JOB_COUNT="${DPO_SWEEPS_SLURM_MAX_JOB_COUNT:-10000}"
ENFORCE_MEMORY="${DPO_SWEEPS_SLURM_ENFORCE_MEMORY:-0}"
# Marks a directory as ours, so that a fresh start may delete it (and nothing else).
MARKER=".dpo_sweeps_slurm_state"
# Node count: --nodes N (make slurm-up NODES=N). Asked for, not necessarily what starts (see the fallback below).
NODES=1
PATH="$PATH:/usr/sbin:/sbin"

log() { echo "slurm-up: $*"; }
die() {
    echo "slurm-up: ERROR: $*" >&2
    if [[ -n "${DAEMONS_STARTED:-}" ]]; then
        echo "slurm-up: stopping what was started (logs stay in $STATE_DIR/log)" >&2
        DPO_SWEEPS_SLURM_DIR="$STATE_DIR" bash "$HERE/slurm-down.sh" >&2 || true
    fi
    exit 1
}

while (($#)); do
    case "$1" in
    --nodes)
        NODES="${2:-}"
        shift 2 || shift
        ;;
    --nodes=*)
        NODES="${1#*=}"
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: slurm-up.sh [--nodes N])" ;;
    esac
done
if ! [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || ((NODES > 253)); then
    die "--nodes wants a number from 1 to 253, got '$NODES'"
fi
NODES_ASKED="$NODES"
SUBNET="${DPO_SWEEPS_SLURM_SUBNET:-10.123.0}"
BRIDGE="${DPO_SWEEPS_SLURM_BRIDGE:-dposlurm-br0}"
NETNS_PREFIX="${DPO_SWEEPS_SLURM_NETNS_PREFIX:-dposlurm}"
if ((NODES > 1)); then
    octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
    [[ "$SUBNET" =~ ^$octet\.$octet\.$octet$ ]] ||
        die "DPO_SWEEPS_SLURM_SUBNET wants the first three octets of a /24 (e.g. 10.123.0), got '$SUBNET'"
    [[ "$BRIDGE" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] ||
        die "DPO_SWEEPS_SLURM_BRIDGE must be an interface name of 1-15 letters, digits, '_', '.', '-': '$BRIDGE'"
    [[ "$NETNS_PREFIX" =~ ^[A-Za-z0-9_.-]{1,10}$ ]] ||
        die "DPO_SWEEPS_SLURM_NETNS_PREFIX must be 1-10 letters, digits, '_', '.', '-' (<prefix>-n<i> names an" \
            "interface: 15 characters at most): '$NETNS_PREFIX'"
    [[ -z "${DPO_SWEEPS_SLURM_NODE_CPUS:-}" || "${DPO_SWEEPS_SLURM_NODE_CPUS}" =~ ^[1-9][0-9]*$ ]] ||
        die "DPO_SWEEPS_SLURM_NODE_CPUS wants a positive number, got '$DPO_SWEEPS_SLURM_NODE_CPUS'"
fi

[[ "$STATE_DIR" = /* ]] || STATE_DIR="$(pwd)/$STATE_DIR"
CONF="$STATE_DIR/slurm.conf"
# slurmdbd has no -f: it reads slurmdbd.conf from the folder of $SLURM_CONF.
DBD_CONF="$STATE_DIR/slurmdbd.conf"
# MariaDB's own folder (data, socket, pid file), owned by the mysql user it drops to.
DB_DIR="$STATE_DIR/mariadb"
DB_PID="$DB_DIR/mariadbd.pid"
DB_SOCK="$DB_DIR/mysqld.sock"

# Every node's state as "<node>=<state> ..." (sinfo prints a node once per partition it is in).
node_states() { timeout 5 sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ' || true; }
# True when the cluster has exactly $1 nodes and the state of each matches the extended regex $2.
nodes_in_state() {
    local count=0 entry
    for entry in $(node_states); do
        [[ "${entry#*=}" =~ $2 ]] || return 1
        count=$((count + 1))
    done
    ((count == $1))
}
# shellcheck source=launch/pids.sh
source "$HERE/pids.sh"
# shellcheck source=launch/netns.sh
source "$HERE/netns.sh"
# What --nodes asked for when the cluster in the state dir was started (it may have fallen back to one node).
ASKED_FILE="$STATE_DIR/run/nodes-asked"
# The namespaces, veth pairs and bridge of a multi-node cluster, one line each as it is created (launch/netns.sh).
NET_RECORD="$STATE_DIR/run/net-created"

# --- 1. already running? ---------------------------------------------------------------------------------------------
if [[ -f "$STATE_DIR/env.sh" && -f "$CONF" ]]; then
    running="$(cluster_nodes "$STATE_DIR/env.sh")"
    ctld="$(our_pid "$STATE_DIR/run/slurmctld.pid" slurmctld)"
    dbd="$(our_pid "$STATE_DIR/run/slurmdbd.pid" slurmdbd)"
    db="$(our_pid "$DB_PID" mariadbd)"
    slurmd_pids=()
    for node in $(node_names "$running"); do
        pid="$(our_pid "$(slurmd_pidfile "$STATE_DIR" "$running" "$node")" slurmd)"
        [[ -n "$pid" ]] && slurmd_pids+=("$node=$pid")
    done
    if [[ -n "$ctld" && ${#slurmd_pids[@]} -eq $running && -n "$dbd" && -n "$db" ]] &&
        SLURM_CONF="$CONF" nodes_in_state "$running" '^(idle|mixed|allocated|completing)'; then
        # Nothing to do when it has the nodes asked for, or when it fell back to one node for this same --nodes.
        if [[ "$NODES" == "$running" || "$NODES" == "$(cat "$ASKED_FILE" 2>/dev/null || true)" ]]; then
            if ((running == 1)); then
                log "already running (mariadbd pid $db, slurmdbd pid $dbd, slurmctld pid $ctld, slurmd pid" \
                    "${slurmd_pids[0]#*=}, node $(SLURM_CONF="$CONF" node_states | sed 's/^[^=]*=//; s/ $//')); nothing to do"
            else
                log "already running (mariadbd pid $db, slurmdbd pid $dbd, slurmctld pid $ctld, slurmd pids" \
                    "${slurmd_pids[*]}, nodes $(SLURM_CONF="$CONF" node_states | sed 's/ $//')); nothing to do"
            fi
            log "use it with: source $STATE_DIR/env.sh"
            exit 0
        fi
        log "a cluster of $running node(s) runs in $STATE_DIR; --nodes $NODES asks for another: stopping it and" \
            "starting fresh"
    else
        log "found a cluster in $STATE_DIR that is not healthy; stopping it and starting fresh"
    fi
    DPO_SWEEPS_SLURM_DIR="$STATE_DIR" bash "$HERE/slurm-down.sh"
fi

# --- 2. prerequisites ------------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd launches jobs, munged runs as the munge user): sudo make slurm-up"
for bin in slurmctld slurmd slurmdbd munged sbatch sacct mariadbd mariadb-install-db mariadb mariadb-admin; do
    command -v "$bin" >/dev/null || missing_bin="$bin"
done
if [[ -n "${missing_bin:-}" ]]; then
    log "$missing_bin not installed; running launch/install-slurm.sh"
    bash "$HERE/install-slurm.sh"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
    if port_busy "$port"; then
        die "port $port on 127.0.0.1 is already in use (another cluster from a different DPO_SWEEPS_SLURM_DIR?). " \
            "Stop it, or pick other ports with DPO_SWEEPS_SLURMCTLD_PORT / DPO_SWEEPS_SLURMD_PORT /" \
            "DPO_SWEEPS_SLURMDBD_PORT / DPO_SWEEPS_MARIADB_PORT."
    fi
done

# --- 3. fresh state dir ----------------------------------------------------------------------------------------------
if [[ -e "$STATE_DIR" ]]; then
    if [[ -f "$STATE_DIR/$MARKER" ]] || [[ -d "$STATE_DIR" && -z "$(ls -A "$STATE_DIR")" ]]; then
        # Any daemon still holding the old dir (crashed run, stale pid files) goes first.
        for pidfile in "$STATE_DIR"/run/slurmd.pid "$STATE_DIR"/run/slurmd-*.pid "$STATE_DIR"/run/slurmctld.pid \
            "$STATE_DIR"/run/slurmdbd.pid "$DB_PID"; do
            name="$(basename "$pidfile" .pid)"
            name="${name%%-*}"
            pid="$(our_pid "$pidfile" "$name")"
            if [[ -n "$pid" ]]; then
                log "killing leftover $name (pid $pid) from a previous run"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        # So do the namespaces and interfaces it created (a multi-node cluster that was not stopped).
        net_down "$NET_RECORD" | sed 's/^/slurm-up: leftover: /' ||
            die "could not remove the network objects listed in $NET_RECORD; remove them by hand"
        # A munged that the previous slurm-up started stays ours to stop.
        munged_ours="$(pid_from "$STATE_DIR/run/munged.started-by-slurm-up")"
        rm -rf "$STATE_DIR"
        log "removed the previous state dir $STATE_DIR"
    else
        die "$STATE_DIR exists and was not created by slurm-up (no $MARKER file); refusing to delete it. " \
            "Remove it yourself or set DPO_SWEEPS_SLURM_DIR to another path."
    fi
fi
mkdir -p "$STATE_DIR"/{state,spool,run,log}
touch "$STATE_DIR/$MARKER"
if pid_alive "${munged_ours:-}"; then echo "$munged_ours" >"$STATE_DIR/run/munged.started-by-slurm-up"; fi
# Jobs run as root here, but other users reading logs and env.sh is handy.
chmod 755 "$STATE_DIR"
echo "$NODES_ASKED" >"$ASKED_FILE"

# --- 4. the nodes' network (--nodes N >= 2) --------------------------------------------------------------------------
if ((NODES > 1)); then
    why="$(net_unavailable)"
    if [[ -z "$why" ]]; then
        # A name or the subnet taken by something else is a setting to change, not a reason to fall back.
        conflict="$(net_conflicts "$SUBNET" "$BRIDGE" "$NETNS_PREFIX" "$NODES")" || die "$conflict"
        DAEMONS_STARTED=1 # from here on, a failure runs slurm-down, which also removes what net_up created
        if ! err="$(net_up "$NET_RECORD" "$SUBNET" "$BRIDGE" "$NETNS_PREFIX" "$NODES" 2>&1)"; then
            why="creating them failed ($(tail -n1 <<<"$err"))"
            net_down "$NET_RECORD" >/dev/null || die "could not remove what was created; see $NET_RECORD"
        fi
    fi
    if [[ -n "$why" ]]; then
        log "--nodes $NODES needs network namespaces, but $why: starting the one-node cluster instead"
        NODES=1
    else
        net_hosts_file "$STATE_DIR/hosts" "$SUBNET" "$NODES"
        chmod 644 "$STATE_DIR/hosts"
        log "created bridge $BRIDGE ($SUBNET.254/24) and network namespaces $NETNS_PREFIX-n1..$NETNS_PREFIX-n$NODES" \
            "(nodes n1..n$NODES at $SUBNET.1..$SUBNET.$NODES)"
    fi
fi

# --- 5. munge --------------------------------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok && [[ -s "$STATE_DIR/run/munged.started-by-slurm-up" ]]; then
    log "munged already running (started by an earlier slurm-up; slurm-down will stop it)"
elif munge_ok; then
    log "munged already running (not started by slurm-up; slurm-down will leave it alone)"
else
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    # A munged killed hard leaves its socket/pid file behind; munged refuses to start over them.
    pid="$(pid_from /run/munge/munged.pid)"
    if ! pid_alive "$pid"; then rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock; fi
    [[ -s /etc/munge/munge.key ]] || bash "$HERE/install-slurm.sh"
    DAEMONS_STARTED=1
    runuser -u munge -- munged
    for _ in $(seq 50); do
        munge_ok && break
        sleep 0.1
    done
    munge_ok || die "munged did not come up; see /var/log/munge/munged.log"
    pid_from /run/munge/munged.pid >"$STATE_DIR/run/munged.started-by-slurm-up"
    log "started munged (pid $(cat "$STATE_DIR/run/munged.started-by-slurm-up"))"
fi

# --- 6. slurm.conf ---------------------------------------------------------------------------------------------------
# One node: CPUs, sockets, cores and RealMemory exactly as slurmd sees this machine; the node is called localhost.
hw="$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')"
[[ "$hw" == *CPUs=* ]] || die "could not read the hardware from 'slurmd -C': $hw"
if ((NODES == 1)); then
    CTLD_HOST=localhost
    ACCT_HOST=localhost
    SLURMD_SPOOL="$STATE_DIR/spool"
    SLURMD_PIDFILE="$STATE_DIR/run/slurmd.pid"
    SLURMD_LOGFILE="$STATE_DIR/log/slurmd.log"
    NODE_LINES="NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN"
    PART_NODES=localhost
else
    # The nodes reach the controller and slurmdbd at the bridge's address (their own localhost is their namespace);
    # srun and sbatch on this machine use it too, so the nodes can connect back to srun through the bridge.
    CTLD_HOST="localhost($SUBNET.254)"
    ACCT_HOST="$SUBNET.254"
    # One slurmd per node on this machine (MULTIPLE_SLURMD): %n is the node name.
    SLURMD_SPOOL="$STATE_DIR/spool/%n"
    SLURMD_PIDFILE="$STATE_DIR/run/slurmd-%n.pid"
    SLURMD_LOGFILE="$STATE_DIR/log/slurmd-%n.log"
    total_cpus="$(grep -oE 'CPUs=[0-9]+' <<<"$hw" | cut -d= -f2)"
    total_mem="$(grep -oE 'RealMemory=[0-9]+' <<<"$hw" | cut -d= -f2)"
    node_cpus="${DPO_SWEEPS_SLURM_NODE_CPUS:-$((total_cpus / NODES > 0 ? total_cpus / NODES : 1))}"
    share="each node gets $node_cpus CPU(s)"
    ((node_cpus * NODES > total_cpus)) && share+=" (DPO_SWEEPS_SLURM_NODE_CPUS: the cores are oversubscribed)"
    NODE_LINES="# $NODES nodes in network namespaces (slurm-up.sh --nodes $NODES) on one machine ($total_cpus CPUs, $total_mem MB):
# $share and 1/$NODES of the memory. NodeHostName: the hostname in the node's UTS namespace."
    for ((i = 1; i <= NODES; i++)); do
        NODE_LINES+="
NodeName=n$i NodeHostName=n$i NodeAddr=$SUBNET.$i CPUs=$node_cpus Boards=1 SocketsPerBoard=1"
        NODE_LINES+=" CoresPerSocket=$node_cpus ThreadsPerCore=1 RealMemory=$((total_mem / NODES)) State=UNKNOWN"
        mkdir -p "$STATE_DIR/spool/n$i"
    done
    PART_NODES="n[1-$NODES]"
fi
SELECT_LINES="SelectTypeParameters=CR_Core"
if [[ "$ENFORCE_MEMORY" == 1 ]]; then
    node_mem="$(grep -oE 'RealMemory=[0-9]+' <<<"$NODE_LINES" | head -n1 | cut -d= -f2)"
    node_cpus_now="$(grep -oE 'CPUs=[0-9]+' <<<"$NODE_LINES" | head -n1 | cut -d= -f2)"
    SELECT_LINES="# DPO_SWEEPS_SLURM_ENFORCE_MEMORY=1: memory is consumable, and a step over its --mem is killed without cgroups
# (jobacct_gather polls each task every second; the job ends FAILED, slurmstepd's \"exceeded memory limit\" in its log).
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets its CPUs' share of the node: as many jobs fit at once as without this.
DefMemPerCPU=$((node_mem / node_cpus_now))
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=1"
fi
cat >"$CONF" <<CONF
# Generated by launch/slurm-up.sh on $(date -Is). Regenerated on every start; edit the script, not this file.
ClusterName=dpo_sweeps_local
SlurmctldHost=$CTLD_HOST
# Not the default ports (6817/6818), so a real SLURM on this machine is left alone.
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# No cgroups in containers and CI: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Accounting through slurmdbd (-> MariaDB): sacct works, and submitit reads real job states (CANCELLED, FAILED, ...)
# instead of printing "Bypassing sacct error". slurmctld registers ClusterName in the database by itself.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$ACCT_HOST
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
$SELECT_LINES
# A node that was down comes back by itself once slurmd registers.
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$SLURMD_LOGFILE
SlurmctldDebug=info
SlurmdDebug=info

# Fast requeue: a requeued job is RUNNING again in ~6 s instead of ~2 min.
JobRequeue=1
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=1,bf_interval=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled, preempted or requeued.
KillWait=5
# Finished jobs stay visible to squeue/scontrol for this many seconds (sacct keeps them for good).
MinJobAge=300
# Site limits the sweep launcher reads and fits into (dpo_sweeps/slurm/): array task indices go up to MaxArraySize-1;
# MaxJobCount counts every array task, finished ones too while MinJobAge keeps them.
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=$MAX_JOB_COUNT

# Preemption by partition priority: jobs of a higher PriorityTier partition requeue those of "low".
# preempt_send_user_signal: a preempted job first gets its --signal (submitit: USR2 -> checkpoint + requeue).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal

$NODE_LINES
# debug: the default; its jobs are never preempted.
PartitionName=debug Nodes=$PART_NODES Default=YES MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
# low: preemptible (scavenger-style); on preemption a job has GraceTime seconds after its signal before SIGKILL.
PartitionName=low Nodes=$PART_NODES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
# high: preempts jobs in "low".
PartitionName=high Nodes=$PART_NODES MaxTime=INFINITE State=UP PriorityTier=3 PreemptMode=OFF
CONF
log "wrote $CONF"

# A password for the database user `slurm`, new on every start; it lives only in slurmdbd.conf (mode 600).
DB_PASS="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
(
    umask 077
    cat >"$DBD_CONF" <<DBDCONF
# Generated by launch/slurm-up.sh on $(date -Is); slurmdbd reads it from the folder of SLURM_CONF (it has no -f).
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE_DIR/run/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# 127.0.0.1, not localhost: with localhost the MySQL client ignores StoragePort and tries the default socket.
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
DBDCONF
)
log "wrote $DBD_CONF"

# --- 7. daemons ------------------------------------------------------------------------------------------------------
export SLURM_CONF="$CONF"
# Marks the daemons (and the slurmstepd processes they fork) as ours, so slurm-down can find strays.
export DPO_SWEEPS_SLURM_DIR="$STATE_DIR"
show_logs() {
    echo "slurm-up: logs: $STATE_DIR/log/ (slurmctld.log slurmd.log slurmdbd.log mariadbd.log *.out)" >&2
    for f in "$STATE_DIR"/log/*; do
        [[ -s "$f" ]] || continue
        echo "----- tail $f" >&2
        tail -n 15 "$f" >&2
    done
}
DAEMONS_STARTED=1

# Waits up to START_TIMEOUT seconds for the command "$2..." to succeed; $1 names what is awaited.
wait_for() {
    local what="$1" start=$SECONDS
    shift
    while ((SECONDS - start < START_TIMEOUT)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    show_logs
    die "$what not ready after ${START_TIMEOUT}s. Stop with: bash $HERE/slurm-down.sh"
}

# MariaDB: a fresh data dir, listening on 127.0.0.1:$DB_PORT and on a socket in $DB_DIR only.
mkdir -p "$DB_DIR/data"
chown -R mysql:mysql "$DB_DIR"
# --no-defaults: nothing from /etc/mysql (the system's own MariaDB config, port 3306, its log paths) applies.
DB_OPTS=(--no-defaults "--datadir=$DB_DIR/data" "--socket=$DB_SOCK" "--port=$DB_PORT" --bind-address=127.0.0.1
    "--pid-file=$DB_PID" --user=mysql --skip-log-bin --skip-name-resolve
    --innodb-buffer-pool-size=64M --innodb-log-file-size=48M --innodb-lock-wait-timeout=900)
if ! timeout "$START_TIMEOUT" mariadb-install-db "${DB_OPTS[@]}" --auth-root-authentication-method=socket --skip-test-db \
    >"$STATE_DIR/log/mariadb-install.out" 2>&1; then
    show_logs
    die "mariadb-install-db failed"
fi
# stderr to a file we own: mariadbd's --log-error under a root-owned folder silently writes nothing.
setsid mariadbd "${DB_OPTS[@]}" </dev/null >>"$STATE_DIR/log/mariadbd.log" 2>&1 &
wait_for "MariaDB (port $DB_PORT)" timeout 5 mariadb-admin --no-defaults "--socket=$DB_SOCK" ping
# Root logs in through the socket only (socket auth); slurmdbd comes in over TCP as `slurm`.
timeout 30 mariadb --no-defaults "--socket=$DB_SOCK" -u root <<SQL || die "could not create the accounting database"
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
log "started MariaDB (pid $(pid_from "$DB_PID"), 127.0.0.1:$DB_PORT, data in $DB_DIR)"

# slurmdbd daemonizes and writes its pid file; ready once it listens on its port.
if ! slurmdbd >"$STATE_DIR/log/slurmdbd.out" 2>&1; then
    show_logs
    die "slurmdbd failed to start"
fi
wait_for "slurmdbd (port $DBD_PORT)" port_busy "$DBD_PORT"
log "started slurmdbd (pid $(pid_from "$STATE_DIR/run/slurmdbd.pid"), port $DBD_PORT)"

# Without -D both daemonize (survive this shell and the CI step) and write their pid files.
if ! slurmctld -f "$CONF" >"$STATE_DIR/log/slurmctld.out" 2>&1; then
    show_logs
    die "slurmctld failed to start"
fi
if ((NODES == 1)); then
    # -N: the node is called localhost in slurm.conf, which is not this machine's hostname.
    if ! slurmd -f "$CONF" -N localhost >"$STATE_DIR/log/slurmd.out" 2>&1; then
        show_logs
        die "slurmd failed to start"
    fi
else
    for ((i = 1; i <= NODES; i++)); do
        if ! net_start_slurmd "n$i" "$NETNS_PREFIX-n$i" "$STATE_DIR/hosts" "$CONF" >"$STATE_DIR/log/slurmd-n$i.out" 2>&1
        then
            show_logs
            die "slurmd of node n$i failed to start (see $STATE_DIR/log/slurmd-n$i.out)"
        fi
    done
fi

start=$SECONDS
while ((SECONDS - start < START_TIMEOUT)); do
    nodes_in_state "$NODES" '^idle$' && break
    sleep 0.5
done
if ! nodes_in_state "$NODES" '^idle$'; then
    states="$(node_states)"
    show_logs
    what="node"
    ((NODES == 1)) || what="$NODES nodes"
    die "$what not idle after ${START_TIMEOUT}s (sinfo says '${states:-nothing}'). Stop with: bash $HERE/slurm-down.sh"
fi
idle_s=$((SECONDS - start))

# slurmctld registers the cluster with slurmdbd when it starts; sacct answers for it once that is done.
cluster_registered() {
    timeout 10 sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx dpo_sweeps_local
}
wait_for "accounting (cluster dpo_sweeps_local in slurmdbd)" cluster_registered
timeout 10 sacct -n -X >/dev/null || die "sacct does not answer; see $STATE_DIR/log/slurmdbd.log"

cat >"$STATE_DIR/env.sh" <<ENV
# Generated by launch/slurm-up.sh: source this to use the local cluster (sinfo, sbatch, submitit, hydra).
export SLURM_CONF=$CONF
export DPO_SWEEPS_SLURM_DIR=$STATE_DIR
# How many nodes the cluster has: 1 (node localhost) or N (nodes n1..nN, NodeAddr in \`scontrol show node\`).
export DPO_SWEEPS_SLURM_NODES=$NODES
ENV
if ((NODES == 1)); then
    log "cluster up with accounting (node idle after ${idle_s}s): slurmctld pid" \
        "$(pid_from "$STATE_DIR/run/slurmctld.pid"), slurmd pid $(pid_from "$STATE_DIR/run/slurmd.pid"); sacct works"
else
    pids=""
    for ((i = 1; i <= NODES; i++)); do pids+=" n$i=$(pid_from "$STATE_DIR/run/slurmd-n$i.pid")"; done
    log "cluster of $NODES nodes up with accounting (nodes idle after ${idle_s}s): slurmctld pid" \
        "$(pid_from "$STATE_DIR/run/slurmctld.pid"), slurmd pids$pids; sacct works"
fi
sinfo
log "use it with: source $STATE_DIR/env.sh"
