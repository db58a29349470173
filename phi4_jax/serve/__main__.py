"""Serves a model over the OpenAI API (completions, chat, streaming), with continuous batching.

  python -m phi4_jax.serve --workdir=W [--step=N] | --hf_dir=D [--host=127.0.0.1 --port=8000]
      [--mesh_shape=1,1,-1] [--max_batch=8] [--max_queue=64] [--max_seq_len=N] [--api_key_env=VAR]
      [--model_name=NAME] [--drain_s=30] [--log=FILE]

Clients point an OpenAI base URL at http://HOST:PORT/v1 (phi4_jax's own generator spec is
`http://HOST:PORT/v1,model=NAME`). SIGTERM stops accepting, lets requests in flight finish within
--drain_s, then exits 0. One JSON line per request goes to stderr (or --log). docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from phi4_jax import fields, flags


def _mesh_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    raise argparse.ArgumentTypeError(f"expected data,fsdp,tensor sizes (e.g. 1,1,-1), got {text!r}")
  return shape


def parse_args(argv=None):
  p = flags.Parser("python -m phi4_jax.serve", __doc__)
  flags.add_model_flags(p)
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
  p.add_argument("--port", type=flags.ruled(fields.integer(0, 65535)), default=8000, help="0: any free port")
  p.add_argument("--model_name", default=None, help="the name clients ask for (default: the folder's name)")
  p.add_argument("--mesh_shape", type=_mesh_shape, default=None,
                 help="data,fsdp,tensor over this host's devices, e.g. 1,1,-1 (tensor parallel); "
                 "default one device")
  p.add_argument("--max_batch", type=flags.ruled(fields.integer(1)), default=8, help="decode slots")
  p.add_argument("--max_queue", type=flags.ruled(fields.integer(0)), default=64,
                 help="rows waiting for a slot before new requests get 429")
  p.add_argument("--max_seq_len", type=flags.ruled(fields.integer(16)), default=None,
                 help="cache columns per slot (prompt bucket + new tokens); default the model's max_seq_len")
  p.add_argument("--decode_chunk", type=flags.ruled(fields.integer(1)), default=8,
                 help="decode steps per scheduler turn (requests join and leave between chunks)")
  p.add_argument("--api_key_env", default="",
                 help="environment variable holding the bearer key clients must send")
  p.add_argument("--drain_s", type=flags.ruled(fields.number(0)), default=30.0,
                 help="after SIGTERM, how long requests in flight may take")
  p.add_argument("--log", default=None, help="append the JSON request log here instead of stderr")
  args = p.parse_args(argv)
  if args.api_key_env and not os.environ.get(args.api_key_env):
    p.exit(2, f"error: --api_key_env={args.api_key_env}: that variable is not set (or empty)\n")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  from phi4_jax import inference
  from phi4_jax.serve import lifecycle
  mesh = lifecycle.mesh_of(args.mesh_shape)
  cfg, params = inference.load(args.workdir or args.hf_dir, args.step)
  name = args.model_name or os.path.basename(os.path.normpath(args.workdir or args.hf_dir))
  server = lifecycle.start(params, cfg, model_name=name, host=args.host, port=args.port,
                           max_batch=args.max_batch, max_queue=args.max_queue, cache_len=args.max_seq_len,
                           chunk=args.decode_chunk, mesh=mesh, log_path=args.log,
                           api_key=os.environ.get(args.api_key_env, "") if args.api_key_env else "")
  print(f"serving {name} at {server.url}", flush=True)
  return lifecycle.run_until_signalled(server, args.drain_s)


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
