"""earlyrl_jax: self-improving pretraining (RL during pretraining) in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.10",
    "jaxlib>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "array_record>=0.8",
    "pyarrow>=14",
    "sentencepiece>=0.2",
    "tensorstore>=0.1.80",
    "ml_collections>=1.1",
    "absl-py",
    "numpy",
    # clu's metric_writers and periodic_actions import tensorflow at import
    # time; tensorflow-cpu + tensorboard make them work next to jax (and give
    # TensorBoard event files). earlyrl_jax.train.metrics falls back to JSONL +
    # console when they are missing, so a broken TF install never stops a run.
    "clu>=0.0.12",
    "tensorflow-cpu",
    "tensorboard",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist"],
    # HF interop. torch is only used by the parity tests; it is pinned because
    # an unpinned torch pulls a CUDA build of several GB.
    "hf": ["transformers>=4.45", "safetensors>=0.4", "tokenizers>=0.20", "jinja2", "torch==2.13.0"],
    "launch": ["xmanager"],
}

setuptools.setup(
    name="earlyrl_jax",
    version="0.1.0",
    description="Self-improving pretraining: RL during pretraining and mid-training, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["earlyrl_jax", "earlyrl_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "earlyrl-train-spm=earlyrl_jax.data.tokenizer:main",
            "earlyrl-convert=earlyrl_jax.models.convert:main",
            "earlyrl-world=earlyrl_jax.data.world:main",
        ]
    },
    license="Apache-2.0",
)
