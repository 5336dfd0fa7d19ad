#!/usr/bin/env bash
# A real multi-node Slurm 22.05 cluster on one machine: one controller host (slurmctld, slurmdbd,
# MariaDB) and N compute hosts (slurmd), each in its own network, UTS and mount namespace, with its own
# hostname, address, /etc/hosts, munged and /etc/slurm, on a private bridge that lives in a "switch"
# namespace of its own. Root only (Debian 12, no systemd).
#
#   multi.sh up                   start whatever is not running (idempotent; ~1-3 s once installed)
#   multi.sh down                 cancel jobs, stop every daemon and job process by pid, delete every
#                                 namespace and link this script made (the safety route stays)
#   multi.sh down --purge         the same, then delete the state dir and the safety route
#   multi.sh env                  print `export SLURM_CONF=...`: how a client talks to this cluster
#   multi.sh status               hosts, daemons and sinfo
#   multi.sh on HOST CMD...       run CMD inside a host's namespaces (ctl, node1, node2, ...)
#   multi.sh stop|start|kill DAEMON [NODE]
#                                 DAEMON: slurmctld, slurmdbd, slurmd (slurmd needs NODE); stop is
#                                 SIGTERM and wait, kill is SIGKILL, start starts it again
#   multi.sh kill-host NODE       SIGKILL every process of that host (its slurmd and its jobs'
#                                 processes), as if the machine lost power; `start slurmd NODE` revives it
#
# Safety. Clients (sbatch, squeue, sacct, grail-cluster, pytest) run in the root namespace, which reaches
# the bridge through one veth with an address in the cluster's subnet. Before that veth exists, the root
# namespace gets `unreachable <subnet> metric 4000`, which outlives it: a packet for the cluster's subnet
# is dropped on this machine whenever the veth is down or gone, never routed off it through the default
# gateway. `up` refuses a subnet the root namespace already routes anywhere else.
#
# Environment (all optional):
#   GRAIL_SLURM_MULTI_STATE    state dir (default ${TMPDIR:-/tmp}/grail-slurm-multi)
#   GRAIL_SLURM_MULTI_NODES    compute hosts (default 2, at most 8)
#   GRAIL_SLURM_MULTI_NET      first three octets of the private /24 (default 10.213.47)
#   GRAIL_SLURM_MULTI_NAME     prefix of its namespaces and root-side link (default grail-m, at most 7
#                              characters); two clusters side by side need their own STATE, NET and NAME
#   GRAIL_SLURM_MULTI_CPUS     CPUs each node advertises (default 8)
#   GRAIL_SLURM_MULTI_GPUS     fake GRES GPUs per node (default 2)
#   GRAIL_SLURM_MULTI_SLURMD_TIMEOUT  SlurmdTimeout: seconds until a silent node is DOWN (default 10)
#   GRAIL_SLURM_MULTI_CRED_EXPIRE     AuthInfo cred_expire: a requeued job waits this long (default 10)
set -euo pipefail

STATE=${GRAIL_SLURM_MULTI_STATE:-${TMPDIR:-/tmp}/grail-slurm-multi}
NODES=${GRAIL_SLURM_MULTI_NODES:-2}
NET=${GRAIL_SLURM_MULTI_NET:-10.213.47}
CPUS=${GRAIL_SLURM_MULTI_CPUS:-8}
GPUS=${GRAIL_SLURM_MULTI_GPUS:-2}
SLURMD_TIMEOUT=${GRAIL_SLURM_MULTI_SLURMD_TIMEOUT:-10}
CRED_EXPIRE=${GRAIL_SLURM_MULTI_CRED_EXPIRE:-10}
CLUSTER=grail-multi
TIMEOUT=60
SUBNET=$NET.0/24
PFX=${GRAIL_SLURM_MULTI_NAME:-grail-m}  # every namespace and root-side link this script makes starts with it

