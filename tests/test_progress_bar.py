"""train/metrics.py's ProgressBar: speed and ETA from this run's steps after the first (compile)."""

import io

from phi4_jax.train import metrics


class FakeClock:
  def __init__(self, now: float = 0.0):
    self.now = now

  def __call__(self) -> float:
    return self.now


def test_eta_after_a_resume_counts_only_steps_run_after_the_first(monkeypatch):
  clock = FakeClock(10.0)
  monkeypatch.setattr(metrics.time, "monotonic", clock)
  out = io.StringIO()
  bar = metrics.ProgressBar(total=500, start=400, tokens_per_step=1000, stream=out)  # resumed at 400
  clock.now = 100.0  # restoring the checkpoint and compiling the first step took 90 s
  bar.update(401, "loss 3.000")
  assert out.getvalue().endswith("loss 3.000 | ? tok/s | ETA ?")
  clock.now = 110.0  # then 10 steps in 10 s
  bar.update(411, "loss 2.900")
  line = out.getvalue().rsplit("\r", 1)[1]
  assert line == "step 411/500 [" + "#" * 19 + "." * 5 + "] loss 2.900 | 1,000 tok/s | ETA 1m29s"
  clock.now = 130.0  # 10 more in 20 s: 20 steps in 30 s since the first update
  bar.update(421, "loss 2.800")
  assert out.getvalue().endswith("| 667 tok/s | ETA 1m58s")  # 79 steps at 2/3 step/s


def test_a_fresh_run_also_leaves_out_the_compile_of_its_first_step(monkeypatch):
  clock = FakeClock(0.0)
  monkeypatch.setattr(metrics.time, "monotonic", clock)
  out = io.StringIO()
  bar = metrics.ProgressBar(total=100, start=0, tokens_per_step=10, stream=out)
  clock.now = 60.0  # compile
  bar.update(1, "")
  clock.now = 62.0
  bar.update(5, "")  # 4 steps in 2 s
  assert out.getvalue().endswith("| 20 tok/s | ETA 0m47s")  # 95 steps at 2 step/s
