"""earlyrl_jax.parallel."""
