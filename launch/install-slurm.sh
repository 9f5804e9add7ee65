#!/usr/bin/env bash
# bash launch/install-slurm.sh      (make slurm-up runs this for you when slurmctld is missing)
#
# Installs Debian's slurm-wlm (slurmctld + slurmd + client tools), munge, and the accounting stack (slurmdbd + its
# MySQL plugin, mariadb-server; slurm-up.sh runs them in its state dir), and makes sure a munge key exists.
# Idempotent: when everything is already there it only checks and exits (well under a second).
# Needs root (or passwordless sudo) the first time; CI runs it as root.
set -euo pipefail

log() { echo "install-slurm: $*"; }
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        log "not root and no sudo: install them yourself (apt-get install ${PACKAGES[*]})" >&2
        exit 1
    fi
fi

missing=()
for bin in slurmctld slurmd sinfo sbatch squeue scancel sacct munged slurmdbd mariadbd mariadb-install-db mariadb; do
    # munged lives in /usr/sbin, which a non-root PATH may not hold.
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$bin ]]; then missing+=("$bin"); fi
done

if ((${#missing[@]})); then
    log "missing: ${missing[*]} -> apt-get install ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian starts a package's service on install (mariadb-server: a system MariaDB on port 3306, unused here).
    # A policy-rc.d that answers 101 forbids that; put one in place for the install unless the machine has its own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# Temporary, from dpo_sweeps launch/install-slurm.sh: no service starts during the install.\nexit 101\n' |
            $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # Refresh the package lists only when they are absent; a stale list still resolves these packages.
    if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
        $SUDO apt-get update -q
    fi
    if ! $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
        log "install failed; refreshing package lists and retrying"
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
    fi
else
    log "${PACKAGES[*]} already installed ($(dpkg-query -W -f='slurm-wlm ${Version}' slurm-wlm 2>/dev/null || echo 'not from apt'))"
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
