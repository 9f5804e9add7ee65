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
