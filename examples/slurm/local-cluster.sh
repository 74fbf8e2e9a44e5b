#!/bin/bash
# A one-node Slurm cluster on this machine, to try examples/slurm/pretrain.sbatch (and its preemption) without a
# real cluster. Debian or Ubuntu, as root: installs Debian's slurmctld, slurmd and munge, then starts them with two
# partitions on this node: `low` (the default; its jobs are requeued when preempted, after a 30 s grace time) and
# `high` (its jobs preempt `low` ones). Running it again keeps what is already running.
#
#   sudo bash examples/slurm/local-cluster.sh
#   PRESET=debug NPROC=2 sbatch --nodes 1 --gpus-per-node 0 ... examples/slurm/pretrain.sbatch   (see the tests)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "local-cluster.sh: run as root (it installs and starts system services)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munge authenticates the daemons to each other: one shared key
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create >/dev/null 2>&1 || head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge /run/munge
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=minillm-local
SlurmctldHost=${node}
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a job in a higher-priority partition takes the CPUs of a lower one, whose job is requeued
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=${node} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=low Nodes=${node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=${node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
# state saved by a cluster of another name would keep slurmctld from starting
if [ -f /var/spool/slurmctld/clustername ] && [ "$(cat /var/spool/slurmctld/clustername)" != minillm-local ]; then
  rm -f /var/spool/slurmctld/clustername
fi

pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
scontrol reconfigure >/dev/null 2>&1 || true
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mixed|allocated"; then break; fi
  sleep 1
done
sinfo
