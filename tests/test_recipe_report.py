"""The recipe report's evaluations table (Table 9 at the recipe's scale) and notes, by hand."""

from phi4_jax.recipe import report


def _rows(step, acc, empty=0.0):
  return [{"step": 1, "loss": 1.0}, {"step": step, "loss": 0.5, "eval": {
      "answers": {"acc": acc, "majority": 0.5, "empty": empty, "n": 256},
      "choice": {"acc": 0.3, "acc_norm": 0.25, "majority": 0.27, "chance": 0.25, "n": 64}}}]


def test_the_evaluations_table_puts_each_stage_beside_the_baselines():
  stage_rows = [("pretrain", [{"step": 4, "loss": 3.0}]), ("sft", _rows(128, 0.62)),
                ("dpo_pts", [{"step": 4, "loss": 0.7, "eval": {"answers": {"acc": 0.1, "majority": 0.5, "n": 8}}},
                             *_rows(8, 0.72)[1:]]), ("dpo_judge", _rows(8, 0.74, empty=0.01))]
  evaluated = report.evaluations(stage_rows)
  assert list(evaluated) == ["sft", "dpo_pts", "dpo_judge"] and evaluated["dpo_pts"][0] == 8  # the last eval row
  assert report.evaluations_table(evaluated).splitlines() == [
      "| evaluation | n | majority | chance | sft (step 128) | dpo_pts (step 8) | dpo_judge (step 8) |",
      "|---|---|---|---|---|---|---|",
      "| answers acc | 256 | 0.500 | - | 0.620 | 0.720 | 0.740 |",
      "| answers empty | 256 | - | - | 0.000 | 0.000 | 0.010 |",
      "| choice acc | 64 | 0.270 | 0.250 | 0.300 | 0.300 | 0.300 |",
      "| choice acc_norm | 64 | 0.270 | 0.250 | 0.250 | 0.250 | 0.250 |"]
  assert report.eval_note(stage_rows[1][1][-1]) == (
      "eval@128: answers acc 0.62 empty 0.00 (majority 0.50, n 256), "
      "choice acc 0.30 acc_norm 0.25 (majority 0.27, chance 0.25, n 64)")


def test_the_report_png_has_the_evaluations_and_log_ratio_panels(tmp_path):
  dpo = [{"step": s, "loss": 0.69 - 0.01 * s, "reward_accuracy": 0.5, "reward_margin": 0.01 * s,
          "chosen_logratio": -0.1 * s, "rejected_logratio": -0.2 * s, "loss_per_source": {"pts": 0.6, "math": 0.7}}
         for s in (4, 8)]
  stage_rows = [("sft", _rows(128, 0.62)), ("dpo_pts", dpo)]
  path = report.write_curves(str(tmp_path), stage_rows, report.evaluations(stage_rows))
  assert path.endswith(".png") and (tmp_path / "report.png").stat().st_size > 10_000
