"""An OpenAI-compatible server on the KV-cache decoder, with continuous batching (docs/serving.md).

  python -m phi4_jax.serve --hf_dir=D --port=8000 [--max_batch=8] [--mesh_shape=1,1,-1]

  server = serve.start(params, cfg, model_name="phi4", port=0)   # in Python; server.url is the /v1 base
  serve.drain(server, drain_s=30)

engine.py: the slots and the scheduler; steps.py: its compiled admit and decode calls; choose.py:
per-row sampling; http.py: routes and streaming; protocol.py: request checks and errors;
generation.py: responses; text.py: stop strings and stream deltas; scoring.py: prompt log-probs;
metrics.py: Prometheus text and the request log; lifecycle.py: start, drain, signals.
"""

from phi4_jax.serve.lifecycle import drain, start

__all__ = ["drain", "start"]
