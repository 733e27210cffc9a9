"""earlyrl_jax.models."""
