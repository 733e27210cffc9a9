"""The jit-compiled train and eval steps, with explicit in/out shardings.

One step serves every job. A loss function returns named `(sum, denominator)`
terms (see `train/losses.py`); the step combines them once:

    loss = Σ_i coefs[i] · sum_i / denom_i

with sums and denominators taken over the whole global batch. Gradient
accumulation runs inside the step as a `lax.scan` over micro-batches whose rows
are strided across the batch (so each micro-batch still spans every device).
Because denominators depend on the batch only, they are computed for the whole
batch first (XLA drops the model computation of that pass as dead code) and
every micro-batch's gradient is already scaled by the global denominators:
accumulation is exact for any mix of terms and ragged masks.

Frozen parameter trees (a reference policy for DPO or KL) are a separate,
non-differentiated argument `frozen_params` with their own shardings; a loss
function that does not need one never runs its forward pass. A frozen model's
per-row outputs that do not change during the step (the SIP reference's log-probs)
are better computed once per batch outside it (`make_frozen_pass`) and passed in
as batch fields: inside the step they would be recomputed per micro-batch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import losses
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train.state import TrainState

LossFn = Callable[..., tuple[losses.Terms, losses.Terms]]


def spec_of(batch: Mapping[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
  """Global batch spec (shapes and dtypes) taken from an example batch."""
  return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in batch.items()}


def batch_shardings(mesh, batch_spec: Mapping[str, jax.ShapeDtypeStruct]):
  """NamedSharding per batch field: leading axis over the data-parallel axes."""
  return {k: mesh_lib.named_sharding(mesh, ("batch",) + (None,) * (len(s.shape) - 1))
          for k, s in batch_spec.items()}


def _microbatches(batch, n: int):
  """[B, ...] -> [n, B/n, ...] taking rows i, i+n, i+2n, ... for micro-batch i."""
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return mesh_lib.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def _safe(d):
  """A denominator of 0 means the term had nothing to average (its sum is 0 too)."""
  return jnp.where(d > 0, d, 1.0)


def combine(terms: losses.Terms, coefs: Mapping[str, float], denoms=None):
  """Σ coef · sum / denom over the terms (denoms defaults to each term's own)."""
  unknown = sorted(set(terms) - set(coefs))
  if unknown:
    raise KeyError(f"loss terms {unknown} have no coefficient (coefs: {sorted(coefs)})")
  total = jnp.zeros((), jnp.float32)
  for name, (s, d) in terms.items():
    if coefs[name]:
      total = total + coefs[name] * s / _safe(d if denoms is None else denoms[name])
  return total


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule, mesh, state_shardings,
                    batch_spec: Mapping[str, jax.ShapeDtypeStruct], *,
                    loss_fn: LossFn = losses.lm_terms, coefs: Mapping[str, float] | None = None,
                    frozen_graphdefs: Mapping[str, object] | None = None,
                    frozen_shardings: Mapping[str, object] | None = None,
                    grad_accum_steps: int = 1):
  """Returns a jitted `step(state, batch, frozen_params) -> (state, metrics)`; state is donated.

  metrics: 'loss'; every term and diagnostic as sum / denominator (and
  '<term>/count' with its global denominator); 'grad_norm', 'param_norm',
  'params_finite' (1.0 iff the updated params are all finite), 'learning_rate', 'tokens'
  (the denominator of the 'nll' term when there is one).
  """
  coefs = dict(coefs if coefs is not None else {"nll": 1.0, "z_loss": 0.0})
  frozen_graphdefs = dict(frozen_graphdefs or {})
  frozen_shardings = dict(frozen_shardings or {})
  if set(frozen_graphdefs) != set(frozen_shardings):
    raise ValueError(f"frozen trees {sorted(frozen_graphdefs)} and their shardings "
                     f"{sorted(frozen_shardings)} must name the same models")

  def terms_of(params, batch, frozen_params):
    model = nnx.merge(graphdef, params)
    frozen = {k: nnx.merge(frozen_graphdefs[k], jax.lax.stop_gradient(v))
              for k, v in frozen_params.items()}
    return loss_fn(model, batch, frozen)

  def scaled_loss(params, batch, frozen_params, denoms):
    terms, diags = terms_of(params, batch, frozen_params)
    sums = ({k: s for k, (s, _) in terms.items()}, {k: s for k, (s, _) in diags.items()})
    return combine(terms, coefs, denoms), sums

  grad_fn = jax.grad(scaled_loss, has_aux=True)

  def step(state: TrainState, batch, frozen_params):
    # Global denominators first: they depend on the batch only, so XLA drops the
    # model computation of this call; only the masks' reductions remain.
    terms, diags = terms_of(state.params, batch, frozen_params)
    denoms = {k: d for k, (_, d) in terms.items()}
    diag_denoms = {k: d for k, (_, d) in diags.items()}
    if grad_accum_steps == 1:
      grads, (sums, diag_sums) = grad_fn(state.params, batch, frozen_params, denoms)
    else:
      mbs = _microbatches(batch, grad_accum_steps)

      def body(carry, mb):
        g_acc, s_acc = carry
        g, s = grad_fn(state.params, mb, frozen_params, denoms)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

      zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
      init = (zeros(state.params), (zeros(denoms), zeros(diag_denoms)))
      (grads, (sums, diag_sums)), _ = jax.lax.scan(body, init, mbs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {}
    for k in sums:
      metrics[k] = sums[k] / _safe(denoms[k])
      metrics[f"{k}/count"] = denoms[k]
    for k in diag_sums:
      metrics[k] = diag_sums[k] / _safe(diag_denoms[k])
    metrics["loss"] = combine({k: (sums[k], denoms[k]) for k in sums}, coefs)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["params_finite"] = state_lib.tree_all_finite(params).astype(jnp.float32)
    metrics["learning_rate"] = schedule(state.step)
    # Tokens trained on: the LM term's count, else the first term's (candidate tokens).
    metrics["tokens"] = denoms["nll"] if "nll" in denoms else next(iter(denoms.values()))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh, batch_spec),
                                     frozen_shardings),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def make_eval_step(graphdef, mesh, param_shardings, batch_spec, *, loss_fn: LossFn = losses.lm_terms,
                   term: str = "nll"):
  """Jitted `eval_step(params, batch) -> (sum, denominator)` of one term (held-out NLL)."""

  def step(params, batch):
    terms, _ = loss_fn(nnx.merge(graphdef, params), batch, {})
    return terms[term]

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(param_shardings, batch_shardings(mesh, batch_spec)),
                 out_shardings=(rep, rep))


def make_frozen_pass(graphdef, param_shardings, mesh, batch_spec: Mapping[str, jax.ShapeDtypeStruct],
                     fn: Callable[..., jax.Array]):
  """Jitted `pass(frozen_params, batch) -> [rows, ...]` of `fn(model, batch)`, no gradient.

  The frozen params keep their own shardings; the batch fields `batch_spec` names are
  sharded over the batch axis, and so is the result (row-aligned with the batch).
  """
  def run(params, batch):
    return fn(nnx.merge(graphdef, jax.lax.stop_gradient(params)), batch)

  rows = mesh_lib.named_sharding(mesh, ("batch", None))
  return jax.jit(run, in_shardings=(param_shardings, batch_shardings(mesh, batch_spec)),
                 out_shardings=rows)
