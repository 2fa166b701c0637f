#!/usr/bin/env bash
# A real single-node Slurm cluster from Debian's packages, for the tests and for trying the
# cluster path by hand. Everything it makes (config, state, spool, logs, pid files, sockets, the
# accounting database) lives under DIR; `stop` ends exactly the daemons that `start` started, by
# the pids in DIR/run/. Needs root (the daemons run as root, munged as user munge).
#
#   scripts/slurm-local.sh start DIR    # prints: export SLURM_CONF=DIR/etc/slurm.conf
#   scripts/slurm-local.sh stop DIR
#   scripts/slurm-local.sh install      # apt-get install the packages (root, Debian)
set -euo pipefail

PACKAGES="slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge slurmdbd slurm-wlm-mysql-plugin mariadb-server"
PARTITION=debug

die() { echo "slurm-local: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up in ${seconds}s (logs in $dir/log/)"
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root"
  for bin in munge munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || die "$bin not found: scripts/slurm-local.sh install"
  done
  [ -e "$dir/run/slurmctld.pid" ] && die "$dir already holds a cluster (stop it first)"
  mkdir -p "$dir"/{etc,state,spool,log,run,db,munge}
  chmod 711 "$dir"  # munged (user munge) reaches its own subfolder, nothing else
  chown munge:munge "$dir/munge"
  chmod 700 "$dir/munge"
  local host mem cpus dbport dbdport ctlport dport
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  dbport=$(free_port); dbdport=$(free_port); ctlport=$(free_port); dport=$(free_port)
  # munge on its default socket (Slurm's connection to slurmdbd looks only there), with a key of
  # this cluster's own; a munged already answering there is used, and left alone by `stop`
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"
    setsid runuser -u munge -- munged --key-file="$dir/munge/munge.key" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
      --seed-file="$dir/munge/munged.seed" --force
    wait_for 10 munged sh -c "munge -n | unmunge"
    ln -sf "$dir/munge/munged.pid" "$dir/run/munged.pid"
  fi

  # mariadb: a private data dir on 127.0.0.1 only, no grant tables (nothing else can reach it)
  mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=normal \
    >"$dir/log/mariadb-install.log" 2>&1
  setsid mariadbd --user=root --datadir="$dir/db" --bind-address=127.0.0.1 --port="$dbport" \
    --socket="$dir/run/mariadb.sock" --pid-file="$dir/run/mariadbd.pid" \
    --log-error="$dir/log/mariadbd.log" --skip-grant-tables </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadbd test -S "$dir/run/mariadb.sock"

  cat >"$dir/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$dbdport
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$dbport
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
  chmod 600 "$dir/etc/slurmdbd.conf"
  cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=fmnist
SlurmctldHost=$host
SlurmctldPort=$ctlport
SlurmdPort=$dport
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbdport
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
MinJobAge=600
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/etc/slurm.conf"
  setsid slurmdbd </dev/null >/dev/null 2>&1
  wait_for 30 slurmdbd sacctmgr -n -i show cluster
  setsid slurmctld -f "$SLURM_CONF" </dev/null >/dev/null 2>&1
  wait_for 30 slurmctld scontrol ping
  setsid slurmd -f "$SLURM_CONF" </dev/null >/dev/null 2>&1
  wait_for 30 "an idle node" sh -c "sinfo -h -o %t | grep -q idle"
  wait_for 30 "accounting (sacct)" sacct -n -X
  echo "export SLURM_CONF=$SLURM_CONF  # partition: $PARTITION"
}

stop() {
  local name pid
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(cat "$dir/run/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for name in slurmd slurmctld slurmdbd mariadbd munged; do  # wait, then insist
    pid=$(cat "$dir/run/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/run/$name.pid"
  done
}

case "${1:-}" in
  start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; dir=$(realpath -m "$2"); start ;;
  stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; dir=$(realpath -m "$2"); stop ;;
  install)
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "install needs root and apt-get"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES ;;
  *) die "usage: $0 start DIR | stop DIR | install" ;;
esac
