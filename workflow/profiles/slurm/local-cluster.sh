#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try the SLURM profile without a cluster (and for
# the test suite). Needs root (Debian's packages; the daemons run as root).
#
#   workflow/profiles/slurm/local-cluster.sh start [--no-accounting]
#       installs Debian's SLURM and munge (and slurmdbd + MariaDB for accounting) if missing,
#       writes a one-node configuration (partitions cpu and gpu, no cgroups) and starts the daemons;
#       with --no-accounting there is no slurmdbd, so sacct does not answer (the profile then needs
#       --slurm-status-command squeue, see README).
#   workflow/profiles/slurm/local-cluster.sh install [--no-accounting]   only installs what is missing
#   workflow/profiles/slurm/local-cluster.sh stop     stops the daemons this script started, only those
#   workflow/profiles/slurm/local-cluster.sh status   prints the nodes and partitions
#   workflow/profiles/slurm/local-cluster.sh env      prints the line that points SLURM's commands here
#
# Everything (configs, logs, spool, pid files, database) lives in $SAELAB_SLURM_DIR
# (default /tmp/saelab-slurm). /etc/slurm/slurm.conf (and slurmdbd.conf) become links to its
# configuration while the cluster runs, because the plugin's job step drops SLURM_CONF before
# srun; an /etc/slurm/slurm.conf that is not such a link is left alone (the start fails).
# munged listens on its default socket (SLURM's commands look there), or an answering one is used.
# The node pretends to have SAELAB_SLURM_CPUS CPUs (default: at least 4, so that 4-thread rules fit)
# and SAELAB_SLURM_MEM_MB memory (default: at least 64000, so that the profile's requests fit).
# Account for jobs: saelab (the profile's default slurm_account). Ports: SAELAB_SLURM_PORT (6817,
# slurmd +1, slurmdbd +2) and SAELAB_SLURM_DB_PORT (3307).
set -euo pipefail

DIR=${SAELAB_SLURM_DIR:-/tmp/saelab-slurm}
PORT=${SAELAB_SLURM_PORT:-6817}
DB_PORT=${SAELAB_SLURM_DB_PORT:-3307}
NODE=$(hostname -s)
ACCOUNT=saelab
CLUSTER=saelab
MUNGE_SOCKET=/run/munge/munge.socket.2
MARKER="# One-node SLURM cluster written by workflow/profiles/slurm/local-cluster.sh"

die() { echo "local-cluster.sh: $*" >&2; exit 1; }
log() { echo "local-cluster.sh: $*" >&2; }

export SLURM_CONF="$DIR/etc/slurm.conf"

