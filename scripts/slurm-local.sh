#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + munge) on 127.0.0.1 for the SLURM tests and
# for rehearsing job scripts. Runs as root, without systemd.
#   scripts/slurm-local.sh start   # starts munged, slurmctld and slurmd; waits until the node is idle
#   scripts/slurm-local.sh stop    # stops them by the PIDs in their pid files
#   scripts/slurm-local.sh status
# Packages (slurm-wlm, munge) come from scripts/setup.sh.
set -euo pipefail

conf_dir=/etc/slurm
spool_ctl=/var/spool/slurmctld
spool_d=/var/spool/slurmd
logs=/var/log/slurm

until_ok() {  # until_ok SECONDS CMD...: retry CMD every 0.2 s until it succeeds or time runs out
  local end=$((SECONDS + $1)); shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
}

# The PID recorded in a pid file, only while that PID is still the named daemon; a stale file whose
# PID was reused by an unrelated process must never lead to killing it.
live_pid() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && echo "$pid"
  return 0
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
  mkdir -p "$conf_dir"
  cat >"$conf_dir/slurm.conf" <<CONF
# Written by ndif-sweep's scripts/slurm-local.sh: one node on 127.0.0.1, no accounting.
ClusterName=ndiflocal
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${spool_ctl}
SlurmdSpoolDir=${spool_d}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${logs}/slurmctld.log
SlurmdLogFile=${logs}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
MinJobAge=300
KillWait=5
Waittime=0
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$((cpus > 4 ? cpus : 4)) RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  command -v slurmctld >/dev/null || { echo "slurm-local: slurm-wlm is not installed (run scripts/setup.sh)" >&2; exit 1; }
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    until_ok 10 sh -c 'munge -n | unmunge' || { echo "slurm-local: munged did not start" >&2; exit 1; }
  fi
  if [ -n "$(live_pid /run/slurmctld.pid slurmctld)" ] && [ -n "$(live_pid /run/slurmd.pid slurmd)" ]; then
    echo "slurm-local: already running"
    return 0
  fi
  write_conf
  install -d "$spool_ctl" "$spool_d" "$logs"
  slurmctld -c
  slurmd -c
  if ! until_ok 30 sh -c 'sinfo -h -o %t | grep -qx idle'; then
    echo "slurm-local: the node never became idle" >&2
    tail -n 20 "$logs/slurmctld.log" "$logs/slurmd.log" >&2 || true
    exit 1
  fi
  echo "slurm-local: cluster up ($(sinfo -h -o '%P %D %t'))"
}

stop() {
  local d c m p
  d=$(live_pid /run/slurmd.pid slurmd)
  c=$(live_pid /run/slurmctld.pid slurmctld)
  for p in $d $c; do kill "$p" 2>/dev/null || true; done
  for p in $d $c; do until_ok 10 sh -c "! kill -0 $p" || kill -9 "$p" 2>/dev/null || true; done
  m=$(live_pid /run/munge/munged.pid munged)
  if [ -n "$m" ]; then
    kill "$m" 2>/dev/null || true
    until_ok 10 sh -c "! kill -0 $m" || true
  fi
  rm -f /run/slurmd.pid /run/slurmctld.pid
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo 2>/dev/null || echo "slurm-local: not running" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
