"""The synthetic data engine (python -m phi4_jax.synth): Phi-4's dataset types made by any
generator, validated, decontaminated and counted against a mixture plan."""
