"""earlyrl_jax: self-improving pretraining (RL during pretraining) in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.10",
    "jaxlib>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "etils[epath]",        # local and remote (gs://, s3://) paths for checkpoints; orbax uses it too
    "grain>=0.2.18",
    "sentencepiece>=0.2",
    "tensorstore>=0.1.80",
    "ml_collections>=1.1",
    "absl-py",
    "numpy",
    "ml_dtypes",
    # HF checkpoints: bfloat16 through ml_dtypes and lazy per-shard slices (get_slice).
    "safetensors>=0.4",
    # TensorBoard event files without TensorFlow. clu only for what works without TF
    # (clu.parameter_overview); clu.metric_writers / periodic_actions would pull
    # tensorflow-cpu (~270 MB, not published for every platform) and are not used.
    "tensorboardX>=2.6",
    "clu>=0.0.12",
    "protobuf",            # SentencePiece continuation encoding edits the model proto
    "matplotlib",          # mode='report' plots (oracle scores, candidate win shares)
]

EXTRAS = {
    # nbclient / ipykernel / nbformat: tests/test_notebook.py executes launch/colab/quickstart.ipynb.
    # accelerate: the GGUF parity tests read the GGUF with transformers too, which needs it.
    # httpx: the served-teacher client's tests (tests/test_backends.py).
    "test": ["pytest>=8", "pytest-xdist", "nbclient>=0.10", "ipykernel>=6", "nbformat>=5.10",
             "accelerate>=1.0", "httpx>=0.27"],
    # HF interop. torch is only used by the parity tests; it is pinned because
    # an unpinned torch pulls a CUDA build of several GB. gguf (numpy only): `earlyrl-convert
    # gguf` reads and dequantizes llama.cpp files (models/gguf_io.py).
    "hf": ["transformers>=4.45", "tokenizers>=0.20", "jinja2>=3.1", "torch==2.13.0", "gguf>=0.17"],
    # data.format=parquet (pyarrow) and arrayrecord / arrayrecord_text (array_record).
    "formats": ["pyarrow>=14", "array_record>=0.8"],
    # metrics.wandb_project: a Weights & Biases writer next to TensorBoard and metrics.jsonl.
    "wandb": ["wandb"],
    # teacher.backend='openai': the HTTP client of a served teacher (vLLM, SGLang, TGI, earlyrl-serve).
    "serve": ["httpx>=0.27"],
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
            "earlyrl-convert=earlyrl_jax.tools.convert:main",
            "earlyrl-world=earlyrl_jax.world.supervision:main",
            "earlyrl-generate=earlyrl_jax.generate:main",
            "earlyrl-serve=earlyrl_jax.serve:main",
        ]
    },
    license="Apache-2.0",
)
