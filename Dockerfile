# The image launch/gke.py's JobSet runs: this repository at /app with phi4_jax installed.
#
#   docker build -t REGISTRY/phi4_jax:latest .                          # CPU jax
#   docker build --build-arg JAX_EXTRA=tpu -t REGISTRY/phi4_jax:tpu .   # TPU pods
#   docker build --build-arg JAX_EXTRA=cuda12 -t REGISTRY/phi4_jax:gpu . # NVIDIA GPUs
#   docker push REGISTRY/phi4_jax:...
#   python -m launch.gke --image=REGISTRY/phi4_jax:tpu ... -- --config=... --workdir=/gcs/runs/x
FROM python:3.11-slim

# JAX_EXTRA: jax's accelerator extra ("tpu", "cuda12"), or empty for the CPU build.
ARG JAX_EXTRA=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY setup.py README.md ./
COPY phi4_jax ./phi4_jax
RUN pip install -e . && if [ -n "$JAX_EXTRA" ]; then pip install "jax[$JAX_EXTRA]"; fi
COPY experiments ./experiments
COPY launch ./launch
# Smoke test at build time: the package imports and the command parses its flags.
RUN python -m phi4_jax.main --help > /dev/null
CMD ["python", "-m", "phi4_jax.main", "--help"]
