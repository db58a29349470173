# phi4_jax on one worker of a TPU VM pod slice: run by `gcloud ... ssh --worker=all` on each.
set -euo pipefail
metadata() {
  curl -sf -H 'Metadata-Flavor: Google' \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
# This worker's index, and every worker's address ("host" or "name:id:ip", in worker order).
PROCESS_ID=$(metadata agent-worker-number)
ENDPOINTS=$(metadata worker-network-endpoints)
NUM_PROCESSES=$(tr ',' '\n' <<< "$ENDPOINTS" | grep -c .)
FIRST_ENDPOINT=${ENDPOINTS%%,*}
COORDINATOR_ADDRESS="${FIRST_ENDPOINT##*:}:{{port}}"
if [[ ! -d {{repo_dir}} ]]; then  # (the launcher copies nothing: the repository must be on every worker)
  echo "phi4_jax: worker $PROCESS_ID has no {{repo_dir}}: put this repository there on every worker (e.g." \
    "gcloud compute tpus tpu-vm scp --recurse --worker=all . {{tpu_name}}:{{repo_dir}}, then pip install -e ." \
    "there, or --setup), or pass --repo_dir" >&2
  exit 1
fi
cd {{repo_dir}}
{{setup}}
mkdir -p {{workdir}}
exec {{python}} -m phi4_jax.main {{train_args}} \
  --coordinator_address="$COORDINATOR_ADDRESS" --num_processes="$NUM_PROCESSES" --process_id="$PROCESS_ID"
