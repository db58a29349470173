"""python -m phi4_jax.hf import|export: HF folders <-> workdir checkpoints, streaming."""

from __future__ import annotations

from phi4_jax import flags, hf
from phi4_jax.model.config import DTYPES


def main(argv: list[str] | None = None) -> None:
  parser = flags.Parser("python -m phi4_jax.hf", hf.__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import", help="HF folder -> orbax checkpoint in a workdir")
  imp.add_argument("--hf_dir", required=True)
  imp.add_argument("--out", required=True, help="workdir to create")
  imp.add_argument("--dtype", choices=DTYPES, default=None, help="default: the file's dtype")
  exp = commands.add_parser("export", help="workdir checkpoint -> HF folder")
  exp.add_argument("--workdir", required=True)
  exp.add_argument("--out", required=True, help="HF folder to write")
  exp.add_argument("--step", type=int, default=None, help="default: the latest")
  exp.add_argument("--dtype", choices=DTYPES, default=None, help="default: the checkpoint's")
  exp.add_argument("--max_shard_size", default="5GB")
  args = parser.parse_args(argv)
  try:
    if args.command == "import":
      cfg = hf.import_checkpoint(args.hf_dir, args.out, args.dtype)
      print(f"imported {args.hf_dir} -> {args.out} ({cfg.param_dtype})")
    else:
      hf.export_checkpoint(args.workdir, args.out, args.step, args.dtype, args.max_shard_size)
      print(f"exported {args.workdir} -> {args.out}")
  except (ValueError, FileNotFoundError) as e:  # a refused input: its message names the file
    parser.exit(1, f"{parser.prog} {args.command}: error: {e}\n")


if __name__ == "__main__":
  main()