log() { echo "[slurm-multi] $*" >&2; }
die() {
    echo "[slurm-multi] ERROR: $1" >&2
    local f
    for f in "${@:2}"; do
        [[ -s $f ]] && { echo "---- last lines of $f ----" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}
for v in NODES CPUS GPUS SLURMD_TIMEOUT CRED_EXPIRE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "GRAIL_SLURM_MULTI_$v must be a non-negative integer, got '${!v}'"
done
[[ $PFX =~ ^[a-z][a-z0-9-]{0,6}$ ]] || die "GRAIL_SLURM_MULTI_NAME must be 1-7 of [a-z0-9-], got '$PFX'"
((NODES >= 1 && NODES <= 8)) || die "GRAIL_SLURM_MULTI_NODES must be 1..8, got $NODES"
[[ $NET =~ ^(10|172\.(1[6-9]|2[0-9]|3[01])|192\.168)\.[0-9]+(\.[0-9]+)?$ ]] && [[ $(tr -cd . <<<"$NET") == .. ]] ||
    die "GRAIL_SLURM_MULTI_NET must be the first three octets of a private /24 (e.g. 10.213.47), got '$NET'"

ETC=$STATE/etc
RUN=$STATE/run
LOGS=$STATE/log
CONF=$ETC/slurm.conf
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# Hosts: ctl is .10, node i is .(10+i); the root namespace's veth end is .1.
HOSTS=(ctl)
for ((i = 1; i <= NODES; i++)); do HOSTS+=("node$i"); done
hostname_of() { [[ $1 == ctl ]] && echo grail-ctl || echo "gnode${1#node}"; }
addr_of() { [[ $1 == ctl ]] && echo "$NET.10" || echo "$NET.$((10 + ${1#node}))"; }
ns_of() { echo "$PFX-$1"; }
SWITCH=$PFX-sw
ROOT_LINK=$PFX-root
CTL_ADDR=$NET.10

# ------------------------------------------------------------------------------------------ helpers

# pid recorded in $1 if alive and named $2
live_pid() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    # A killed daemon nobody has reaped yet (a zombie) is dead: `start` must start it again.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    echo "$pid"
}
netns_inode() { stat -L -c %i "/run/netns/$1" 2>/dev/null; }
# Pids of every process whose network namespace is $1 (a name under /run/netns).
pids_in_netns() {
    local ino p
    ino=$(netns_inode "$1") || return 0
    [[ -n $ino ]] || return 0
    for p in /proc/[0-9]*; do
        [[ $(stat -L -c %i "$p/ns/net" 2>/dev/null) == "$ino" ]] && echo "${p#/proc/}"
    done
    return 0
}
holder_pid() { live_pid "$RUN/holder-$1.pid" sleep; }
# Runs "$@" in host $1's network, UTS and mount namespaces (those of its holder process).
on_host() {
    local host=$1 pid
    shift
    pid=$(holder_pid "$host") || die "host $host is not up (run: $0 up)"
    (close_fds; exec nsenter -t "$pid" -n -u -m -- "$@")
}
# Starts "$@" in the background with only fds 0-2 (no lock, no caller pipe). The `&` is inside, so no
# copy of this shell (holding the lock) is left waiting for the daemon.
close_fds() { local fd; for fd in /proc/"$BASHPID"/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"; done; return 0; }
detach() { (close_fds; exec "$@") & }
wait_for() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}
client() { SLURM_CONF=$CONF "$@"; }

pidfile_of() { # daemon [node]
    case $1 in
        slurmd) echo "$RUN/slurmd-$(hostname_of "$2").pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}
host_of_daemon() { [[ $1 == slurmd ]] && echo "$2" || echo ctl; }

# ------------------------------------------------------------------------------------------ config

