# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings and helpers for up.sh / down.sh / restart.sh (sourced, not executed).
#
# Everything this setup starts records its pid in a pid file under $STATE/run; down.sh only ever
# signals those pids (after checking that the process name still matches), never by name.

STATE=${GRAIL_SLURM_STATE:-${TMPDIR:-/tmp}/grail-slurm}
# The cluster's files live under $STATE; the Slurm clients find them through /etc/slurm symlinks.
ETC_DIR=$STATE/etc
RUN_DIR=$STATE/run
LOG_DIR=$STATE/log
SPOOL_DIR=$STATE/spool
DB_DIR=$STATE/mysql
MARKER=$STATE/.grail-slurm-state   # marks a directory down.sh --purge may delete
SLURM_ETC=/etc/slurm

# MariaDB listens on its Debian default socket only (no TCP): slurmdbd's client library
# connects to that path for StorageHost=localhost.
MYSQL_SOCKET=/run/mysqld/mysqld.sock

# name -> pid file, process name as in /proc/PID/comm
PID_MUNGED=$RUN_DIR/munge/munged.pid
PID_MARIADBD=$RUN_DIR/mysqld/mariadbd.pid
PID_SLURMDBD=$RUN_DIR/slurmdbd.pid
PID_SLURMCTLD=$RUN_DIR/slurmctld.pid
PID_SLURMD=$RUN_DIR/slurmd.pid

# Prints the pid recorded in pid file $1 if that process is alive and its name is $2.
live_pid() {
    local file=$1 comm=$2 pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc 0-9 <"$file" 2>/dev/null) || return 1
    [[ -n $pid ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    echo "$pid"
}

# Node state from sinfo (idle, mix, alloc, ...); empty if slurmctld does not answer.
node_state() {
    command -v sinfo >/dev/null 2>&1 || return 0
    timeout 5 sinfo -h -n localhost -o %t 2>/dev/null | head -n1 || true
}

node_usable() {
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

# Sends SIGTERM to the process recorded in pid file $1 (name $2), waits up to $3 s, then SIGKILL.
stop_by_pidfile() {
    local file=$1 comm=$2 wait_s=${3:-30} pid i
    if ! pid=$(live_pid "$file" "$comm"); then
        rm -f "$file"
        return 0
    fi
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        [[ -d /proc/$pid ]] || break
        # a zombie (not ours to reap) counts as gone
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] &&
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
        log "$comm (pid $pid) ignored SIGTERM for ${wait_s}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$file"
}
