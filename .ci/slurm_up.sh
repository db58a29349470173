#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine, for tests/test_slurm.py: nodes n1 and n2 (both
# 127.0.0.1, one slurmd each on its own port, 1 CPU each) in the default partition `debug`.
#
#   bash .ci/slurm_up.sh      # idempotent: starts only what is not already running
#   bash .ci/slurm_down.sh    # stops exactly what this script started (by PID)
#
# It writes /etc/slurm/slurm.conf (so sbatch, sinfo, ... find it without SLURM_CONF; it refuses to
# overwrite one it did not write), adds n1 and n2 to /etc/hosts, creates the munge key if missing
# and starts munged if no munged answers. State, spool, logs and the PID file live in
# $PHI4_JAX_SLURM_DIR (default /var/lib/phi4_jax-slurm), outside the repository. Needs root.
# Without SLURM it tries `apt-get install slurmctld slurmd munge slurm-client`.
set -euo pipefail

DIR=${PHI4_JAX_SLURM_DIR:-/var/lib/phi4_jax-slurm}
CONF=/etc/slurm/slurm.conf
PIDS=$DIR/pids  # "name pid" per line: what slurm_down.sh stops
MARKER="# written by phi4_jax .ci/slurm_up.sh"
CTLD_PORT=${PHI4_JAX_SLURMCTLD_PORT:-6817}
NODE_PORTS=(${PHI4_JAX_SLURMD_PORTS:-6818 6819})
NODES=(n1 n2)
TIMEOUT_S=${PHI4_JAX_SLURM_TIMEOUT_S:-90}

die() { echo "slurm_up: error: $*" >&2; exit 1; }
say() { echo "slurm_up: $*"; }

[ "$(id -u)" -eq 0 ] || die "run as root (it writes /etc/slurm and starts the daemons)"

# --- binaries -------------------------------------------------------------------------------
missing() { for b in slurmctld slurmd munged munge unmunge sbatch sinfo squeue scontrol scancel; do
  command -v "$b" >/dev/null 2>&1 || { echo "$b"; return 0; }; done; return 1; }
if b=$(missing); then
  say "$b not found: installing slurmctld slurmd munge slurm-client with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q slurmctld slurmd munge slurm-client; } \
    || die "apt-get install slurmctld slurmd munge slurm-client failed; install SLURM (22.05+) by hand"
  b=$(missing) && die "$b still not found after apt-get install"
fi

mkdir -p "$DIR"/{state,spool/n1,spool/n2,log,run} /etc/slurm
touch "$PIDS"

alive() {  # alive NAME PID: PID runs the program NAME (not a reused PID)
  [ -r "/proc/$2/cmdline" ] || return 1
  local exe
  exe=$(tr '\0' '\n' < "/proc/$2/cmdline" | head -n 1) || return 1
  [ "$(basename -- "$exe")" = "$1" ]
}
recorded() {  # recorded KEY: the PID recorded for KEY if that process still runs
  local key name pid
  while read -r key pid; do
    name=${key%%:*}
    if [ "$key" = "$1" ] && alive "$name" "$pid"; then echo "$pid"; return 0; fi
  done < "$PIDS"
  return 1
}
record() {  # record KEY PID (replacing an older line of KEY)
  { grep -v "^$1 " "$PIDS" || true; echo "$1 $2"; } > "$PIDS.new"
  mv "$PIDS.new" "$PIDS"
}

# --- names ----------------------------------------------------------------------------------
for n in "${NODES[@]}"; do
  getent hosts "$n" >/dev/null || { echo "127.0.0.1 $n" >> /etc/hosts; say "added $n to /etc/hosts"; }
done

# --- munge ----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged answers"
else
  say "starting munged"
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
    > "$DIR/log/munged.out" 2>&1 &
  record munged $!
  for _ in $(seq 100); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { tail -n 20 "$DIR/log/munged.out" /var/log/munge/munged.log >&2 || true
                                     die "munged does not answer"; }
fi

# --- slurm.conf -----------------------------------------------------------------------------
NEW=$(cat <<EOF
$MARKER (state in $DIR)
ClusterName=phi4ci
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# every finished job's final state, one line each (sacct needs slurmdbd; this does not)
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to scontrol show job for an hour
MinJobAge=3600
# scancel: SIGTERM, then SIGKILL after KillWait seconds
KillWait=30
SlurmdTimeout=60
InactiveLimit=0
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=n1 Port=${NODE_PORTS[0]} CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=n2 Port=${NODE_PORTS[1]} CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARKER"; then
  die "$CONF exists and was not written by this script; move it away (or run the tests against it)"
fi
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW" ]; then
  printf '%s\n' "$NEW" > "$CONF"
  changed=1
  say "wrote $CONF"
fi

# --- daemons --------------------------------------------------------------------------------
if [ "$changed" = 1 ]; then  # a new config: restart what we run under the old one
  for key in slurmd:n2 slurmd:n1 slurmctld; do
    if pid=$(recorded "$key"); then
      say "config changed: stopping $key ($pid)"
      kill "$pid"
      for _ in $(seq 100); do alive "${key%%:*}" "$pid" || break; sleep 0.1; done
    fi
  done
fi

if pid=$(recorded slurmctld); then
  say "slurmctld runs ($pid)"
else
  say "starting slurmctld"
  /usr/sbin/slurmctld -D >> "$DIR/log/slurmctld.out" 2>&1 &
  record slurmctld $!
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
fi
for i in "${!NODES[@]}"; do
  n=${NODES[$i]}
  if pid=$(recorded "slurmd:$n"); then
    say "slurmd -N $n runs ($pid)"
  else
    say "starting slurmd -N $n (port ${NODE_PORTS[$i]})"
    /usr/sbin/slurmd -D -N "$n" >> "$DIR/log/slurmd-$n.out" 2>&1 &
    record "slurmd:$n" $!
  fi
done

# --- wait for both nodes idle ---------------------------------------------------------------
logs() {
  for f in slurmctld.out slurmctld.log slurmd-n1.out slurmd-n1.log slurmd-n2.out slurmd-n2.log; do
    [ -s "$DIR/log/$f" ] && { echo "--- $DIR/log/$f"; tail -n 15 "$DIR/log/$f"; }
  done >&2
}
deadline=$((SECONDS + TIMEOUT_S))
resumed=0
while :; do
  for key in slurmctld slurmd:n1 slurmd:n2; do
    recorded "$key" >/dev/null || { logs; die "$key exited; its log is above"; }
  done
  states=$(sinfo -h -N -p debug -o "%N %t" 2>/dev/null | sort -u || true)
  idle=$(awk '$2 == "idle" {c++} END {print c + 0}' <<< "$states")
  [ "$idle" -ge 2 ] && break
  # a node left down or drained by an earlier run of the cluster: return it to service once
  if [ "$resumed" = 0 ] && grep -Eq "(down|drain|drng|fail)" <<< "$states"; then
    scontrol update NodeName=n1,n2 State=RESUME 2>/dev/null || true
    resumed=1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    logs
    die "after ${TIMEOUT_S}s sinfo shows: $(echo "$states" | tr '\n' ';') (want n1 and n2 idle)"
  fi
  sleep 0.5
done

say "up: $(echo "$states" | tr '\n' ' ')"
say "SLURM_CONF=$CONF (the default path: no environment needed); PIDs in $PIDS; logs in $DIR/log"
