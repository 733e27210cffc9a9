"""Per-group weights of the policy-gradient advantages and of DPO pairs (`sip.advantage`,
`sip.pair_weight`): our geometry-aware, calibrated version of GCPO and a token-entropy baseline.

GCPO ("Why Semantic Entropy Fails", arXiv 2605.21801) names the parts, not the equations:
semantic disagreement among a group's responses measured in an embedding space (a Cosine
Dispersion and a Barycentric Transport measure), calibrated by the Reward Dispersion within the
group, jointly modulating a GRPO-style update per group. The equations below are ours
(docs/policy_extensions.md says what is ours and what is the paper's):

  e_gc      the mean of the policy's unit-normed final hidden states at candidate c's tokens
            (the states that have read them), unit-normed again                      [G, C, D]
  D_cos(g)  = (1/C') Σ_c (1 − cos(e_gc, m_g)),  m_g = Σ_c e_gc / ||Σ_c e_gc||  (valid c only)
  D_tr(g)   = (1/C') Σ_c S_ε(X_gc, B_g): the debiased Sinkhorn divergence between candidate c's
              cloud of unit token states X_gc and the group's barycentre B_g (the mixture of the
              C' clouds, each of mass 1/C'), cost 1 − cos
  σ_r(g)    = std_c r_gc, the judge's reward spread in the group
  w_g       = min(cap, v_g / mean_b v_b),  v_g = (D(g) · σ_r(g))^λ          (gcpo)
            = min(cap, v_g / mean_b v_b),  v_g = H(g)^λ                      (token_entropy)

H(g) is the policy's mean predictive entropy over the group's candidate tokens. λ
(`sip.gcpo_strength`) = 0 gives w = 1 (plain GRPO); the batch normalisation keeps the mean
weight at 1 so the step size stays comparable with the plain run. A group without reward spread
gets w = 0 under gcpo (its GRPO advantages are 0 anyway). A candidate without tokens has no
embedding and is left out of its group's dispersion (C' counts the rest; D = 0 below two).

Pure numpy on host arrays: the embeddings come from one policy pass per batch (sip.py).
"""
from __future__ import annotations

import numpy as np

ADVANTAGES = ("group", "token_entropy", "gcpo")
PAIR_WEIGHTS = ("none", "token_entropy", "gcpo")
DISPERSIONS = ("cosine", "transport")
_EPS = 1e-8