render_slurm_conf() {
    local h
    cat <<EOF
# Generated by tests/infra/slurm/multi.sh; edits are overwritten. State dir: $STATE
ClusterName=$CLUSTER
SlurmctldHost=grail-ctl($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only after the step credential lifetime (default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# A node that stopped answering: NOT_RESPONDING, then DOWN after SlurmdTimeout (+ the ping cycle);
# it comes back by itself when its slurmd registers again.
SlurmdTimeout=$SLURMD_TIMEOUT
ReturnToService=1
KillWait=5
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL_ADDR
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
MailProg=/bin/true
MaxArraySize=1001
GresTypes=gpu
AccountingStorageTRES=gres/gpu
EOF
    for h in "${HOSTS[@]:1}"; do
        echo "NodeName=$(hostname_of "$h") NodeAddr=$(addr_of "$h") CPUs=$CPUS RealMemory=8000$( ((GPUS > 0)) && echo " Gres=gpu:$GPUS") State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=gnode[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=gpu Nodes=gnode[1-$NODES] Default=NO MaxTime=INFINITE State=UP"
}

render_gres_conf() {
    echo "# Generated by tests/infra/slurm/multi.sh. Fake GPUs: symlinks to /dev/null."
    echo "AutoDetect=off"
    ((GPUS > 0)) && echo "NodeName=gnode[1-$NODES] Name=gpu Count=$GPUS File=$STATE/dev/nvidia[0-$((GPUS - 1))]"
    return 0
}

render_slurmdbd_conf() {
    cat <<EOF
# Generated by tests/infra/slurm/multi.sh; mode 600 (it holds the DB password).
AuthType=auth/munge
DbdHost=grail-ctl
DbdAddr=$CTL_ADDR
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$ETC/dbpass")
StorageLoc=slurm_acct_db
EOF
}

render_hosts() {
    local h
    echo "127.0.0.1 localhost"
    for h in "${HOSTS[@]}"; do echo "$(addr_of "$h") $(hostname_of "$h")"; done
}

# ------------------------------------------------------------------------------------------ network

check_no_foreign_route() {
    # The subnet must not be routed anywhere by the root namespace except by our safety net/veth.
    local line
    while read -r line; do
        [[ -z $line ]] && continue
        [[ $line == "unreachable $SUBNET"* || $line == *"dev $ROOT_LINK"* ]] && continue
        die "the root namespace already routes $SUBNET ($line): choose another GRAIL_SLURM_MULTI_NET"
    done < <(ip -4 route show to match "$NET.10" | grep -v '^default' || true)
}

safety_net() {
    # Not `ip ... | grep -q`: under pipefail, grep's early exit can SIGPIPE ip and the pipeline fail,
    # and the add then dies on "File exists" (seen with several clusters' routes listed).
    grep -q "^unreachable $SUBNET" < <(ip -4 route show type unreachable) ||
        ip route add unreachable "$SUBNET" metric 4000
}

root_route_is_safe() {
    local r
    r=$(ip -4 route get "$CTL_ADDR" 2>&1 || true)
    [[ $r == *" via "* ]] && return 1
    [[ $r == *"dev $ROOT_LINK"* || $r == *nreachable* ]]
}

net_up() {
    check_no_foreign_route
    safety_net
    [[ -e /run/netns/$SWITCH ]] || ip netns add "$SWITCH"
    ip -n "$SWITCH" link show br0 >/dev/null 2>&1 || ip -n "$SWITCH" link add br0 type bridge
    ip -n "$SWITCH" link set br0 up
    ip -n "$SWITCH" link set lo up
    local h ns
    for h in "${HOSTS[@]}"; do
        ns=$(ns_of "$h")
        [[ -e /run/netns/$ns ]] || ip netns add "$ns"
        ip -n "$ns" link set lo up
        if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
            ip -n "$SWITCH" link del "p-$h" 2>/dev/null || true
            ip -n "$SWITCH" link add "p-$h" type veth peer name eth0 netns "$ns"
            ip -n "$SWITCH" link set "p-$h" master br0 up
            ip -n "$ns" addr add "$(addr_of "$h")/24" dev eth0
            ip -n "$ns" link set eth0 up
        fi
    done
    if ! ip link show "$ROOT_LINK" >/dev/null 2>&1; then
        # The peer's name is unique per cluster: it exists in the root namespace for a moment.
        ip -n "$SWITCH" link del "p-$PFX" 2>/dev/null || true
        ip link add "$ROOT_LINK" type veth peer name "p-$PFX" netns "$SWITCH"
        ip -n "$SWITCH" link set "p-$PFX" master br0 up
        ip addr add "$NET.1/24" dev "$ROOT_LINK"
        ip link set "$ROOT_LINK" up
    fi
    root_route_is_safe || die "root namespace route to $CTL_ADDR is not through $ROOT_LINK: $(ip route get "$CTL_ADDR" 2>&1)"
}

# A host = a holder process (sleep) in the host's netns with its own UTS and mount namespaces, where
# the hostname is set and /etc/hosts, /etc/slurm, /run/munge (and /run/mysqld on ctl) are bind-mounted.
host_up() {
    local h=$1 hn dir
    holder_pid "$h" >/dev/null && return 0
    hn=$(hostname_of "$h")
    dir=$STATE/hosts/$h
    mkdir -p "$dir/munge-run" "$dir/munge-lib" "$dir/mysqld"
    chown munge:munge "$dir/munge-run" "$dir/munge-lib"
    chmod 755 "$dir/munge-run"
    chmod 700 "$dir/munge-lib"
    chown mysql:mysql "$dir/mysqld"
    render_hosts >"$dir/hosts"
    local mounts="mount --bind $dir/hosts /etc/hosts && mount --bind $ETC /etc/slurm && mount --bind $dir/munge-run /run/munge"
    [[ $h == ctl ]] && mounts+=" && mkdir -p /run/mysqld && mount --bind $dir/mysqld /run/mysqld"
    mkdir -p /run/munge /etc/slurm
    # nsenter, not `ip netns exec`: that remounts /sys without /sys/fs/cgroup, which slurmd needs.
    detach setsid nsenter --net="/run/netns/$(ns_of "$h")" unshare --uts --mount --propagation private \
        sh -c "hostname $hn && $mounts && echo \$\$ > $RUN/holder-$h.pid.tmp && mv $RUN/holder-$h.pid.tmp $RUN/holder-$h.pid && exec sleep infinity" \
        </dev/null >>"$LOGS/holder-$h.log" 2>&1
    wait_for holder_pid "$h" || die "host $h did not come up" "$LOGS/holder-$h.log"
}

# ------------------------------------------------------------------------------------------ daemons

munge_up() {
    local h=$1 dir=$STATE/hosts/$1
    live_pid "$RUN/munge/munged-$h.pid" munged >/dev/null && return 0
    # munged runs as the munge user: its pid and log files live in directories that user owns.
    mkdir -p "$RUN/munge" "$LOGS/munge"
    chown munge:munge "$RUN/munge" "$LOGS/munge"
    on_host "$h" runuser -u munge -- /usr/sbin/munged --force --socket=/run/munge/munge.socket.2 \
        --pid-file="$RUN/munge/munged-$h.pid" --log-file="$LOGS/munge/munged-$h.log" \
        --seed-file="$dir/munge-lib/seed" </dev/null >>"$LOGS/munged-$h.out" 2>&1 ||
        die "munged on $h failed" "$LOGS/munge/munged-$h.log" "$LOGS/munged-$h.out"
    wait_for on_host "$h" sh -c 'munge -n | unmunge' || die "munge on $h does not answer" "$LOGS/munge/munged-$h.log"
}

mariadb_up() {
    live_pid "$RUN/mysqld/mariadbd.pid" mariadbd >/dev/null && return 0
    local db=$STATE/mysql
    # mariadbd runs as the mysql user: its pid and log files live in directories that user owns.
    mkdir -p "$RUN/mysqld" "$LOGS/mysql"
    chown mysql:mysql "$RUN/mysqld" "$LOGS/mysql"
    if [[ ! -f $db/.grail-initialized ]]; then
        rm -rf "$db"
        mkdir -p "$db"
        chown mysql:mysql "$db"
        mariadb-install-db --no-defaults --user=mysql --datadir="$db" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOGS/install-db.log" 2>&1 || die "mariadb-install-db failed" "$LOGS/install-db.log"
    fi
    detach setsid nsenter -t "$(holder_pid ctl)" -n -u -m -- /usr/sbin/mariadbd --no-defaults --user=mysql \
        --datadir="$db" --socket=/run/mysqld/mysqld.sock --skip-networking --pid-file="$RUN/mysqld/mariadbd.pid" \
        --log-error="$LOGS/mysql/mariadbd.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        --max-allowed-packet=64M </dev/null >>"$LOGS/mariadbd.out" 2>&1
    wait_for on_host ctl mariadb-admin --no-defaults --socket=/run/mysqld/mysqld.sock -uroot ping ||
        die "mariadbd did not come up" "$LOGS/mysql/mariadbd.log"
    wait_for live_pid "$RUN/mysqld/mariadbd.pid" mariadbd || die "mariadbd wrote no pid file" "$LOGS/mysql/mariadbd.log"
    on_host ctl mariadb --no-defaults --socket=/run/mysqld/mysqld.sock -uroot >"$LOGS/grants.log" 2>&1 <<EOF ||
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$ETC/dbpass")';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(cat "$ETC/dbpass")';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
        die "creating DB user slurm failed" "$LOGS/grants.log"
    touch "$db/.grail-initialized"
}

dbd_answers() { timeout 10 env SLURM_CONF="$CONF" sacctmgr -n -P list cluster format=Cluster; }

start_daemon() { # daemon [node]
    local d=$1 node=${2:-} pf host
    pf=$(pidfile_of "$d" "$node")
    host=$(host_of_daemon "$d" "$node")
    live_pid "$pf" "$d" >/dev/null && return 0
    case $d in
        slurmdbd)
            on_host ctl /usr/sbin/slurmdbd </dev/null >>"$LOGS/slurmdbd.out" 2>&1 || die "slurmdbd failed" "$LOGS/slurmdbd.log"
            wait_for dbd_answers || die "slurmdbd does not answer" "$LOGS/slurmdbd.log"
            ;;
        slurmctld)
            on_host ctl /usr/sbin/slurmctld -f "$CONF" </dev/null >>"$LOGS/slurmctld.out" 2>&1 ||
                die "slurmctld failed" "$LOGS/slurmctld.log" "$LOGS/slurmctld.out"
            wait_for sh -c "SLURM_CONF=$CONF timeout 5 scontrol ping | grep -q UP" ||
                die "slurmctld does not answer" "$LOGS/slurmctld.log"
            ;;
        slurmd)
            [[ -n $node ]] || die "start slurmd needs a node (node1..node$NODES)"
            munge_up "$node"  # a host that lost power lost its munged too
            mkdir -p "$STATE/spool/slurmd-$(hostname_of "$node")"
            on_host "$node" /usr/sbin/slurmd -f "$CONF" -N "$(hostname_of "$node")" </dev/null \
                >>"$LOGS/slurmd-$node.out" 2>&1 || die "slurmd on $node failed" "$LOGS/slurmd-$(hostname_of "$node").log"
            wait_for live_pid "$pf" slurmd || die "slurmd on $node did not start" "$LOGS/slurmd-$(hostname_of "$node").log"
            ;;
        *) die "unknown daemon $d (slurmctld, slurmdbd, slurmd)" ;;
    esac
    log "$d${node:+ on $node} started ($(elapsed) s)"
}

