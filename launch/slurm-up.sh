#!/usr/bin/env bash
# make slurm-up      (= bash launch/slurm-up.sh; works from any directory)
#
# Starts a real one-node SLURM cluster on localhost (Debian's slurm-wlm + munge) with job accounting, for tests, CI and
# demos: munged, then MariaDB (its own data dir and port) -> slurmdbd -> slurmctld -> slurmd, with configs generated
# into a fresh state directory, so that `sacct` works and submitit sees real job states. Then:
#   source "${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/env.sh"      # sets SLURM_CONF
#   sinfo; sbatch ...; python -m dpo_sweeps -m hydra/launcher=slurm ...
# Stop it with `make slurm-down`. Running this again while the cluster is up does nothing.
#
# Environment knobs:
#   DPO_SWEEPS_SLURM_DIR            state dir (config, logs, spool, pids, env.sh)   default /tmp/dpo_sweeps_slurm
#   DPO_SWEEPS_SLURMCTLD_PORT       slurmctld port (not the default 6817, so a real install is left alone)   16817
#   DPO_SWEEPS_SLURMD_PORT          slurmd port                                      default 16818
#   DPO_SWEEPS_SLURMDBD_PORT        slurmdbd port (accounting daemon)                default 16819
#   DPO_SWEEPS_MARIADB_PORT         MariaDB port, 127.0.0.1 only (not 3306: a real MariaDB is left alone)   16820
#   DPO_SWEEPS_SLURM_START_TIMEOUT  seconds to wait for each daemon to be ready (node idle, database up)  60
#   DPO_SWEEPS_SLURM_MAX_ARRAY_SIZE slurm.conf MaxArraySize (tasks per array job)     default 3 (SLURM's own: 1001)
#   DPO_SWEEPS_SLURM_MAX_JOB_COUNT  slurm.conf MaxJobCount (jobs slurmctld holds)    default 10000 (SLURM's own)
# Two clusters run side by side when each has its own DPO_SWEEPS_SLURM_DIR and its own four ports.
# Needs root: slurmd launches jobs and munged runs as the munge user.
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
# Marks a directory as ours, so that a fresh start may delete it (and nothing else).
MARKER=".dpo_sweeps_slurm_state"
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

[[ "$STATE_DIR" = /* ]] || STATE_DIR="$(pwd)/$STATE_DIR"
CONF="$STATE_DIR/slurm.conf"
# slurmdbd has no -f: it reads slurmdbd.conf from the folder of $SLURM_CONF.
DBD_CONF="$STATE_DIR/slurmdbd.conf"
# MariaDB's own folder (data, socket, pid file), owned by the mysql user it drops to.
DB_DIR="$STATE_DIR/mariadb"
DB_PID="$DB_DIR/mariadbd.pid"
DB_SOCK="$DB_DIR/mysqld.sock"

# The node's state as one word (sinfo prints one line per partition).
node_state() { timeout 5 sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1 || true; }
# shellcheck source=launch/pids.sh
source "$HERE/pids.sh"

# --- 1. already running? ---------------------------------------------------------------------------------------------
if [[ -f "$STATE_DIR/env.sh" && -f "$CONF" ]]; then
    ctld="$(our_pid "$STATE_DIR/run/slurmctld.pid" slurmctld)"
    slurmd_pid="$(our_pid "$STATE_DIR/run/slurmd.pid" slurmd)"
    dbd="$(our_pid "$STATE_DIR/run/slurmdbd.pid" slurmdbd)"
    db="$(our_pid "$DB_PID" mariadbd)"
    if [[ -n "$ctld" && -n "$slurmd_pid" && -n "$dbd" && -n "$db" ]] &&
        state="$(SLURM_CONF="$CONF" node_state)" && [[ "$state" =~ ^(idle|mixed|allocated|completing) ]]; then
        log "already running (mariadbd pid $db, slurmdbd pid $dbd, slurmctld pid $ctld, slurmd pid $slurmd_pid," \
            "node $state); nothing to do"
        log "use it with: source $STATE_DIR/env.sh"
        exit 0
    fi
    log "found a cluster in $STATE_DIR that is not healthy; stopping it and starting fresh"
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
        for name in slurmd slurmctld slurmdbd mariadbd; do
            pidfile="$STATE_DIR/run/$name.pid"
            [[ $name == mariadbd ]] && pidfile="$DB_PID"
            pid="$(our_pid "$pidfile" "$name")"
            if [[ -n "$pid" ]]; then
                log "killing leftover $name (pid $pid) from a previous run"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
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

# --- 4. munge --------------------------------------------------------------------------------------------------------
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

# --- 5. slurm.conf ---------------------------------------------------------------------------------------------------
# CPUs, sockets, cores and RealMemory exactly as slurmd sees this machine; the node is called localhost.
hw="$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')"
[[ "$hw" == *CPUs=* ]] || die "could not read the hardware from 'slurmd -C': $hw"
cat >"$CONF" <<CONF
# Generated by launch/slurm-up.sh on $(date -Is). Regenerated on every start; edit the script, not this file.
ClusterName=dpo_sweeps_local
SlurmctldHost=localhost
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
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that was down comes back by itself once slurmd registers.
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
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

NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
# debug: the default; its jobs are never preempted.
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
# low: preemptible (scavenger-style); on preemption a job has GraceTime seconds after its signal before SIGKILL.
PartitionName=low Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
# high: preempts jobs in "low".
PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=3 PreemptMode=OFF
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

# --- 6. daemons ------------------------------------------------------------------------------------------------------
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
# -N: the node is called localhost in slurm.conf, which is not this machine's hostname.
if ! slurmd -f "$CONF" -N localhost >"$STATE_DIR/log/slurmd.out" 2>&1; then
    show_logs
    die "slurmd failed to start"
fi

start=$SECONDS
state=""
while ((SECONDS - start < START_TIMEOUT)); do
    state="$(node_state)"
    [[ "$state" == idle ]] && break
    sleep 0.5
done
if [[ "$state" != idle ]]; then
    show_logs
    die "node not idle after ${START_TIMEOUT}s (sinfo says '${state:-nothing}'). Stop with: bash $HERE/slurm-down.sh"
fi

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
ENV
log "cluster up with accounting (node idle after $((SECONDS - start))s): slurmctld pid" \
    "$(pid_from "$STATE_DIR/run/slurmctld.pid"), slurmd pid $(pid_from "$STATE_DIR/run/slurmd.pid"); sacct works"
sinfo
log "use it with: source $STATE_DIR/env.sh"
