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
  distill optional distillation toward the teacher (train/distill.py): KL(teacher || π) per
          candidate token read (`distill_mask`), or the NLL of the teacher's rewrite in its own
          `distill` branch (sequence level); per token

Per-group weights of the PG advantages and of DPO pairs (`sip.advantage`, `sip.pair_weight`:
train/advantages.py) are data: the producer scales `advantage`, and DPO reads `pair_weight`.

One row per window, its prefix computed once (`Layout`): the prefix is the row's trunk and
every sequence a term reads is a branch after it (a tree in a row: models/transformer.py,
visible_until; `branch_ids` say which branch a token is on, for the per-branch sums):

    [ prefix[:-1] | p_last + candidate 1 | p_last + candidate 2 | ... | p_last + original ]
      trunk, id 0   branch 1              branch 2                      lm branch (last)

Each branch starts with the prefix's last token, so it predicts every candidate token from
exactly the context a row `prefix + candidate` gives it, and the trunk's predictions plus the
lm branch's are the NLL of the document. A DPO pair then costs one prefix and two candidates
instead of two whole windows; the lm branch is laid out only when λ_lm > 0, the recipe's
branches only when its coefficient is.

The reference policy's log-probs (DPO; PG with KL) need no gradient: they are computed once
per batch outside the step (`reference_logp`, over the row without its lm branch) and enter
the step as data, `ref_logp` [rows, Layout.reference_length].
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from earlyrl_jax.models import scoring
from earlyrl_jax.train import losses

RECIPES = ("dpo", "rf_nll", "pg")
ROW_FIELDS = ("tokens", "targets", "positions", "segment_ids", "visible_until", "branch_ids", "loss_mask")
MODEL_FIELDS = ROW_FIELDS[:5]    # what a forward pass reads (the reference pass)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Slots of one window row: trunk [P-1], then each named branch [N+1], then the lm branch."""
  prefix_len: int              # P: the longest prefix
  cand_len: int                # N: the longest candidate
  names: tuple[str, ...]       # the recipe's branches in order: branch ids 1, 2, ...
  lm_len: int = 0              # tokens of the original suffix in the lm branch (0: no lm branch)

  @property
  def trunk(self) -> int:
    return self.prefix_len - 1

  @property
  def width(self) -> int:
    return self.cand_len + 1

  @property
  def lm_id(self) -> int:
    return len(self.names) + 1

  @property
  def num_ids(self) -> int:
    """Branch ids in use, the trunk's 0 included."""
    return 1 + len(self.names) + int(self.lm_len > 0)

  @property
  def reference_length(self) -> int:
    """The row up to the lm branch: what a reference pass reads."""
    return self.trunk + len(self.names) * self.width

  @property
  def length(self) -> int:
    return self.reference_length + (self.lm_len + 1 if self.lm_len else 0)


def window_rows(layout: Layout, prefixes: Sequence[np.ndarray], branches: Sequence[Sequence[np.ndarray]],
                originals: Sequence[np.ndarray] | None, pad_id: int, *,
                lm_prefix: bool = True) -> dict[str, np.ndarray]:
  """One row per window in `layout` (see the module docstring): ROW_FIELDS, each [G, L].

  branches[g]: the window's candidates, one per `layout.names`; originals[g]: its original
  suffix (the lm branch; with the document's end cut where a row `prefix + candidate` of
  P + N tokens would cut it). loss_mask marks the predictions a term reads: every candidate
  token, and with an lm branch every token of the document after its first (lm_prefix=False:
  only the lm branch's, the suffix given its prefix; `originals` may then hold any sequence the
  LM term trains on, e.g. the teacher's rewrite).
  """
  G, L = len(prefixes), layout.length
  out = {"tokens": np.full((G, L), pad_id, np.int32), "targets": np.full((G, L), pad_id, np.int32),
         "positions": np.zeros((G, L), np.int32), "segment_ids": np.zeros((G, L), np.int32),
         "visible_until": np.full((G, L), L, np.int32), "branch_ids": np.zeros((G, L), np.int32),
         "loss_mask": np.zeros((G, L), np.float32)}
  lm = layout.lm_len > 0

  def put(g, start, branch, ids, first_pos, last_target=None):
    n = len(ids)
    sl = slice(start, start + n)
    out["tokens"][g, sl] = ids
    out["targets"][g, start:start + n - 1] = ids[1:]
    if last_target is not None:
      out["targets"][g, start + n - 1] = last_target
    out["positions"][g, sl] = first_pos + np.arange(n)
    out["segment_ids"][g, sl] = 1
    out["branch_ids"][g, sl] = branch
    if branch:   # a branch's tokens are hidden from everything after it (its siblings)
      out["visible_until"][g, sl] = start + n

  for g, p in enumerate(prefixes):
    p = np.asarray(p, np.int32)
    m = len(p)
    if not 1 <= m <= layout.prefix_len:
      raise ValueError(f"window {g}: prefix of {m} tokens, expected 1..{layout.prefix_len}")
    if len(branches[g]) != len(layout.names):
      raise ValueError(f"window {g}: {len(branches[g])} candidates for branches {layout.names}")
    if m > 1:   # the trunk: prefix[:-1], each token predicting the next prefix token
      put(g, 0, 0, p[:-1], 0, last_target=p[-1])
      if lm and lm_prefix:
        out["loss_mask"][g, :m - 1] = 1.0
    for b, c in enumerate(branches[g]):
      c = np.asarray(c, np.int32)
      if len(c) > layout.cand_len:
        raise ValueError(f"window {g}: candidate of {len(c)} tokens, longer than {layout.cand_len}")
      start = layout.trunk + b * layout.width
      put(g, start, b + 1, np.concatenate([p[-1:], c]), m - 1)
      out["loss_mask"][g, start:start + len(c)] = 1.0
    if lm:
      o = np.asarray(originals[g], np.int32)[:max(0, min(layout.lm_len, layout.prefix_len + layout.cand_len - m))]
      start = layout.reference_length
      put(g, start, layout.lm_id, np.concatenate([p[-1:], o]), m - 1)
      out["loss_mask"][g, start:start + len(o)] = 1.0
  return out


