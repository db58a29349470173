"""Figure 2's question at small scale: more epochs of synthetic data, or more fresh web tokens?

At a fixed token budget, raising the synthetic share repeats the synthetic source for more epochs
and leaves fewer tokens to the other sources (rescaled to keep the shares summing to 1), swept
against the peak learning rate. Compare `loss/web` (web tokens are read about once, so it tracks
held-out web loss) and `epochs/synthetic` in the summary.

  python -m launch.sweep --sweep=experiments/sweeps/synthetic_mix.py          # colab: 6 points
  python -m launch.sweep --sweep=experiments/sweeps/synthetic_mix.py:test     # tiny: 2 points
"""

from phi4_jax import configs, sweeps

# arg -> (base preset, peak learning rates, synthetic fractions, overrides for every point)
SETTINGS = {
    "colab": ("colab", (1e-3, 3e-3), (0.2, 0.4, 0.6), {"log_every": 25}),
    "test": ("test", (3e-3,), (0.2, 0.6),
             {"steps": 3, "seq_len": 64, "log_every": 1, "checkpoint_every": 2,
              "optimizer.warmup_steps": 1, "tensorboard": False}),
}


def get_sweep(arg: str = "colab") -> sweeps.Sweep:
  if arg not in SETTINGS:
    raise ValueError(f"unknown sweep setting {arg!r}; choose one of {sorted(SETTINGS)}")
  preset, lrs, fractions, overrides = SETTINGS[arg]
  config = f"experiments/pretrain.py:{preset}"
  base = configs.load(config)
  return sweeps.Sweep(
      name="synthetic_mix" if arg == "colab" else f"synthetic_mix_{arg}",
      config=config,
      overrides=overrides,
      points=sweeps.grid(lr=sweeps.axis("optimizer.peak_lr", lrs),
                         synthetic=sweeps.fraction_axis(base, "synthetic", fractions)),
  )