signal_daemon() { # signal daemon [node]
    local sig=$1 d=$2 node=${3:-} pf pid i
    pf=$(pidfile_of "$d" "$node")
    pid=$(live_pid "$pf" "$d") || { log "$d${node:+ on $node} is not running"; return 0; }
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        [[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
        sleep 0.1
    done
    [[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && kill -KILL "$pid" 2>/dev/null
    rm -f "$pf"
    log "$d${node:+ on $node} stopped (SIG$sig)"
}

node_states() { SLURM_CONF=$CONF timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u; }
all_nodes_idle() {
    local s
    s=$(node_states)
    [[ $(grep -cE ' (idle|mix|alloc)$' <<<"$s") -ge $NODES ]]
}

# ------------------------------------------------------------------------------------------ commands

cmd_up() {
    [[ $EUID -eq 0 ]] || die "must run as root (namespaces, daemons)"
    for p in slurmctld slurmd slurmdbd slurm-client munge mariadb-server; do
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] ||
            die "package $p is missing: run tests/infra/slurm/up.sh first (it installs Slurm)"
    done
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing: run tests/infra/slurm/up.sh first"
    mkdir -p "$(dirname "$STATE")"
    exec 9>"$STATE.lock"
    flock -w 600 9 || die "could not lock $STATE.lock"
    mkdir -p "$STATE" "$ETC" "$RUN" "$LOGS" "$STATE/spool/slurmctld" "$STATE/hosts"
    touch "$STATE/.grail-slurm-multi-state"
    chmod 755 "$STATE" "$RUN" "$LOGS" "$ETC"
    [[ -s $ETC/dbpass ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
    rm -rf "${STATE:?}/dev"
    mkdir -p "$STATE/dev"
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE/dev/nvidia$i"; done
    local changed=0
    if [[ "$(cat "$CONF" 2>/dev/null)" != "$(render_slurm_conf)" ]]; then render_slurm_conf >"$CONF"; changed=1; fi
    render_gres_conf >"$ETC/gres.conf"
    (umask 077 && render_slurmdbd_conf >"$ETC/slurmdbd.conf")
    chmod 644 "$CONF" "$ETC/gres.conf"
    chmod 600 "$ETC/slurmdbd.conf"
    if ((changed)); then
        signal_daemon TERM slurmctld
        for h in "${HOSTS[@]:1}"; do signal_daemon TERM slurmd "$h"; done
    fi

    net_up
    for h in "${HOSTS[@]}"; do host_up "$h"; done
    for h in "${HOSTS[@]}"; do munge_up "$h"; done
    mariadb_up
    start_daemon slurmdbd
    dbd_answers | grep -qx "$CLUSTER" || client sacctmgr -i add cluster "$CLUSTER" >"$LOGS/sacctmgr.log" 2>&1 ||
        die "sacctmgr add cluster failed" "$LOGS/sacctmgr.log"
    start_daemon slurmctld
    for h in "${HOSTS[@]:1}"; do start_daemon slurmd "$h"; done
    local deadline=$((SECONDS + TIMEOUT)) resumed=0
    until all_nodes_idle; do
        if ((!resumed && SECONDS > deadline - TIMEOUT + 3)) && grep -qE ' (down|drain)' <<<"$(node_states)"; then
            client scontrol update NodeName="gnode[1-$NODES]" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        ((SECONDS < deadline)) || die "nodes not idle after ${TIMEOUT}s: $(node_states | tr '\n' ' ')" \
            "$LOGS/slurmctld.log"
        sleep 0.2
    done
    wait_for client timeout 10 sacct -n -X -o JobID -S now || die "sacct does not answer" "$LOGS/slurmdbd.log"
    log "cluster $CLUSTER up in $(elapsed) s: $(node_states | tr '\n' ' ')— clients: export SLURM_CONF=$CONF"
}

cmd_down() {
    [[ -d $STATE ]] || { log "nothing to stop (no $STATE)"; return 0; }
    exec 9>"$STATE.lock"
    flock -w 600 9 || die "could not lock $STATE.lock"
    if live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        local jobs
        jobs=$(client timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling $(wc -w <<<"$jobs") job(s)"
            xargs -r env SLURM_CONF="$CONF" timeout 30 scancel <<<"$jobs" >/dev/null 2>&1 || true
            for ((i = 0; i < 100; i++)); do
                [[ -z $(client timeout 5 squeue -h -o %A 2>/dev/null || true) ]] && break
                sleep 0.1
            done
        fi
    fi
    for h in "${HOSTS[@]:1}"; do signal_daemon TERM slurmd "$h"; done
    signal_daemon TERM slurmctld
    signal_daemon TERM slurmdbd
    local pid
    if pid=$(live_pid "$RUN/mysqld/mariadbd.pid" mariadbd); then
        kill -TERM "$pid"
        for ((i = 0; i < 300; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
    # Whatever still lives in our namespaces (munged, job processes, holders) is ours: stop it.
    local ns pids
    for h in "${HOSTS[@]}"; do
        ns=$(ns_of "$h")
        pids=$(pids_in_netns "$ns" | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            sleep 0.3
            pids=$(pids_in_netns "$ns" | tr '\n' ' ')
            # shellcheck disable=SC2086
            [[ -n ${pids// /} ]] && kill -KILL $pids 2>/dev/null || true
        fi
    done
    sleep 0.2
    ip link del "$ROOT_LINK" 2>/dev/null || true
    for h in "${HOSTS[@]}" sw; do
        ns=$PFX-$h
        [[ -e /run/netns/$ns ]] || continue
        pids=$(pids_in_netns "$ns" | tr '\n' ' ')
        [[ -z ${pids// /} ]] || log "warning: processes left in $ns: $pids"
        ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
    done
    rm -f "$RUN"/*.pid "$RUN"/munge/*.pid "$RUN"/mysqld/*.pid
    if [[ ${1:-} == --purge ]]; then
        # Only now that no namespace of ours is left may the safety net go.
        ip route del unreachable "$SUBNET" metric 4000 2>/dev/null || true
        [[ -f $STATE/.grail-slurm-multi-state ]] && rm -rf "$STATE" "$STATE.lock"
        log "down and purged in $(elapsed) s (state dir and safety route removed)"
        return 0
    fi
    log "down in $(elapsed) s (state dir kept: $STATE; safety route 'unreachable $SUBNET' kept)"
}

cmd_kill_host() {
    local node=$1 ns pids
    [[ $node =~ ^node[0-9]+$ ]] || die "kill-host takes a compute host (node1..node$NODES)"
    ns=$(ns_of "$node")
    local holder
    holder=$(holder_pid "$node") || die "host $node is not up"
    # Until nothing is left: a process slurmd forks between one listing and the SIGKILL would survive
    # a single pass and finish its job on a "powered-off" host.
    local all="" round
    for ((round = 0; round < 50; round++)); do
        pids=$(pids_in_netns "$ns" | grep -vx "$holder" | tr '\n' ' ' || true)
        [[ -n ${pids// /} ]] || break
        all+="$pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.05
    done
    log "host $node lost power: killed ${all:-nothing}"
}

cmd_status() {
    local h
    for h in "${HOSTS[@]}"; do
        printf '%-6s %-10s %-14s holder=%s\n' "$h" "$(hostname_of "$h")" "$(addr_of "$h")" "$(holder_pid "$h" || echo -)"
    done
    for d in slurmctld slurmdbd; do printf '%-10s %s\n' "$d" "$(live_pid "$RUN/$d.pid" "$d" || echo -)"; done
    printf '%-10s %s\n' mariadbd "$(live_pid "$RUN/mysqld/mariadbd.pid" mariadbd || echo -)"
    for h in "${HOSTS[@]:1}"; do printf 'slurmd %-5s %s\n' "$h" "$(live_pid "$(pidfile_of slurmd "$h")" slurmd || echo -)"; done
    node_states
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down "${2:-}" ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) cmd_status ;;
    on) shift; [[ $# -ge 2 ]] || die "usage: $0 on HOST CMD..."; on_host "$@" ;;
    start) start_daemon "${2:?daemon}" "${3:-}" ;;
    stop) signal_daemon TERM "${2:?daemon}" "${3:-}" ;;
    kill) signal_daemon KILL "${2:?daemon}" "${3:-}" ;;
    kill-host) cmd_kill_host "${2:?node}" ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "usage: $0 up|down|env|status|on|start|stop|kill|kill-host (see --help)" ;;
esac
