"""The jit-compiled train and eval steps, with explicit in/out shardings.

A step takes a TrainState and a batch sharded over ('data', 'fsdp'). Gradient
accumulation runs inside the step as a `lax.scan` over micro-batches whose rows
are strided across the batch (so each micro-batch still spans every device);
gradients of loss *sums* are added and divided once by the total token count,
which makes accumulation exact.

`loss_fn(model, batch) -> (loss_sum, count, aux_sums)` is pluggable: pretraining
uses `losses.lm_loss`; self-improving training mixes in its policy losses.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import losses
from earlyrl_jax.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


def batch_shardings(mesh, batch_spec: dict[str, tuple[int, ...]]):
  """NamedSharding per batch field: leading axis over the data-parallel axes."""
  return {k: mesh_lib.named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1))
          for k, shape in batch_spec.items()}


def _microbatches(batch, n: int):
  """[B, ...] -> [n, B/n, ...] taking rows i, i+n, i+2n, ... for micro-batch i."""
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return mesh_lib.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule, mesh, state_shardings,
                    batch_spec: dict[str, tuple[int, ...]], *, grad_accum_steps: int = 1,
                    loss_fn: LossFn | None = None, z_loss: float = 0.0):
  """Returns a jitted `step(state, batch) -> (state, metrics)` (state is donated)."""
  loss_fn = loss_fn or functools.partial(losses.lm_loss, z_loss=z_loss)

  def sums(params, batch):
    model = nnx.merge(graphdef, params)
    total, count, aux = loss_fn(model, batch)
    return total, (count, aux)

  grad_fn = jax.grad(sums, has_aux=True)

  def step(state: TrainState, batch):
    if grad_accum_steps == 1:
      grads, (count, aux) = grad_fn(state.params, batch)
    else:
      def body(carry, mb):
        g_acc, c_acc, a_acc = carry
        g, (c, a) = grad_fn(state.params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), c_acc + c, jax.tree.map(jnp.add, a_acc, a)), None
      zeros_g = jax.tree.map(jnp.zeros_like, state.params)
      first = _microbatches(batch, grad_accum_steps)
      _, (c0, a0) = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], first))
      zeros_a = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), a0)
      (grads, count, aux), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_a), first)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: v / denom for k, v in aux.items()}
    metrics["loss"] = sum(aux.values()) / denom
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["learning_rate"] = schedule(state.step)
    metrics["tokens"] = count
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh, batch_spec)),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def make_eval_step(graphdef, mesh, param_shardings, batch_spec, *, loss_fn: LossFn | None = None):
  """Jitted `eval_step(params, batch) -> (loss_sum, count)`."""
  loss_fn = loss_fn or losses.lm_loss

  def step(params, batch):
    total, count, aux = loss_fn(nnx.merge(graphdef, params), batch)
    return aux.get("nll", total), count

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(param_shardings, batch_shardings(mesh, batch_spec)),
                 out_shardings=(rep, rep))