def unit(x: np.ndarray) -> np.ndarray:
  """Rows of x [..., D] scaled to norm 1 (a zero row stays zero)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def cosine_dispersion(emb_GxCxD: np.ndarray, valid_GxC: np.ndarray | None = None) -> np.ndarray:
  """D_cos [G] in [0, 1]: mean cosine distance of each valid candidate to the group's mean
  direction. Identical embeddings -> 0; C orthonormal ones -> 1 − 1/sqrt(C)."""
  e = unit(emb_GxCxD)                                                # [G, C, D]
  G, C, _ = e.shape
  v = np.ones((G, C), bool) if valid_GxC is None else np.asarray(valid_GxC, bool)
  m = unit(np.einsum("gc,gcd->gd", v.astype(np.float64), e))         # [G, D]
  dist = 1.0 - np.einsum("gcd,gd->gc", e, m)                         # [G, C]
  n = v.sum(axis=1)
  out = np.where(v, dist, 0.0).sum(axis=1) / np.maximum(n, 1)
  return np.where(n >= 2, np.maximum(out, 0.0), 0.0)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def sinkhorn_cost(x_NxD, a_N, y_MxD, b_M, eps: float = 0.05, iters: int = 100) -> float:
  """Entropic OT cost <P, C> between weighted clouds (cost 1 − cos), log-domain Sinkhorn."""
  cost = 1.0 - unit(x_NxD) @ unit(y_MxD).T                           # [N, M]
  la, lb = np.log(a_N), np.log(b_M)
  f, g = np.zeros(len(a_N)), np.zeros(len(b_M))
  for _ in range(iters):
    f = -eps * _logsumexp((g[None, :] - cost) / eps + lb[None, :], axis=1)
    g = -eps * _logsumexp((f[:, None] - cost) / eps + la[:, None], axis=0)
  logp = (f[:, None] + g[None, :] - cost) / eps + la[:, None] + lb[None, :]
  return float(np.sum(np.exp(logp) * cost))


def sinkhorn_divergence(x, a, y, b, eps: float = 0.05) -> float:
  """Debiased: S(μ, ν) = OT(μ, ν) − ½ OT(μ, μ) − ½ OT(ν, ν); 0 when μ = ν (>= 0 up to round-off)."""
  return max(sinkhorn_cost(x, a, y, b, eps) - 0.5 * sinkhorn_cost(x, a, x, a, eps)
             - 0.5 * sinkhorn_cost(y, b, y, b, eps), 0.0)


def transport_dispersion(clouds: list[list[np.ndarray]], eps: float = 0.05) -> np.ndarray:
  """D_tr [G]: clouds[g][c] holds candidate c's token states [n_c, D] (n_c may be 0: left out).
  Mean Sinkhorn divergence of each candidate's cloud to the group's barycentre (the mixture of
  the clouds, each candidate of mass 1/C')."""
  out = np.zeros(len(clouds))
  for g, group in enumerate(clouds):
    xs = [np.asarray(x, np.float64) for x in group if len(x)]
    if len(xs) < 2:
      continue
    bary = np.concatenate(xs)
    b = np.concatenate([np.full(len(x), 1.0 / (len(xs) * len(x))) for x in xs])
    out[g] = np.mean([sinkhorn_divergence(x, np.full(len(x), 1.0 / len(x)), bary, b, eps) for x in xs])
  return out


def reward_dispersion(rewards_GxC: np.ndarray) -> np.ndarray:
  """σ_r [G]: the spread of the judge's rewards within each group."""
  r = np.asarray(rewards_GxC, np.float64)          # NaN: a padding slot of a ragged group
  spread = np.nanmax(r, axis=-1) - np.nanmin(r, axis=-1)
  return np.where(spread > 0, np.nanstd(r, axis=-1), 0.0)   # all equal: exactly 0


def batch_weights(values_G: np.ndarray, strength: float, cap: float) -> np.ndarray:
  """w [G] = min(cap, v^λ / mean v^λ): mean 1 before the cap; all ones at λ = 0 or when every
  value is 0 (nothing to tell the groups apart)."""
  v = np.maximum(np.asarray(values_G, np.float64), 0.0)
  if strength == 0:
    return np.ones(v.shape, np.float32)
  v = v ** strength
  mean = v.mean()
  if not np.isfinite(mean) or mean <= 0:
    return np.ones(v.shape, np.float32)
  return np.minimum(v / mean, cap).astype(np.float32)


def gcpo_weights(dispersion_G, rewards_GxC, strength: float = 1.0, cap: float = 4.0) -> np.ndarray:
  """w [G] from semantic dispersion calibrated by reward dispersion (module docstring)."""
  return batch_weights(np.asarray(dispersion_G, np.float64) * reward_dispersion(rewards_GxC), strength, cap)


def entropy_weights(entropy_G, strength: float = 1.0, cap: float = 4.0) -> np.ndarray:
  """w [G] from the policy's mean token entropy over each group's candidates (the baseline)."""
  return batch_weights(entropy_G, strength, cap)


# --------------------------------------------------------------------------- from a policy pass


def candidate_token_mask(loss_mask_GxL: np.ndarray, branch_ids_GxL: np.ndarray) -> np.ndarray:
  """bool [G, L]: the slots holding candidate tokens (a branch's loss-masked slots predict its
  tokens, so its tokens sit one slot later: the branch's first slot, the prefix's last token,
  is not the candidate's)."""
  lm = np.asarray(loss_mask_GxL) > 0
  br = np.asarray(branch_ids_GxL)
  out = np.zeros(lm.shape, bool)
  out[:, 1:] = lm[:, :-1] & (br[:, 1:] == br[:, :-1]) & (br[:, 1:] > 0)
  return out


def group_signals(hidden_GxLxD, entropy_GxL, rows: dict, num_candidates: int, *, dispersion: str,
                  eps: float = 0.05) -> dict[str, np.ndarray]:
  """Per group, from a policy pass over rows with one branch per candidate (ids 1..C):
  'dispersion' [G] (cosine or transport), 'entropy' [G] (mean predictive entropy over the
  candidates' loss-masked predictions), 'tokens' [G, C]."""
  if dispersion not in DISPERSIONS:
    raise ValueError(f"sip.gcpo_dispersion={dispersion!r}: expected one of {DISPERSIONS}")
  h = np.asarray(hidden_GxLxD, np.float64)
  br = np.asarray(rows["branch_ids"])
  tok = candidate_token_mask(rows["loss_mask"], br)                  # [G, L]
  pred = (np.asarray(rows["loss_mask"]) > 0) & (br > 0)              # predictions of candidate tokens
  ent = np.asarray(entropy_GxL, np.float64)
  G, C = h.shape[0], num_candidates
  onehot = np.stack([tok & (br == c + 1) for c in range(C)], axis=1)  # [G, C, L]
  counts = onehot.sum(axis=-1)                                        # [G, C]
  if dispersion == "cosine":
    emb = np.einsum("gcl,gld->gcd", onehot, unit(h)) / np.maximum(counts, 1)[..., None]
    disp = cosine_dispersion(emb, counts > 0)
  else:
    disp = transport_dispersion([[unit(h[g, onehot[g, c]]) for c in range(C)] for g in range(G)], eps)
  entropy = np.where(pred, ent, 0.0).sum(1) / np.maximum(pred.sum(1), 1)
  return {"dispersion": disp, "entropy": entropy, "tokens": counts}


def policy_pass(model, batch):
  """(final hidden states [G, L, D], predictive entropy [G, L]) of `model` over window rows;
  the entropy is computed one sequence chunk at a time (no [G, L, V] buffer)."""
  import jax
  import jax.numpy as jnp
  from earlyrl_jax.models import scoring

  h, _ = model.hidden_states(batch["tokens"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"], visible_until=batch["visible_until"])

  def entropy(h_BxCxD, _targets):
    logits = model.logits_from_hidden(h_BxCxD).astype(jnp.float32)   # [B, c, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

  return h.astype(jnp.float32), scoring._map_chunks(entropy, h, batch["targets"], None)
