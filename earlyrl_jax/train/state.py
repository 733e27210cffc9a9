"""TrainState and the optimizer built from the `opt` config section.

The model is split once into a static `graphdef` and an `nnx.State` of arrays;
TrainState holds only arrays (params, optimizer state, step, rng), so it can be
jit-compiled with explicit shardings and saved by orbax as one pytree.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from earlyrl_jax.models.transformer import ModelConfig, Transformer, split_abstract
from earlyrl_jax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 [], number of optimizer updates applied
  params: nnx.State      # float32 master weights
  opt_state: Any         # optax state (sharded like params)
  rng: jax.Array         # uint32 [2] base key; step keys are fold_in(rng, step)


def lr_schedule(opt_cfg, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `learning_rate * min_lr_ratio`."""
  peak = opt_cfg.learning_rate
  warmup = min(opt_cfg.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=peak * opt_cfg.min_lr_ratio)


_NO_DECAY_NAMES = ("scale",)  # RMSNorm gains; every "*bias" is excluded too


def _leaf_name(path) -> str:
  """The parameter's own name ('q', 'q_bias', 'scale', ...) from a pytree key path."""
  for key in reversed(path):
    name = getattr(key, "key", None)
    if isinstance(name, str):
      return name
  return ""


def weight_decay_mask(params):
  """True for weight matrices, False for biases and norm scales (decided by name, not rank).

  By rank alone the qkv biases ([N, H], 2-D) would be decayed towards 0 like
  weights; decaying a bias or a norm gain only hurts.
  """
  def decays(path, p):
    name = _leaf_name(path)
    return bool(p.ndim >= 2 and not name.endswith("bias") and name not in _NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_cfg, num_steps: int) -> optax.GradientTransformation:
  """AdamW (decay on weight matrices only, see `weight_decay_mask`) with global-norm clipping."""
  parts = []
  if opt_cfg.grad_clip and opt_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  parts.append(optax.adamw(lr_schedule(opt_cfg, num_steps), b1=opt_cfg.b1, b2=opt_cfg.b2,
                           eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts)


def tree_all_finite(tree) -> jax.Array:
  """bool []: every element of every leaf is finite. Jittable; one pass over the tree.

  The step reports it for the *updated* parameters, so the loop can refuse to
  checkpoint a state whose update overflowed even when loss and gradient norm
  (both computed before the update) were finite.
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack(leaves))


def abstract_train_state(model_cfg: ModelConfig, tx, mesh) -> tuple[Any, TrainState, TrainState]:
  """(graphdef, abstract TrainState with shardings, TrainState of NamedShardings)."""
  graphdef, abs_params = split_abstract(model_cfg)
  param_sh = mesh_lib.state_shardings(abs_params, mesh)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  rep = mesh_lib.replicated(mesh)
  # Optimizer leaves that mirror a parameter take its sharding; scalars (counts) replicate.
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, param_sh,
                                 transform_non_params=lambda _: rep)
  shardings = TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)
  abs_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abs_params,
                         opt_state=abs_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  abs_state = mesh_lib.with_shardings(abs_state, shardings)
  return graphdef, abs_state, shardings


def init_train_state(model_cfg: ModelConfig, tx, mesh, seed: int):
  """Initialises params and optimizer state directly in their shardings (never whole on one device).

  Returns (graphdef, state, shardings).
  """
  graphdef, _, shardings = abstract_train_state(model_cfg, tx, mesh)

  def init():
    model = Transformer(model_cfg, rngs=nnx.Rngs(params=seed))
    params = nnx.state(model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(seed).astype(jnp.uint32))

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, shardings