def branch_sums(values_BxT, batch, num_ids: int):
  """Σ over each branch's loss-masked tokens: (sums [B, num_ids], token counts [B, num_ids]).
  `values_BxT` may cover a leading part of the row (the reference's columns)."""
  T = values_BxT.shape[1]
  onehot = jax.nn.one_hot(batch["branch_ids"][:, :T], num_ids, dtype=jnp.float32)   # [B, T, ids]
  mask = batch["loss_mask"][:, :T].astype(jnp.float32)
  return (jnp.einsum("bt,btn->bn", values_BxT * mask, onehot),
          jnp.einsum("bt,btn->bn", mask, onehot))


@dataclasses.dataclass(frozen=True)
class Objective:
  recipe: str
  beta: float = 0.1
  lm_coef: float = 1.0
  coef: float = 1.0         # coefficient of the recipe's own term
  kl_coef: float = 0.0
  pair_weighted: bool = False   # dpo: each pair's loss times `pair_weight` [B] (sip.pair_weight)
  distill_coef: float = 0.0     # the `distill` term (0: nothing built)
  distill_level: str = "token"  # 'token' (teacher top-k log-probs as data) | 'sequence' (rewrite NLL)

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise ValueError(f"sip.recipe={self.recipe!r}: expected one of {RECIPES}")
    if self.distill_level not in ("token", "sequence"):
      raise ValueError(f"sip.distill_level={self.distill_level!r}: expected 'token' or 'sequence'")

  @property
  def distill_branch(self) -> bool:
    """Sequence-level distillation lays the teacher's rewrite out as a branch of its own."""
    return bool(self.distill_coef) and self.distill_level == "sequence"

  @property
  def needs_teacher_logp(self) -> bool:
    return bool(self.distill_coef) and self.distill_level == "token"

  @property
  def needs_reference(self) -> bool:
    """DPO always compares with the reference; PG only when its KL term is on."""
    return bool(self.coef) and (self.recipe == "dpo" or (self.recipe == "pg" and self.kl_coef > 0))

  @property
  def coefs(self) -> dict[str, float]:
    c = {"nll": self.lm_coef, self.recipe: self.coef}
    if self.recipe == "pg" and self.kl_coef > 0:
      c["kl"] = self.kl_coef
    if self.distill_coef:
      c["distill"] = self.distill_coef
    return c

  def branch_names(self, num_candidates: int) -> tuple[str, ...]:
    """The recipe's branches of a window row (none when its term is off), then the teacher's
    rewrite for sequence-level distillation."""
    return self._recipe_branches(num_candidates) + (("distill",) if self.distill_branch else ())

  def _recipe_branches(self, num_candidates: int) -> tuple[str, ...]:
    if not self.coef:
      return ()
    if self.recipe == "dpo":
      return ("chosen", "rejected")
    if self.recipe == "rf_nll":
      return ("best",)
    return tuple(f"cand{i}" for i in range(num_candidates))

  def layout(self, *, prefix_len: int, cand_len: int, suffix_len: int, num_candidates: int) -> Layout:
    return Layout(int(prefix_len), int(cand_len), self.branch_names(num_candidates),
                  int(suffix_len) if self.lm_coef else 0)

  def _num_ids(self, batch) -> int:
    names = len(self.branch_names(batch["advantage"].shape[1] if self.recipe == "pg" and self.coef else 0))
    return 1 + names + int(bool(self.lm_coef))

  # ----------------------------------------------------------------- frozen pass
  def reference_logp(self, reference, batch, length: int):
    """Per-token log π_ref [B, length] of the row's first `length` columns (no lm branch);
    outside the gradient, once per batch: the step reads it as `ref_logp`."""
    cut = {k: batch[k][:, :length] for k in MODEL_FIELDS}
    logp, _ = scoring.token_logprobs(reference, cut["tokens"], cut["targets"], positions=cut["positions"],
                                     segment_ids=cut["segment_ids"], visible_until=cut["visible_until"])
    return logp

  # ----------------------------------------------------------------- the terms
  def __call__(self, model, batch, frozen=None):
    del frozen  # the reference enters as data (ref_logp)
    terms: losses.Terms = {}
    diags: losses.Terms = {}
    n_ids = self._num_ids(batch)
    h, _ = model.hidden_states(batch["tokens"], positions=batch["positions"],
                               segment_ids=batch["segment_ids"], visible_until=batch["visible_until"])
    logp, _ = scoring.logprobs_from_hidden(model, h, batch["targets"])   # = scoring.token_logprobs
    s, n = branch_sums(logp, batch, n_ids)    # [B, ids]: log π and tokens of each branch
    if self.lm_coef:   # the document: the trunk's predictions and the lm branch's (the last id)
      terms["nll"] = (-jnp.sum(s[:, 0] + s[:, -1]), jnp.sum(n[:, 0] + n[:, -1]))
    if self.distill_coef:
      mask = batch["distill_mask"].astype(jnp.float32)                 # [B, L]
      if self.needs_teacher_logp:   # KL(teacher || π) at the teacher's columns (no lm branch)
        from earlyrl_jax.train.distill import token_kl
        kl = token_kl(model, h, batch["teacher_logp"], batch["teacher_ids"])
        T = kl.shape[1]
        terms["distill"] = (jnp.sum(kl * mask[:, :T]), jnp.sum(mask[:, :T]))
      else:                         # the NLL of the teacher's rewrite (its own branch)
        terms["distill"] = (-jnp.sum(logp * mask), jnp.sum(mask))
    if not self.coef:  # the recipe's term is off (e.g. a plain-NLL baseline): nothing laid out
      return terms, diags
    if self.recipe == "dpo":
      self._dpo(logp, s, batch, n_ids, terms, diags)
    elif self.recipe == "rf_nll":
      w = batch["best_weight"].astype(jnp.float32)
      terms["rf_nll"] = (-jnp.sum(w * s[:, 1]), jnp.sum(w * n[:, 1]))
    else:
      C = batch["advantage"].shape[1]
      adv = batch["advantage"].astype(jnp.float32)
      terms["pg"] = (-jnp.sum(adv * s[:, 1:1 + C]), jnp.sum(n[:, 1:1 + C]))
      if "kl" in self.coefs:
        ref = batch["ref_logp"].astype(jnp.float32)
        T = ref.shape[1]
        onehot = jax.nn.one_hot(batch["branch_ids"][:, :T], n_ids, dtype=jnp.float32)[:, :, 1:1 + C]
        rollout_tok = jnp.einsum("btc,bc->bt", onehot, batch["is_rollout"].astype(jnp.float32))
        mask = batch["loss_mask"][:, :T].astype(jnp.float32) * rollout_tok
        terms["kl"] = (jnp.sum(losses.kl_k3(logp[:, :T], ref) * mask), jnp.sum(mask))
    return terms, diags

  def _dpo(self, logp, s, batch, n_ids, terms, diags):
    ref_logp = batch["ref_logp"].astype(jnp.float32)
    ref, _ = branch_sums(ref_logp, batch, n_ids)
    pi_c, pi_r = s[:, 1], s[:, 2]
    loss, r_c, r_r = losses.dpo_pair_losses(pi_c, pi_r, ref[:, 1], ref[:, 2], self.beta)
    m = batch["pair_mask"].astype(jnp.float32)
    pairs = jnp.sum(m)
    weight = batch["pair_weight"].astype(jnp.float32) * m if self.pair_weighted else m
    terms["dpo"] = (jnp.sum(loss * weight), pairs)
    diags["rewards/chosen"] = (jnp.sum(r_c * m), pairs)
    diags["rewards/rejected"] = (jnp.sum(r_r * m), pairs)
    diags["rewards/margin"] = (jnp.sum((r_c - r_r) * m), pairs)
    diags["rewards/accuracy"] = (jnp.sum((r_c > r_r).astype(jnp.float32) * m), pairs)
    diags["logps/chosen"] = (jnp.sum(pi_c * m), pairs)
    diags["logps/rejected"] = (jnp.sum(pi_r * m), pairs)
    T = ref_logp.shape[1]
    branch = batch["branch_ids"][:, :T]
    tok_mask = (batch["loss_mask"][:, :T].astype(jnp.float32) * m[:, None]
                * ((branch == 1) | (branch == 2)).astype(jnp.float32))
    diags["kl"] = (jnp.sum(losses.kl_k3(logp[:, :T], ref_logp) * tok_mask), jnp.sum(tok_mask))
