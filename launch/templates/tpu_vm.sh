#!/bin/bash
# phi4_jax on the TPU VM pod slice {{tpu_name}}: one process per worker, joined by jax.distributed.
# Rendered by `python -m launch.tpu`; run it from any machine with gcloud credentials.
set -euo pipefail
WORKER_SCRIPT=$(cat <<'END_OF_WORKER_SCRIPT'
{{worker_script}}
END_OF_WORKER_SCRIPT
)
gcloud compute tpus tpu-vm ssh {{tpu_name}} --zone={{zone}}{{project}} --worker=all \
  --command="$WORKER_SCRIPT"
