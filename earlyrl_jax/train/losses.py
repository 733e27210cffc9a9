"""Losses as (sum, count) pairs so that masking and gradient accumulation are exact.

`lm_loss` is the ordinary next-token loss used by pretraining. The
self-improving losses (weighted NLL for RF-NLL / policy gradient, DPO, KL) are
built from the same `token_logprobs` primitive.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array):
  """log p(target) and logsumexp per position, both float32 [B, T]."""
  logits = logits_BxTxV.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return tgt - lse, lse


def nll_sums(logits_BxTxV, targets_BxT, mask_BxT, z_loss: float = 0.0):
  """(nll_sum, z_loss_sum, token_count) over positions with mask > 0."""
  logp, lse = token_logprobs(logits_BxTxV, targets_BxT)
  mask = mask_BxT.astype(jnp.float32)
  nll = -jnp.sum(logp * mask)
  z = z_loss * jnp.sum(jnp.square(lse) * mask) if z_loss else jnp.zeros((), jnp.float32)
  return nll, z, jnp.sum(mask)


def weighted_nll_sums(logits_BxTxV, targets_BxT, mask_BxT, weights_B):
  """Σ_b w_b · Σ_t −log π(target_bt): RF-NLL (w ∈ {0,1}) and REINFORCE (w = advantage)."""
  logp, _ = token_logprobs(logits_BxTxV, targets_BxT)
  mask = mask_BxT.astype(jnp.float32)
  per_row = -jnp.sum(logp * mask, axis=-1)
  return jnp.sum(weights_B.astype(jnp.float32) * per_row), jnp.sum(mask)


def lm_loss(model, batch, z_loss: float = 0.0):
  """Next-token loss of a packed batch. Returns (loss_sum, count, aux sums)."""
  logits = model(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  nll, z, count = nll_sums(logits, batch["targets"], batch["loss_mask"], z_loss)
  return nll + z, count, {"nll": nll, "z_loss": z}
