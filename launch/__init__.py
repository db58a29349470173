"""Launchers around `python -m phi4_jax.main`: local multi-process, SLURM, TPU VMs, GKE, and sweeps.

Each process of a job runs phi4_jax.main with `--coordinator_address --num_processes --process_id`
(JAX's own multi-controller runtime, jax.distributed); these modules only start those processes.
"""
