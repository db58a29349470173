"""Recipes: stages run in order in one workdir, each a training stage or a data stage.

  stages.py   the protocol every stage implements and the registry of stage kinds
  runner.py   link, check every stage, run the unfinished ones (`python -m phi4_jax.main`)
  report.py   a recipe's closing report: table, curves, held-out evaluations, samples
"""
