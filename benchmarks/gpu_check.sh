#!/usr/bin/env bash
# One-command GPU check, on a machine with one GPU and a fresh clone (under 8 minutes):
#   1. installs .[gpu,test] into .venv-gpu;
#   2. runs the tests of the accelerator paths: cuDNN attention against XLA attention (values and
#      gradients), a bf16 train step against fp32, the KV-cache sampler against a full forward;
#   3. trains 30 steps of the 1b pretraining preset at seq 4096 (bf16) and prints ONE JSON line:
#      steady-state MFU, tokens/s, step time, compile time and peak device memory.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu    # the same three steps on CPU, tiny and quick, in the
#                                         # current environment (what the tests run)
# GPU_CHECK_BATCH (default 8) and GPU_CHECK_MICROBATCHES (default 2) size the 1b run for one GPU;
# GPU_CHECK_TESTS (default: the accelerator-path tests below) replaces the pytest selection.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then
  mode=cpu
elif [[ -n "${1:-}" ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--cpu]" >&2
  exit 2
fi

if [[ "$mode" == gpu ]]; then
  python3 -m venv .venv-gpu
  . .venv-gpu/bin/activate
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[gpu,test]"
  export JAX_PLATFORMS=cuda
  python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())" >&2
  run=(--config=experiments/pretrain.py:1b --config.steps=30 --config.log_every=5
       --config.checkpoint_every=1000 --config.global_batch_size="${GPU_CHECK_BATCH:-8}"
       --config.microbatches="${GPU_CHECK_MICROBATCHES:-2}" --config.tensorboard=false)
else
  export JAX_PLATFORMS=cpu
  run=(--config=experiments/pretrain.py:test --config.steps=6 --config.log_every=2
       --config.checkpoint_every=1000 --config.seq_len=64 --config.global_batch_size=4
       --config.loss_chunk=64 --config.tensorboard=false)
fi
PYTHON="${PYTHON:-python}"
read -r -a tests <<< "${GPU_CHECK_TESTS:-tests/test_gpu_paths.py \
tests/test_inference.py::test_greedy_equals_argmax_of_a_full_forward_recomputation \
tests/test_model.py::test_bf16_compute_stays_close_to_fp32}"
"$PYTHON" -m pytest -q -p no:cacheprovider "${tests[@]}" >&2
"$PYTHON" benchmarks/gpu_check.py "${run[@]}" 2>/tmp/gpu_check_train.$$.log \
  || { tail -40 /tmp/gpu_check_train.$$.log >&2; exit 1; }
rm -f /tmp/gpu_check_train.$$.log
