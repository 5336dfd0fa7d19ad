#!/usr/bin/env bash
# Stops the localhost Slurm cluster started by up.sh. Idempotent.
#
#   down.sh           cancel all jobs, stop slurmd, slurmctld, slurmdbd, MariaDB and munged by
#                     the pids up.sh recorded; keep the state dir (accounting history survives)
#   down.sh --purge   the same, then delete the state dir and the /etc/slurm symlinks into it
#
# Only processes whose pid files live in the state dir are signalled (after checking the process
# name); a munged that up.sh found already running is left alone.
# Environment: GRAIL_SLURM_STATE (default ${TMPDIR:-/tmp}/grail-slurm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "[slurm-down] $*"; }
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

PURGE=0
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--purge]" >&2
        exit 2
        ;;
esac

T0=$(date +%s.%N)
if [[ -d $(dirname "$STATE") ]]; then
    exec 9>"$STATE.lock"
    if ! flock -n 9; then
        log "waiting for another up.sh/down.sh to finish (lock $STATE.lock)"
        flock -w 600 9 || { log "could not lock $STATE.lock within 600 s"; exit 1; }
    fi
fi

# 1. Cancel every job while slurmctld still runs, so no slurmstepd is left behind.
if live_pid "$PID_SLURMCTLD" slurmctld >/dev/null && command -v squeue >/dev/null; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling $(wc -w <<<"$jobs") job(s)"
        xargs -r timeout 30 scancel <<<"$jobs" >/dev/null 2>&1 || true
        # KillWait=5 in slurm.conf: SIGTERM, then SIGKILL 5 s later; allow some slack.
        for ((i = 0; i < 150; i++)); do
            [[ -z $(timeout 5 squeue -h -o %A 2>/dev/null || true) ]] && break
            sleep 0.1
        done
        left=$(timeout 5 squeue -h -o '%A %T' 2>/dev/null || true)
        [[ -z $left ]] || log "jobs still listed after 15 s: $(tr '\n' ' ' <<<"$left")"
    fi
fi

# 2. Daemons, dependants first.
stop_by_pidfile "$PID_SLURMD" slurmd 30
stop_by_pidfile "$PID_SLURMCTLD" slurmctld 30
stop_by_pidfile "$PID_SLURMDBD" slurmdbd 30
stop_by_pidfile "$PID_MARIADBD" mariadbd 60
stop_by_pidfile "$PID_MUNGED" munged 15

# Left-over job steps (not zombies waiting to be reaped by init) mean a job escaped scancel.
stepds=$(ps -C slurmstepd -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ {print $1}' | tr '\n' ' ' || true)
[[ -z ${stepds// /} ]] || log "warning: slurmstepd processes still running: $stepds"

# 3. Optional purge.
if ((PURGE)); then
    for f in slurm.conf slurmdbd.conf gres.conf cgroup.conf; do
        if [[ -L $SLURM_ETC/$f && "$(readlink "$SLURM_ETC/$f")" == "$STATE"/* ]]; then
            rm -f "$SLURM_ETC/$f"
        fi
    done
    if [[ -d $STATE ]]; then
        if [[ -f $MARKER ]]; then
            log "removing state dir $STATE"
            rm -rf "$STATE"
            rm -f "$STATE.lock"
        else
            log "not removing $STATE: it has no $(basename "$MARKER") marker (not made by up.sh)"
        fi
    fi
fi

log "down in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" \
    "($([[ -d $STATE ]] && echo "state dir kept: $STATE" || echo "no state dir $STATE"))"
