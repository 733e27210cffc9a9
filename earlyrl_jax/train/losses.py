"""Loss terms as named (sum, denominator) pairs, combined once by the step.

Every loss function has the signature

    loss_fn(model, batch, frozen) -> (terms, diagnostics)

where `terms` and `diagnostics` map a name to a `(sum, denominator)` pair of
float32 scalars and `frozen` maps a name ("reference", ...) to a frozen model.
The step adds sums and denominators over micro-batches and devices, then forms
`loss = Σ coef_i · sum_i / denom_i`. Each term keeps its own denominator (NLL per
token, DPO per pair, policy gradient per candidate token), so masking and
gradient accumulation stay exact when terms are mixed. Denominators must depend
on the batch only (masks and counts), never on parameters. Diagnostics are
reported the same way and never enter the loss.

The self-improving objectives (online DPO, RF-NLL, policy gradient, KL) live in
`train/objectives.py` and are built from the primitives here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from earlyrl_jax.models import scoring

Pair = tuple[jax.Array, jax.Array]
Terms = dict[str, Pair]


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array):
  """log p(target) and logsumexp per position, both float32 [B, T], from full logits."""
  logits = logits_BxTxV.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return tgt - lse, lse


def model_token_logprobs(model, tokens_BxT, targets_BxT, *, positions=None, segment_ids=None):
  """(log p(target) [B, T], logsumexp [B, T]) of `model`, without a full [B, T, V] buffer
  (the scorer computes logits one sequence chunk at a time)."""
  return scoring.token_logprobs(model, tokens_BxT, targets_BxT, positions=positions,
                                segment_ids=segment_ids)


def sequence_logprobs(model, batch, prefix: str = ""):
  """(Σ_t log π(target_t) over loss_mask [R], token count [R], per-token log π [R, T]).

  Reads `{prefix}tokens`, `{prefix}targets`, `{prefix}positions`,
  `{prefix}segment_ids`, `{prefix}loss_mask` from the batch.
  """
  logp, _ = model_token_logprobs(model, batch[prefix + "tokens"], batch[prefix + "targets"],
                                 positions=batch[prefix + "positions"],
                                 segment_ids=batch[prefix + "segment_ids"])
  mask = batch[prefix + "loss_mask"].astype(jnp.float32)
  return jnp.sum(logp * mask, axis=-1), jnp.sum(mask, axis=-1), logp


def lm_terms(model, batch, frozen=None, *, prefix: str = "") -> tuple[Terms, Terms]:
  """Next-token loss of a packed batch: {'nll': (Σ −log p, tokens), 'z_loss': (Σ lse², tokens)}.

  With `alt_targets` / `alt_mask` in the batch a position may carry a second target: the
  soft label w·q on `targets` and w·(1−q) on `alt_targets` is cross-entropy against (q, 1−q)
  with weight w (the embedded teacher's scored verdicts learn the oracles' graded scores).

  The z-loss coefficient is the step's `coefs['z_loss']` (omit it or set 0 to turn it off).
  """
  del frozen
  logits = model(batch[prefix + "tokens"], positions=batch[prefix + "positions"],
                 segment_ids=batch[prefix + "segment_ids"])
  logp, lse = token_logprobs(logits, batch[prefix + "targets"])
  mask = batch[prefix + "loss_mask"].astype(jnp.float32)
  nll = -jnp.sum(logp * mask)
  if prefix + "alt_targets" in batch:   # soft labels: a second target per position, its own weight
    alt = jnp.take_along_axis(logits.astype(jnp.float32),
                              batch[prefix + "alt_targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    alt_mask = batch[prefix + "alt_mask"].astype(jnp.float32)
    nll = nll - jnp.sum((alt - lse) * alt_mask)
    mask = mask + alt_mask
  tokens = jnp.sum(mask)
  return {"nll": (nll, tokens), "z_loss": (jnp.sum(jnp.square(lse) * mask), tokens)}, {}


def dpo_pair_losses(pi_chosen_R, pi_rejected_R, ref_chosen_R, ref_rejected_R, beta: float):
  """Per-pair DPO loss −log σ(β[(π_c − ref_c) − (π_r − ref_r)]) and the implicit rewards.

  Rafailov et al. (2023), eq. 7. Returns (loss [R], reward_chosen [R], reward_rejected [R]),
  with reward = β (log π − log π_ref) as TRL reports it.
  """
  r_c = beta * (pi_chosen_R - ref_chosen_R)
  r_r = beta * (pi_rejected_R - ref_rejected_R)
  return -jax.nn.log_sigmoid(r_c - r_r), r_c, r_r


def kl_k3(logp_BxT, ref_logp_BxT):
  """Per-token KL(π || π_ref) estimate on samples from π (Schulman's k3: unbiased, >= 0)."""
  d = ref_logp_BxT - logp_BxT
  return jnp.exp(d) - d - 1.0
