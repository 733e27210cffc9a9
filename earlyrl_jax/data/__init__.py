"""earlyrl_jax.data."""
