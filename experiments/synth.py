"""Synthetic data pipelines (synth/pipeline.py): which dataset types run, on which seeds, with what
token budget, decontaminated against which benchmarks and counted against which mixture plan.

colab: rejection-sampled SFT data on 64 questions of the embedded parity family's search split
(kept clear of every held-out set), four solutions each, the oracle keeping one right one per
question: the only type a colab-sized model can serve (it writes no critiques or instructions
that parse). 1b and phi4_14b: every type on seeds under $PHI4_DATA/synth/ (web pages as
{"text"} for web_rewrite, qa_extraction and multi_agent; tasks as {"question"} for
self_revision; code with its tests as {"code", "tests"} for instruction_reversal; questions with
answers as oracles.py's records for rejection_sampling), with budgets that give the pretrain
mixture's synthetic and web_rewrites sources their Table 5 epochs (phi4_14b: 290B unique tokens
each, as experiments/pretrain.py declares; 1b: 600M each), decontaminated against HumanEval and
the embedded evaluation sets.

  python -m phi4_jax.synth --pipeline=experiments/synth.py:1b --generator=http://host:8000/v1,model=NAME \\
      --out=$PHI4_DATA/synth/out [--config.self_revision.target_tokens=1000000]
  python -m phi4_jax.main --config=experiments/recipe.py:colab --workdir=W   # (its synth stage)
"""

from phi4_jax.synth import pipeline

BENCHMARKS = "humaneval,embedded:exercises,embedded:parity"
SEEDS = "$PHI4_DATA/synth"
# preset -> {type: (seeds, target tokens, settings)}, then the plan the tokens are counted against
PRESETS = {
    "colab": ({"rejection_sampling": ("corpus:parity", 0, dict(
        num_seeds=64, num_solutions=4, keep_per_question=1, temperature=1.0, max_new_tokens=6, min_tokens=0,
        items_per_round=64))}, ""),
    "1b": ({
        "web_rewrite": (f"{SEEDS}/web/*.jsonl.gz", 600_000_000, dict(max_new_tokens=1_024)),
        "self_revision": (f"{SEEDS}/tasks/*.jsonl", 200_000_000, dict(max_new_tokens=1_024, rounds=2)),
        "qa_extraction": (f"{SEEDS}/web/*.jsonl.gz", 160_000_000, dict(max_new_tokens=512)),
        "instruction_reversal": (f"{SEEDS}/code/*.jsonl", 80_000_000, dict(max_new_tokens=1_024)),
        "multi_agent": (f"{SEEDS}/web/*.jsonl.gz", 60_000_000, dict(max_new_tokens=256, turns=4)),
        "rejection_sampling": (f"{SEEDS}/questions/*.jsonl", 100_000_000, dict(max_new_tokens=1_024)),
    }, "experiments/pretrain.py:1b"),
    "phi4_14b": ({
        "web_rewrite": (f"{SEEDS}/web/*.jsonl.gz", 290_000_000_000, dict(max_new_tokens=2_048)),
        "self_revision": (f"{SEEDS}/tasks/*.jsonl", 100_000_000_000, dict(max_new_tokens=2_048, rounds=3)),
        "qa_extraction": (f"{SEEDS}/web/*.jsonl.gz", 80_000_000_000, dict(max_new_tokens=1_024)),
        "instruction_reversal": (f"{SEEDS}/code/*.jsonl", 40_000_000_000, dict(max_new_tokens=2_048)),
        "multi_agent": (f"{SEEDS}/web/*.jsonl.gz", 30_000_000_000, dict(max_new_tokens=512, turns=6)),
        "rejection_sampling": (f"{SEEDS}/questions/*.jsonl", 40_000_000_000, dict(max_new_tokens=2_048)),
    }, "experiments/pretrain.py:phi4_14b"),
}


def get_config(arg: str = "colab"):
  if arg not in PRESETS:
    raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(PRESETS)}")
  table, plan = PRESETS[arg]
  entries = {name: pipeline.entry(name, seeds, target_tokens=target, **settings)
             for name, (seeds, target, settings) in table.items()}
  return pipeline.pipeline(entries, benchmarks=BENCHMARKS if arg != "colab" else "embedded:parity", plan=plan)
