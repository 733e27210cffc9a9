"""The self-improving objectives as named loss terms (see `train/losses.py`).

Given judged candidates for each prefix (original suffix, rewrite, K rollouts),
the producer in `train/sip.py` lays out the rows each recipe needs, and the
objective here turns them into terms the one train step combines:

  nll     λ_lm · NLL of the windows themselves (prefix + original suffix), per token
  dpo     online DPO: chosen = best-judged candidate, rejected = worst, against the
          frozen reference policy; per pair (Rafailov et al. 2023, eq. 7)
  rf_nll  reward-filtered NLL: NLL of the best candidate when its reward clears
          `sip.rf_threshold` (else the configured fallback); per selected token
  pg      REINFORCE with a group baseline: −Σ_rows A_r · log π(row), normalised by
          the candidate tokens of the whole batch (no length bias); one update per
          batch, so the PPO ratio is 1 and clipping would be inert. Original and
          rewrite are *off-policy* candidates: they enter with their advantage like
          rollouts (the paper's "gold completion in the group"), without an
          importance weight, which makes this a reward-weighted regression on them
  kl      optional k3 estimate of KL(π || π_ref) on the rollout tokens, per token

Row batches carry the usual packed fields under a prefix: `lm_`, `chosen_`,
`rejected_`, `best_`, `cand_` + {tokens, targets, positions, segment_ids, loss_mask}.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from earlyrl_jax.train import losses

RECIPES = ("dpo", "rf_nll", "pg")
ROW_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class Objective:
  recipe: str
  beta: float = 0.1
  lm_coef: float = 1.0
  coef: float = 1.0         # coefficient of the recipe's own term
  kl_coef: float = 0.0

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise ValueError(f"sip.recipe={self.recipe!r}: expected one of {RECIPES}")

  @property
  def needs_reference(self) -> bool:
    """DPO always compares with the reference; PG only when its KL term is on."""
    return bool(self.coef) and (self.recipe == "dpo" or (self.recipe == "pg" and self.kl_coef > 0))

  @property
  def coefs(self) -> dict[str, float]:
    c = {"nll": self.lm_coef, self.recipe: self.coef}
    if self.recipe == "pg" and self.kl_coef > 0:
      c["kl"] = self.kl_coef
    return c

  def __call__(self, model, batch, frozen):
    terms: losses.Terms = {}
    diags: losses.Terms = {}
    if self.lm_coef:
      terms.update({"nll": losses.lm_terms(model, batch, prefix="lm_")[0]["nll"]})
    if not self.coef:  # the recipe's term is off (e.g. a plain-NLL baseline): skip its passes
      return terms, diags
    if self.recipe == "dpo":
      self._dpo(model, batch, frozen["reference"], terms, diags)
    elif self.recipe == "rf_nll":
      s, n, _ = losses.sequence_logprobs(model, batch, "best_")
      w = batch["best_weight"].astype(jnp.float32)
      terms["rf_nll"] = (-jnp.sum(w * s), jnp.sum(w * n))
    else:
      s, n, logp = losses.sequence_logprobs(model, batch, "cand_")
      adv = batch["advantage"].astype(jnp.float32)
      terms["pg"] = (-jnp.sum(adv * s), jnp.sum(n))
      if "kl" in self.coefs:
        _, _, ref_logp = losses.sequence_logprobs(frozen["reference"], batch, "cand_")
        mask = batch["cand_loss_mask"] * batch["is_rollout"][:, None].astype(jnp.float32)
        terms["kl"] = (jnp.sum(losses.kl_k3(logp, ref_logp) * mask), jnp.sum(mask))
    return terms, diags

  def _dpo(self, model, batch, reference, terms, diags):
    # Chosen and rejected rows go through one forward pass: [2G, L].
    both = {f"pair_{f}": jnp.concatenate([batch[f"chosen_{f}"], batch[f"rejected_{f}"]])
            for f in ROW_FIELDS}
    pi, _, logp = losses.sequence_logprobs(model, both, "pair_")
    ref, _, ref_logp = losses.sequence_logprobs(reference, both, "pair_")
    G = batch["pair_mask"].shape[0]
    loss, r_c, r_r = losses.dpo_pair_losses(pi[:G], pi[G:], ref[:G], ref[G:], self.beta)
    m = batch["pair_mask"].astype(jnp.float32)
    pairs = jnp.sum(m)
    terms["dpo"] = (jnp.sum(loss * m), pairs)
    diags["rewards/chosen"] = (jnp.sum(r_c * m), pairs)
    diags["rewards/rejected"] = (jnp.sum(r_r * m), pairs)
    diags["rewards/margin"] = (jnp.sum((r_c - r_r) * m), pairs)
    diags["rewards/accuracy"] = (jnp.sum((r_c > r_r).astype(jnp.float32) * m), pairs)
    diags["logps/chosen"] = (jnp.sum(pi[:G] * m), pairs)
    diags["logps/rejected"] = (jnp.sum(pi[G:] * m), pairs)
    tok_mask = both["pair_loss_mask"] * jnp.concatenate([m, m])[:, None]
    diags["kl"] = (jnp.sum(losses.kl_k3(logp, ref_logp) * tok_mask), jnp.sum(tok_mask))
