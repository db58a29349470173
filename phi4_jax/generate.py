"""Sample from a trained model: one prompt streamed to the terminal, or a JSONL file of prompts.

  python -m phi4_jax.generate --workdir=W [--step=N] --prompt="def fib(n):" [--max_new_tokens=64]
  python -m phi4_jax.generate --hf_dir=D --chat --prompt="What is 7 * 6?" --temperature=0.7 --seed=1
  python -m phi4_jax.generate --workdir=W --prompts_file=F.jsonl --output=O.jsonl [--num_samples=4]

A plain prompt starts a new document (`<|endoftext|>` first, as in packed pretraining rows) and
stops at `<|endoftext|>` or `<|im_end|>`; `--chat` wraps it in the ChatML template with a generation
prompt and stops at `<|im_end|>`. A prompts file has one JSON object per line with `prompt` (text),
`messages` (a conversation, always templated) or `prompt_ids`, and optionally its own `id`; the
output gets one line per prompt, `{"index", "id" (when the prompt has one), "completions",
"completion_ids"}`, written as each batch finishes, so a rerun after a kill skips the prompts already
there. The output records what made it (OUTPUT.fingerprint.json: the model, the prompts file's
content, the sampling flags): a rerun with another is refused, or started over with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from phi4_jax import fields, flags
from phi4_jax.store import fingerprint, jsonl_log
from phi4_jax.tokenizer import Phi4Tokenizer

TOKENIZER = Phi4Tokenizer()
PLAIN_STOPS, CHAT_STOPS, prompt_ids = TOKENIZER.plain_stops, TOKENIZER.chat_stops, TOKENIZER.prompt_ids


def _sampling(args) -> dict:
  stops = args.stop_ids if args.stop_ids is not None else (CHAT_STOPS if args.chat else PLAIN_STOPS)
  return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed, stop_ids=tuple(stops))


def stream_to_terminal(params, cfg, ids: list[int], args, out=None) -> list[int]:
  """Prints the continuation as it is produced (whole characters only); returns its ids."""
  from phi4_jax import inference
  out = out or sys.stdout
  produced: list[int] = []
  shown = 0
  for token in inference.stream(params, cfg, ids, **_sampling(args)):
    produced.append(token)
    text = TOKENIZER.decode(produced)
    if not text.endswith("\ufffd"):  # a character split across tokens waits for its last byte
      out.write(text[shown:])
      out.flush()
      shown = len(text)
  out.write(TOKENIZER.decode(produced)[shown:] + "\n")
  return produced


def read_prompts(path: str, chat: bool) -> tuple[list[list[int]], list]:
  """(the prompts' token ids, their own ids or None)."""
  records = list(jsonl_log.objects(path))
  if not records:
    raise ValueError(f"{path}: no prompts")
  return [prompt_ids(record, chat, f"{path}:{n}") for n, record in records], [r.get("id") for _, r in records]


def claim_output(args) -> None:
  """Refuses an output that is the prompts file, or that another model, prompts file or sampling
  flags made (store/fingerprint.py); --overwrite starts it over."""
  fingerprint.refuse_input_as_output(args.output, {"--prompts_file": args.prompts_file})
  made = {"model": fingerprint.model_identity(args.workdir or args.hf_dir, args.step),
          "prompts": fingerprint.file_identity(args.prompts_file), "chat": args.chat,
          "num_samples": args.num_samples, "sampling": _sampling(args)}
  fingerprint.claim(args.output, made, [args.output], args.overwrite)


def run_file(params, cfg, args) -> int:
  """Generates for every prompt of args.prompts_file not yet in args.output; returns how many."""
  from phi4_jax import inference
  prompts, ids = read_prompts(args.prompts_file, args.chat)
  done = {int(i) for i in jsonl_log.read(args.output, "index")}
  todo = [i for i in range(len(prompts)) if i not in done]
  with open(args.output, "a", encoding="utf-8") as out:
    for start in range(0, len(todo), args.batch_prompts):
      batch = todo[start:start + args.batch_prompts]
      outs = inference.generate(params, cfg, [prompts[i] for i in batch], num_samples=args.num_samples,
                                sample_ids=batch, **_sampling(args))  # (the same draws on a rerun)
      for k, i in enumerate(batch):
        samples = outs[k * args.num_samples:(k + 1) * args.num_samples]
        own = {"id": ids[i]} if ids[i] is not None else {}
        out.write(json.dumps({"index": i, **own, "completions": [TOKENIZER.decode(s) for s in samples],
                              "completion_ids": samples}) + "\n")
      out.flush()
      os.fsync(out.fileno())
      print(f"{start + len(batch)}/{len(todo)} prompts", file=sys.stderr)
  return len(todo)


def parse_args(argv=None) -> argparse.Namespace:
  p = flags.Parser("python -m phi4_jax.generate", __doc__)
  flags.add_model_flags(p)
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--prompt", help="one prompt, streamed to the terminal")
  what.add_argument("--prompts_file", help="JSONL of prompts (needs --output)")
  p.add_argument("--output", help="JSONL written one line per prompt; resumable")
  p.add_argument("--chat", action="store_true", help="wrap prompts in the ChatML template")
  p.add_argument("--max_new_tokens", type=flags.ruled(fields.integer(1)), default=128)
  p.add_argument("--temperature", type=flags.ruled(fields.number(0)), default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=flags.ruled(fields.integer(0)), default=0, help="0 = off")
  p.add_argument("--top_p", type=flags.ruled(fields.number(0, 1, low_open=True)), default=1.0)
  p.add_argument("--num_samples", type=flags.ruled(fields.integer(1)), default=1)
  p.add_argument("--seed", type=flags.ruled(fields.integer(0)), default=0)
  p.add_argument("--stop_ids", type=flags.ruled(fields.integer(0)), nargs="*", default=None,
                 help="default: by --chat")
  p.add_argument("--batch_prompts", type=flags.ruled(fields.integer(1)), default=32,
                 help="prompts per written batch")
  flags.add_overwrite_flag(p)
  args = p.parse_args(argv)
  if args.prompts_file and not args.output:
    p.error("--prompts_file needs --output")
  if args.num_samples > 1 and args.temperature == 0:
    print(f"generate: --num_samples={args.num_samples} at --temperature=0 gives {args.num_samples} identical "
          "greedy samples (set a temperature to sample)", file=sys.stderr)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  from phi4_jax import inference
  if args.prompts_file:
    read_prompts(args.prompts_file, args.chat)  # (bad prompts are named before the model loads)
    claim_output(args)
  cfg, params = inference.load(args.workdir or args.hf_dir, args.step)
  if args.prompts_file:
    n = run_file(params, cfg, args)
    print(f"wrote {n} prompts to {args.output}", file=sys.stderr)
    return
  ids = prompt_ids({"prompt": args.prompt}, args.chat, "--prompt")
  if args.num_samples == 1:
    stream_to_terminal(params, cfg, ids, args)
    return
  outs = inference.generate(params, cfg, [ids], num_samples=args.num_samples, **_sampling(args))
  for k, sample_ids in enumerate(outs):
    print(f"--- sample {k}\n{TOKENIZER.decode(sample_ids)}")


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # bad arguments or files: one line, no traceback
    sys.exit(f"error: {e}")
