#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying the cluster launchers and for their tests:
# slurmctld and slurmd on localhost (auth/none, no accounting, no munge), every core and most of the memory
# of this machine as one node in one partition ("debug"), jobs sharing the node core by core.
#
#   tools/local_slurm.sh start DIR    # writes DIR/slurm.conf, starts both daemons, waits for the node
#   export SLURM_CONF=DIR/slurm.conf  # then sbatch, squeue, scontrol, python -m ace_lora.sweep --launcher slurm
#   tools/local_slurm.sh stop DIR     # stops both daemons (by the pids in DIR)
#
# Needs Debian's slurm-wlm (apt-get install slurm-wlm) and root (the daemons run as the current user).
# SLURM_CTLD_PORT / SLURM_D_PORT choose the ports (defaults: two free ones); KILL_WAIT (seconds between
# SIGTERM and SIGKILL when a job is cancelled or requeued, default 10) is kept short for tests.
set -euo pipefail

command="${1:-}"
dir="${2:-}"
if [[ -z "$command" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

stop() {
  local name pid
  for name in slurmd slurmctld; do
    if [[ -f "$dir/$name.pid" ]]; then
      pid="$(cat "$dir/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

case "$command" in
  stop)
    stop
    ;;
  start)
    for tool in slurmctld slurmd sinfo; do
      if ! command -v "$tool" >/dev/null; then
        echo "error: $tool not found: install Debian's slurm-wlm (apt-get install slurm-wlm)" >&2
        exit 2
      fi
    done
    mkdir -p "$dir/state" "$dir/spool"
    dir="$(cd "$dir" && pwd)"
    node="$(hostname -s)"
    cpus="$(getconf _NPROCESSORS_ONLN)"  # not nproc: it follows OMP_NUM_THREADS
    memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
    user="$(id -un)"
    cat > "$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=${SLURM_CTLD_PORT:-$(free_port)}
SlurmdPort=${SLURM_D_PORT:-$(free_port)}
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
ReturnToService=2
JobRequeue=1
KillWait=${KILL_WAIT:-10}
MinJobAge=600
SchedulerParameters=sched_interval=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    stop
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -c  # -c: no state from an earlier start
    slurmd -f "$SLURM_CONF" -c
    for _ in $(seq 200); do
      state="$(sinfo -h -N -o %t 2>/dev/null || true)"
      if [[ "$state" == idle* ]]; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
      fi
      sleep 0.1
    done
    echo "error: the node did not come up in 20 s (state '${state:-none}'); see $dir/slurmctld.log and $dir/slurmd.log" >&2
    stop
    exit 1
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
