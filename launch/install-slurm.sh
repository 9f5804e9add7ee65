#!/usr/bin/env bash
# bash launch/install-slurm.sh      (make slurm-up runs this for you when slurmctld is missing)
#
# Installs Debian's slurm-wlm (slurmctld + slurmd + client tools) and munge, and makes sure a munge key exists.
# Idempotent: when everything is already there it only checks and exits (well under a second).
# Needs root (or passwordless sudo) the first time; CI runs it as root.
set -euo pipefail

log() { echo "install-slurm: $*"; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        log "not root and no sudo: install slurm-wlm and munge yourself (apt-get install slurm-wlm munge)" >&2
        exit 1
    fi
fi

missing=()
for bin in slurmctld slurmd sinfo sbatch squeue scancel munged; do
    # munged lives in /usr/sbin, which a non-root PATH may not hold.
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$bin ]]; then missing+=("$bin"); fi
done

if ((${#missing[@]})); then
    log "missing: ${missing[*]} -> apt-get install slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when they are absent; a stale list still resolves these packages.
    if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
        $SUDO apt-get update -q
    fi
    if ! $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge; then
        log "install failed; refreshing package lists and retrying"
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge
    fi
else
    log "slurm-wlm and munge already installed ($(dpkg-query -W -f='slurm-wlm ${Version}' slurm-wlm 2>/dev/null || echo 'not from apt'))"
fi

# munged refuses to start without a key; the Debian package usually creates one, a minimal image may not.
KEY=/etc/munge/munge.key
if $SUDO test -s "$KEY"; then
    log "munge key present: $KEY"
else
    log "creating munge key $KEY"
    $SUDO mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        $SUDO mungekey --create --keyfile="$KEY" --force
    else
        $SUDO dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
    fi
fi
# munged insists on these owners and modes.
$SUDO chown munge:munge /etc/munge "$KEY"
$SUDO chmod 0700 /etc/munge
$SUDO chmod 0400 "$KEY"
log "done"