install_if_missing() {
    local accounting=$1 missing=()
    for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    if [[ $accounting == 1 ]]; then
        for cmd in slurmdbd mariadbd mariadb-install-db; do
            command -v "$cmd" >/dev/null || missing+=("$cmd")
        done
    fi
    [[ ${#missing[@]} == 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root to install Debian's SLURM packages"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    local packages=(slurm-wlm slurmctld slurmd slurm-client munge)
    [[ $accounting == 1 ]] && packages+=(slurmdbd mariadb-server)
    log "installing ${packages[*]} (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

# Start "$@" in the background as our own process; remember its pid in $DIR/run/<name>.pid.
spawn() {
    local name=$1
    shift
    "$@" >"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
}

running() { # is the process of pid file $1 alive and still the program we started?
    local pidfile="$DIR/run/$1.pid" pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ -d /proc/$pid ]] && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        timeout 10 "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up within ${seconds}s; see $DIR/log/"
}

link_config() { # /etc/slurm/$1 -> $DIR/etc/$1, unless a configuration not ours is there
    local file=$1 target other
    mkdir -p /etc/slurm
    if [[ -L /etc/slurm/$file && -e /etc/slurm/$file ]]; then
        target=$(readlink "/etc/slurm/$file")
        other=$(dirname "$(dirname "$target")")
        [[ $(head -1 "$other/etc/slurm.conf" 2>/dev/null) == "$MARKER"* ]] ||
            die "/etc/slurm/$file links to $target, not written by this script; not touching it"
        [[ $other != "$DIR" && -f $other/run/slurmctld.pid && -d /proc/$(cat "$other/run/slurmctld.pid") ]] &&
            die "a local cluster from $other is running; stop it first (SAELAB_SLURM_DIR=$other $0 stop)"
    elif [[ -e /etc/slurm/$file && ! -L /etc/slurm/$file ]]; then
        die "/etc/slurm/$file exists: a SLURM cluster is configured on this machine already; not touching it"
    fi
    ln -sfn "$DIR/etc/$file" "/etc/slurm/$file"
}

unlink_config() { # remove our links only
    local file
    for file in slurm.conf slurmdbd.conf; do
        [[ -L /etc/slurm/$file && $(readlink "/etc/slurm/$file") == "$DIR/etc/$file" ]] && rm -f "/etc/slurm/$file"
    done
    return 0
}

write_config() {
    local accounting=$1 cpus mem
    cpus=$(nproc)
    cpus=${SAELAB_SLURM_CPUS:-$((cpus < 4 ? 4 : cpus))}
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    mem=${SAELAB_SLURM_MEM_MB:-$((mem < 64000 ? 64000 : mem))}
    mkdir -p "$DIR"/{etc,log,run,munge,spool/ctld,spool/d}
    chmod 700 "$DIR/munge"
    [[ -f $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$DIR/munge/munge.key"
    local storage="AccountingStorageType=accounting_storage/none"
    if [[ $accounting == 1 ]]; then
        storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStorageEnforce=associations,limits
AccountingStoreFlags=job_comment"
    fi
    cat >"$SLURM_CONF" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups: processes are tracked by parent pid, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes (the profile's squeue status needs it).
MinJobAge=300
$storage
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    if [[ $accounting == 1 ]]; then
        cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=saelab
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.daemon.pid
EOF
        chmod 600 "$DIR/etc/slurmdbd.conf"
        link_config slurmdbd.conf
    fi
    link_config slurm.conf
}

start_database() {
    local sock="$DIR/run/mysql.sock"
    if [[ ! -d $DIR/mysql/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.out" 2>&1 ||
            die "mariadb-install-db failed; see $DIR/log/mariadb-install.out"
    fi
    spawn mariadbd mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$sock" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --user=root --pid-file="$DIR/run/mariadbd.daemon.pid" \
        --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M
    wait_for 60 "MariaDB" mariadb --no-defaults -S "$sock" -uroot -e "SELECT 1"
    mariadb --no-defaults -S "$sock" -uroot -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'saelab';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'saelab';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

cmd_start() {
    local accounting=1
    for arg in "$@"; do
        case $arg in
            --no-accounting) accounting=0 ;;
            *) die "unknown option '$arg'; allowed: --no-accounting" ;;
        esac
    done
    running slurmctld slurmctld && die "already running (pid $(cat "$DIR/run/slurmctld.pid")); stop it first"
    install_if_missing "$accounting"
    [[ $(id -u) == 0 ]] || die "the daemons run as root (SlurmUser=root); run as root"
    write_config "$accounting"
    # SLURM's client commands talk to munged on its default socket whatever AuthInfo says, so
    # munged listens there; a munged already answering there is used as it is.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "using the munged already running on $MUNGE_SOCKET"
    else
        mkdir -p "$(dirname "$MUNGE_SOCKET")"
        spawn munged munged -F --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/run/munged.daemon.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munged.seed"
        wait_for 20 "munged" bash -c "munge -n | unmunge"
    fi
    if [[ $accounting == 1 ]]; then
        start_database
        spawn slurmdbd slurmdbd -D
        wait_for 60 "slurmdbd" sacctmgr -n list cluster
        sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    fi
    spawn slurmctld slurmctld -D -i
    wait_for 60 "slurmctld" scontrol ping
    if [[ $accounting == 1 ]]; then
        sacctmgr -i add account "$ACCOUNT" Description=saelab Organization=saelab >/dev/null 2>&1 || true
        sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" >/dev/null 2>&1 || true
    fi
    spawn slurmd slurmd -D -N "$NODE"
    wait_for 60 "slurmd (node $NODE idle)" bash -c "sinfo -h -n $NODE -o %T | grep -q idle"
    log "running: partitions cpu and gpu on node $NODE, accounting $([[ $accounting == 1 ]] && echo "on (sacct works)" || echo "off (use --slurm-status-command squeue)")"
    echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    # Reverse start order; each pid is ours (from our pid files) and is checked to be the program.
    local name pid
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        if running "$name" "$name"; then
            pid=$(cat "$DIR/run/$name.pid")
            kill "$pid"
            for _ in $(seq 100); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
            [[ -d /proc/$pid ]] && kill -9 "$pid"
            log "stopped $name (pid $pid)"
        fi
        rm -f "$DIR/run/$name.pid"
    done
    unlink_config
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    install) install_if_missing "$([[ ${2:-} == --no-accounting ]] && echo 0 || echo 1)" ;;
    stop) cmd_stop ;;
    status) sinfo ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) die "usage: $0 start [--no-accounting] | install [--no-accounting] | stop | status | env" ;;
esac
