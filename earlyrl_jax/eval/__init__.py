"""earlyrl_jax.eval."""
