#!/usr/bin/env bash
# Stops the cluster of .ci/slurm_up.sh: cancels its jobs, then stops exactly the daemons that
# slurm_up.sh started (the PIDs in its PID file, each checked to still run that program), slurmds
# first, then slurmctld, then munged (only if slurm_up.sh started it). Leaves slurm.conf, state
# and logs in place. Safe to run twice.
set -euo pipefail

DIR=${PHI4_JAX_SLURM_DIR:-/var/lib/phi4_jax-slurm}
PIDS=$DIR/pids
say() { echo "slurm_down: $*"; }

[ -s "$PIDS" ] || { say "nothing recorded in $PIDS: nothing to stop"; exit 0; }

alive() {  # alive NAME PID: PID runs the program NAME (not a reused PID)
  [ -r "/proc/$2/cmdline" ] || return 1
  local exe
  exe=$(tr '\0' '\n' < "/proc/$2/cmdline" | head -n 1) || return 1
  [ "$(basename -- "$exe")" = "$1" ]
}
pid_of() { awk -v k="$1" '$1 == k {print $2}' "$PIDS" | tail -n 1; }

# Jobs first (their slurmstepds outlive slurmd): while slurmctld runs, cancel them and wait a bit.
ctld=$(pid_of slurmctld)
if [ -n "$ctld" ] && alive slurmctld "$ctld"; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    say "cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 80); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

stop() {  # stop KEY: TERM, wait up to 10 s, then KILL
  local key=$1 name=${1%%:*} pid
  pid=$(pid_of "$key")
  [ -n "$pid" ] || return 0
  if ! alive "$name" "$pid"; then say "$key ($pid) not running"; return 0; fi
  say "stopping $key ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$name" "$pid" || return 0; sleep 0.1; done
  say "$key ($pid) still runs after 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$name" "$pid" || return 0; sleep 0.1; done
  say "error: $key ($pid) survived SIGKILL" >&2
  return 1
}

status=0
for key in slurmd:n2 slurmd:n1 slurmctld munged; do stop "$key" || status=1; done
[ "$status" = 0 ] && rm -f "$PIDS"
exit "$status"
