"""earlyrl_jax.sampling."""
