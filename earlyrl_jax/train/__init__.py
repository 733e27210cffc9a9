"""earlyrl_jax.train."""
