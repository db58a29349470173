#!/usr/bin/env bash
# A two-node Ray cluster on this machine, for tests/test_curate_ray.py: a head and a worker node
# (1 CPU each) on loopback, started with the active environment's `ray`. Prints the address.
#
#   bash .ci/ray_up.sh      # then: export PHI4_JAX_RAY_ADDRESS=127.0.0.1:$PHI4_JAX_RAY_PORT
#   bash .ci/ray_down.sh    # `ray stop` for this cluster
set -euo pipefail
PORT=${PHI4_JAX_RAY_PORT:-6390}
DIR=${PHI4_JAX_RAY_DIR:-/tmp/phi4_jax-ray}
command -v ray >/dev/null || { echo "ray_up: error: no ray command (pip install 'ray[data]')" >&2; exit 1; }
common=(--node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats)
ray start --head --port="$PORT" --include-dashboard=false --temp-dir="$DIR" "${common[@]}" >/dev/null
ray start --address="127.0.0.1:$PORT" "${common[@]}" >/dev/null
python - "$PORT" <<'PY'
import sys, time
import ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", log_to_driver=False)
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in ray.nodes()) < 2:
  if time.monotonic() > deadline:
    sys.exit("ray_up: error: the worker node did not join within 60 s")
  time.sleep(1)
print(f"ray_up: 2 nodes at 127.0.0.1:{sys.argv[1]}")
PY
