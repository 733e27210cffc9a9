"""earlyrl_jax: self-improving pretraining in JAX/Flax.

Subpackages: models (decoder LM, HF interop), parallel (meshes, sharding),
data (sources, tokenizers, pipelines, synthetic world), sampling (compiled
sampler), train (state, losses, steps, loop, checkpoints), eval (oracles).
"""

__version__ = "0.1.0"
