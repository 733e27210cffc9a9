"""earlyrl_jax.teacher."""
