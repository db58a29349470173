"""Curation at corpus scale (python -m phi4_jax.curate): heuristic filters, exact and MinHash
deduplication, quality classifiers trained on LLM annotations, and decontamination, in-process or
on a Ray cluster."""
