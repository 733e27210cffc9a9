"""Tournaments: per-candidate rewards from a judge's pairwise and pointwise verdicts.

Why a module of its own: a tournament is a function of any `Judge` (LM, oracle, fake), not part of
a backend, and judging is SIP's main cost, so the schemes that decide what to ask live here.

Schemes (per prefix, C candidates: [0] original suffix, [1] rewrite, then the rollouts):
- `all_pairs`: every unordered pair, C(C-1)/2 comparisons (the paper's default).
- `pivot`: every candidate against `candidates[g][pivot_index]`, C-1 comparisons (the paper's
  cheaper ablation). With `win_rate` the pivot's own reward is its mean win rate against all.
- `adaptive` (issue 19): online DPO needs only the best and the worst candidate. A knockout
  max/min tournament (pair up, winners play on for the max, losers for the min: about 3C/2
  comparisons) then refinement rounds: Bradley–Terry strengths fitted on what was compared
  impute the pairs not asked; each candidate's estimated reward gets a variance (the judge's
  scatter around the fit, from the residuals, plus the uncertainty of its own strength), and
  while another candidate is within ADAPTIVE_Z standard deviations of the leader (or of the last
  place), the open pairs that carry most of that variance among them are asked — pairs where
  the judge is least certain (p near 0.5). A prefix stops when its chosen and rejected picks are
  decided. The `budget` (unordered pairs per prefix; default `default_budget`, a third) is
  pooled over the batch: prefixes whose extremes are clear stop early and leave their share to
  the hard ones (near-tied last places), each up to ADAPTIVE_CAP times its own share. Pooling is
  what lets a third of the comparisons find both picks: with a fixed per-prefix third, every
  prefix spent all of it and the near-tied last places were still undecided.
- Identical candidate texts (a rewrite that copies the original) are one player in every scheme:
  their pairs are a tie without asking (what an LM judge returns with both orders anyway).

A *scored* judge (`LMJudge(judge_format='scored')`: one verdict per candidate and axis, see
`teacher/judges/lm.py`) is asked once per distinct candidate (`score_axes`), and every pair follows
as sigmoid(l_i - l_j): C rows per axis instead of C(C-1), in any scheme, with no candidate order
(position consistency 1 by construction). The schemes above decide what a *pairwise* judge asks.

Every round sends all comparisons of all groups to the judge in ONE call (both orders in the same
call, when asked): `compare_axes` with every pairwise axis when the judge has it (an LM judge then
prefills each prefix once for all axes), else one `compare` call per axis. An LM judge sees large
batches either way.

Aggregation per pairwise axis: `win_rate` (mean of P(i beats j) over compared j; `adaptive`
imputes the pairs it did not ask from its Bradley–Terry fit, so every candidate is scored against
all others) or `bradley_terry` (reward = mean_j sigmoid(theta_i - theta_j), the model's win rate,
so axes stay on one [0, 1] scale). Safety is pointwise: reward_safety = 1 - P(unsafe).
The combined reward is the weighted mean over axes; chosen = argmax, rejected = argmin, and
all_tied when max - min < TIE_EPS (e.g. an intransitive cycle, or identical candidates).

Ties are fair: candidates within TIE_EPS of the best (or of the worst) are drawn from at random
with `tie_rng` (SIP seeds it from its seed and step, so a resumed run draws the same), not by
the lowest index, which would hand every tie to the original suffix (candidate 0), as chosen and
as rejected alike. An all-tied group has no winner: its chosen / rejected are drawn too, but
`all_tied` says the judge could not rank it, and consumers must not train on it or count it as
anyone's win (SIP: DPO masks its pair, RF-NLL falls back, PG's advantages are 0, the win shares
leave it out).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from earlyrl_jax.models.scoring import any_process

SCHEMES = ("all_pairs", "pivot", "adaptive")
AGGREGATES = ("win_rate", "bradley_terry")
POINTWISE_AXES = frozenset({"safety"})
DEFAULT_AXES = {"quality": 1.0, "safety": 1.0, "factuality": 1.0}
TIE_EPS = 1e-6
WORD = re.compile(r"\w")  # a candidate without one is empty (`empty_loses`)
BT_PRIOR = 0.01          # L2 prior on BT strengths: keeps the fit finite on any comparison graph
ADAPTIVE_THREATS = 3     # contenders per side refined each round
ADAPTIVE_Z = 0.75        # a contender is within this many standard deviations of the leader
ADAPTIVE_MIN_SIGMA = 0.3 # floor on the judge's estimated logit scatter
ADAPTIVE_REFINE_ROUNDS = 10
ADAPTIVE_CAP = 2.0       # a prefix may use up to this many times its share of the pooled budget
ADAPTIVE_THETA_IN_VALUE = 1.0


@dataclasses.dataclass
class Judgement:
  """Per-candidate rewards of G groups of (up to) C candidates; padding slots of ragged groups
  carry NaN rewards and are never chosen."""
  rewards: np.ndarray                 # float [G, C] weighted mean over axes
  per_axis: dict[str, np.ndarray]     # axis -> float [G, C]
  prefs: dict[str, np.ndarray]        # pairwise axis -> float [G, C, C] P(i beats j), NaN if not compared
  calls: int                          # judged rows (compare rows, both orders, + pointwise rows)
  position_consistency: float         # share of pairs whose two orders agree (NaN without both orders)
  chosen: np.ndarray                  # int [G]
  rejected: np.ndarray                # int [G]
  all_tied: np.ndarray                # bool [G]
  comparisons: np.ndarray = None      # int [G] unordered pairs compared per group (per axis;
                                      # a scored judge: candidates scored)
  rounds: int = 0                     # batched compare rounds (one compare call per axis each)


# --------------------------------------------------------------------------- Bradley–Terry


def fit_bradley_terry(prefs_GxCxC: np.ndarray, valid_GxC: np.ndarray | None = None, *,
                      prior: float = BT_PRIOR, iters: int = 30) -> np.ndarray:
  """BT strengths theta [G, C] from soft outcomes P(i beats j) (NaN = not compared).

  Newton steps on the concave log-likelihood with an L2 prior (so a candidate that won every
  comparison stays finite, and disconnected comparison graphs are still solvable); mean-zero
  over valid candidates.
  """
  prefs = np.asarray(prefs_GxCxC, np.float64)
  G, C, _ = prefs.shape
  valid = np.ones((G, C), bool) if valid_GxC is None else np.asarray(valid_GxC, bool)
  known = ~np.isnan(prefs) & valid[:, :, None] & valid[:, None, :]
  known &= ~np.eye(C, dtype=bool)[None]
  y = np.where(known, np.clip(np.nan_to_num(prefs, nan=0.5), 1e-4, 1 - 1e-4), 0.0)
  n = known.astype(np.float64)
  theta = np.zeros((G, C))
  eye = np.eye(C)[None]
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))
    grad = np.sum(n * (y - p), axis=2) - prior * theta
    w = n * p * (1 - p)
    hess = (np.sum(w, axis=2)[:, :, None] + prior) * eye - w     # = -Hessian (positive definite)
    step = np.linalg.solve(hess, grad[..., None])[..., 0]
    step = np.clip(step, -4.0, 4.0)                                # damp far-from-optimum steps
    theta = theta + step
    if np.max(np.abs(step)) < 1e-9:
      break
  cnt = np.maximum(valid.sum(1, keepdims=True), 1)
  theta = np.where(valid, theta - np.sum(np.where(valid, theta, 0), 1, keepdims=True) / cnt, 0.0)
  return theta


def _bt_probs(theta_GxC: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-(theta_GxC[:, :, None] - theta_GxC[:, None, :])))


def _mean_over_others(m_GxCxC: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Mean over valid j != i of m[g, i, j]; 0.5 for a group of one."""
  C = m_GxCxC.shape[1]
  mask = valid[:, :, None] & valid[:, None, :] & ~np.eye(C, dtype=bool)[None]
  cnt = mask.sum(2)
  s = np.sum(np.where(mask, m_GxCxC, 0.0), axis=2)
  return np.where(cnt > 0, s / np.maximum(cnt, 1), 0.5)


def aggregate_pairwise(prefs_GxCxC: np.ndarray, valid: np.ndarray, aggregate: str,
                       impute: bool = False) -> np.ndarray:
  """Per-candidate rewards [G, C] in [0, 1] for one pairwise axis (NaN on padding slots)."""
  C = prefs_GxCxC.shape[1]
  offdiag = valid[:, :, None] & valid[:, None, :] & ~np.eye(C, dtype=bool)[None]
  known = ~np.isnan(prefs_GxCxC) & offdiag
  if aggregate == "bradley_terry" or impute:
    p_bt = _bt_probs(fit_bradley_terry(prefs_GxCxC, valid))
  if aggregate == "bradley_terry":
    r = _mean_over_others(p_bt, valid)
  elif impute:
    r = _mean_over_others(np.where(known, prefs_GxCxC, p_bt), valid)
  else:
    cnt = known.sum(2)
    r = np.where(cnt > 0, np.sum(np.where(known, prefs_GxCxC, 0.0), 2) / np.maximum(cnt, 1), 0.5)
  return np.where(valid, r, np.nan)


# --------------------------------------------------------------------------- the tournament


class _Asker:
  """Sends batched comparisons to the judge and keeps the preference matrices.

  Candidates with identical text are one player: their pairs are a tie (0.5) without asking
  (with both orders an LM judge returns exactly that), and one verdict fills every copy.
  """

  def __init__(self, judge, prefixes, candidates, references, pair_axes, both_orders, G, C):
    self.judge, self.prefixes, self.cands, self.refs = judge, prefixes, candidates, references
    self.pair_axes, self.both_orders = pair_axes, both_orders
    self.prefs = {a: np.full((G, C, C), np.nan) for a in pair_axes}
    self.known = np.zeros((G, C, C), bool)
    self.asked = np.zeros((G,), np.int64)           # unordered pairs sent to the judge
    self.rep = np.tile(np.arange(C), (G, 1))        # first candidate with the same text
    self.members: list[dict[int, list[int]]] = []
    for g, cs in enumerate(candidates):
      first: dict[str, int] = {}
      for i, c in enumerate(cs):
        self.rep[g, i] = first.setdefault(c, i)
      mem: dict[int, list[int]] = {}
      for i in range(len(cs)):
        mem.setdefault(int(self.rep[g, i]), []).append(i)
      self.members.append(mem)
      for grp in mem.values():
        for i in grp:
          for j in grp:
            if i != j:
              self.known[g, i, j] = True
              for a in pair_axes:
                self.prefs[a][g, i, j] = 0.5
    self.calls = 0
    self.rounds = 0
    self.agree = 0
    self.pairs_both = 0

  def reps(self, g: int) -> list[int]:
    return sorted(self.members[g])

  def ask(self, pairs: Sequence[tuple[int, int, int]]) -> None:
    """pairs: (g, i, j); one compare call per axis for all that are still open."""
    pairs = [(g, int(self.rep[g, i]), int(self.rep[g, j])) for g, i, j in pairs]
    pairs = [(g, i, j) for g, i, j in pairs if i != j and not self.known[g, i, j]]
    pairs = list(dict.fromkeys((g, min(i, j), max(i, j)) for g, i, j in pairs))
    if not pairs and not _lockstep():
      return
    gs = [g for g, _, _ in pairs]
    pre = [self.prefixes[g] for g in gs]
    a = [self.cands[g][i] for g, i, _ in pairs]
    b = [self.cands[g][j] for g, _, j in pairs]
    refs = None if self.refs is None else [self.refs[g] for g in gs]
    if self.both_orders:
      pre, a, b = pre + pre, a + b, b + a
      refs = None if refs is None else refs + refs
    n = len(pairs)
    for axis, p in _compare_axes(self.judge, pre, a, b, self.pair_axes, refs).items():
      self.calls += len(pre)
      if self.both_orders:
        fwd, bwd = p[:n], p[n:]
        prob = (fwd + 1.0 - bwd) / 2.0
        self.agree += int(np.sum(np.sign(fwd - 0.5) == -np.sign(bwd - 0.5)))
        self.pairs_both += n
      else:
        prob = p
      m = self.prefs[axis]
      for k, (g, i, j) in enumerate(pairs):
        ii, jj = np.ix_(self.members[g][i], self.members[g][j])
        m[g, ii, jj], m[g, jj.T, ii.T] = prob[k], 1.0 - prob[k]
    for g, i, j in pairs:
      ii, jj = np.ix_(self.members[g][i], self.members[g][j])
      self.known[g, ii, jj] = self.known[g, jj.T, ii.T] = True
      self.asked[g] += 1
    self.rounds += bool(pairs)

  def score_all(self, sizes: Sequence[int]) -> None:
    """A scored judge: one row per distinct candidate and axis fills every pair of every group."""
    rows = [(g, i) for g in range(len(sizes)) for i in self.reps(g)]
    pre = [self.prefixes[g] for g, _ in rows]
    cands = [self.cands[g][i] for g, i in rows]
    refs = None if self.refs is None else [self.refs[g] for g, _ in rows]
    logits = self.judge.score_axes(pre, cands, axes=list(self.pair_axes), references=refs)
    for axis in self.pair_axes:
      lg = np.asarray(logits[axis], np.float64)
      if lg.shape != (len(rows),):
        raise ValueError(f"judge.score_axes(axis={axis!r}) returned shape {lg.shape}, "
                         f"expected ({len(rows)},)")
      self.calls += len(rows)
      m = self.prefs[axis]
      full = np.full(m.shape[:2], np.nan)
      for (g, i), v in zip(rows, lg):
        for k in self.members[g][i]:
          full[g, k] = v
      C = m.shape[1]
      m[:] = np.where(np.eye(C, dtype=bool)[None], np.nan, _bt_probs(full))   # sigmoid(l_i - l_j)
    for g, n in enumerate(sizes):
      self.known[g, :n, :n] = ~np.eye(n, dtype=bool)
      self.asked[g] = len(self.reps(g))
    self.rounds += 1


def is_scored(judge) -> bool:
  """Whether `judge` scores candidates one at a time (see the module docstring)."""
  return getattr(judge, "judge_format", None) == "scored" and hasattr(judge, "score_axes")


def _lockstep() -> bool:
  """Several processes judge their own groups with one LM judge: its forward passes hold
  collectives, so every process asks in every round (possibly nothing) and rounds stop
  together."""
  import jax
  return jax.process_count() > 1


def _compare_axes(judge, pre, a, b, axes, refs) -> dict[str, np.ndarray]:
  """P(a beats b) per axis: in one call when the judge batches axes together (`compare_axes`,
  e.g. LMJudge: one prefill per prefix for all axes), else one `compare` call per axis."""
  if hasattr(judge, "compare_axes"):
    out = judge.compare_axes(pre, a, b, axes=list(axes), references=refs)
  else:
    out = {axis: judge.compare(pre, a, b, axis=axis, references=refs) for axis in axes}
  for axis in axes:
    out[axis] = np.asarray(out[axis], np.float64)
    if out[axis].shape != (len(pre),):
      raise ValueError(f"judge.compare(axis={axis!r}) returned shape {out[axis].shape}, "
                       f"expected ({len(pre)},)")
  return out


def judge_groups(judge, prefixes: list[str], candidates: list[list[str]], *,
                 scheme: str = "all_pairs", axes: dict[str, float] | None = None,
                 both_orders: bool = True, aggregate: str = "win_rate",
                 references: list[str] | None = None, pivot_index: int = 0,
                 budget: int | None = None,
                 tie_rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
                 empty_loses: bool = False) -> Judgement:
  """Judges G groups of candidates; see the module docstring for schemes and aggregation.

  budget (adaptive only): unordered pairs per prefix on average over the batch (each asked on every
  pairwise axis and, with both_orders, in both orders); one prefix may use up to ADAPTIVE_CAP
  times its share, never more than all its pairs. Default `default_budget` (a third).
  tie_rng: draws among tied candidates (module docstring): one generator for every group, or
  one per group (SIP: seeded by the group's index in the global batch, so a group draws the same
  whatever the number of processes); None: a generator seeded 0.
  empty_loses: a candidate without a word (e.g. a rollout that ended its document at once) gets
  the lowest combined reward, 0, whatever the judge said of it (its per-axis rewards stay as
  judged). Why: a judge that scores text by its defects finds none in an empty text; the
  embedded teacher rates it above the original suffix, and online DPO then teaches the policy
  to stop (benchmarks/RESULTS.md, the quality cost).
  """
  axes = dict(DEFAULT_AXES if axes is None else axes)
  if scheme not in SCHEMES:
    raise ValueError(f"scheme={scheme!r}: expected one of {SCHEMES}")
  if aggregate not in AGGREGATES:
    raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATES}")
  if len(prefixes) != len(candidates):
    raise ValueError(f"prefixes has {len(prefixes)} groups but candidates has {len(candidates)}")
  if references is not None and len(references) != len(prefixes):
    raise ValueError(f"references has {len(references)} entries for {len(prefixes)} groups")
  for a, w in axes.items():
    if not (w >= 0 and math.isfinite(w)):
      raise ValueError(f"axes[{a!r}]={w}: weights must be finite and >= 0")
  axes = {a: float(w) for a, w in axes.items() if w > 0}
  if not axes:
    raise ValueError("axes: at least one axis needs a positive weight")
  G = len(prefixes)
  if G == 0:
    raise ValueError("judge_groups: no groups given")
  sizes = [len(c) for c in candidates]
  if min(sizes) < 1:
    raise ValueError(f"candidates[{sizes.index(min(sizes))}] is empty")
  C = max(sizes)
  valid = np.arange(C)[None, :] < np.asarray(sizes)[:, None]
  if scheme == "pivot" and not all(0 <= pivot_index < s for s in sizes):
    raise ValueError(f"pivot_index={pivot_index} is outside a group of {min(sizes)} candidates")
  if budget is not None and budget < 1:
    raise ValueError(f"budget={budget} must be positive")

  rng = np.random.default_rng(0) if tie_rng is None else tie_rng
  if not isinstance(rng, np.random.Generator) and len(rng) != G:
    raise ValueError(f"tie_rng: {len(rng)} generators for {G} groups")
  pair_axes = [a for a in axes if a not in POINTWISE_AXES]
  point_axes = [a for a in axes if a in POINTWISE_AXES]
  asker = _Asker(judge, prefixes, candidates, references, pair_axes, both_orders, G, C)

  per_axis: dict[str, np.ndarray] = {}
  point_calls = 0
  for axis in point_axes:                         # pointwise: one call per axis, every candidate
    rows = [(g, i) for g in range(G) for i in range(sizes[g])]
    p_bad = np.asarray(judge.pointwise([prefixes[g] for g, _ in rows],
                                       [candidates[g][i] for g, i in rows], axis=axis), np.float64)
    if p_bad.shape != (len(rows),):
      raise ValueError(f"judge.pointwise(axis={axis!r}) returned shape {p_bad.shape}, "
                       f"expected ({len(rows)},)")
    point_calls += len(rows)
    r = np.full((G, C), np.nan)
    for (g, i), v in zip(rows, p_bad):
      r[g, i] = 1.0 - v
    per_axis[axis] = r

  scored = is_scored(judge)
  if pair_axes:
    if scored:
      asker.score_all(sizes)
    elif scheme == "all_pairs":
      asker.ask([(g, i, j) for g in range(G) for i in range(sizes[g]) for j in range(i + 1, sizes[g])])
    elif scheme == "pivot":
      asker.ask([(g, i, pivot_index) for g in range(G) for i in range(sizes[g]) if i != pivot_index])
    else:
      _adaptive(asker, axes, per_axis, valid, sizes, aggregate, budget, rng)
    for axis in pair_axes:
      per_axis[axis] = aggregate_pairwise(asker.prefs[axis], valid, aggregate,
                                          impute=(scheme == "adaptive" and not scored))

  rewards = _combine(per_axis, axes)
  if empty_loses:
    empty = np.array([[i < len(c) and not WORD.search(c[i]) for i in range(C)] for c in candidates])
    rewards = np.where(empty, 0.0, rewards)
  masked = np.where(valid, rewards, np.nan)
  chosen = draw_among_ties(masked, np.nanmax(masked, axis=1), rng)
  rejected = draw_among_ties(masked, np.nanmin(masked, axis=1), rng)
  all_tied = (np.nanmax(masked, 1) - np.nanmin(masked, 1)) < TIE_EPS
  consistency = asker.agree / asker.pairs_both if asker.pairs_both else float("nan")
  if scored and pair_axes:   # compare(b, a) = 1 - compare(a, b) exactly: no order to disagree on
    consistency = 1.0
  return Judgement(rewards=masked, per_axis=per_axis, prefs=asker.prefs,
                   calls=asker.calls + point_calls, position_consistency=float(consistency),
                   chosen=chosen.astype(np.int64), rejected=rejected.astype(np.int64),
                   all_tied=all_tied, comparisons=asker.asked.copy(), rounds=asker.rounds)


def _uniforms(rng, G: int, C: int) -> np.ndarray:
  """[G, C] uniforms: from one generator, or a row from each group's own."""
  if isinstance(rng, np.random.Generator):
    return rng.random((G, C))
  return np.stack([r.random(C) for r in rng]) if G else np.zeros((0, C))


def _uniform(rng, g: int) -> float:
  return float(rng.random() if isinstance(rng, np.random.Generator) else rng[g].random())


def draw_among_ties(rewards_GxC: np.ndarray, target_G: np.ndarray, rng) -> np.ndarray:
  """Per group, a candidate drawn uniformly from those within TIE_EPS of `target` (its best or
  worst reward); NaN slots (padding) are never drawn. One uniform per slot, drawn for every
  group, so the stream a generator gives does not depend on how many ties there were."""
  tied = np.abs(np.nan_to_num(rewards_GxC, nan=np.inf) - target_G[:, None]) < TIE_EPS
  u = _uniforms(rng, *rewards_GxC.shape)
  return np.argmax(np.where(tied, u, -1.0), axis=1).astype(np.int64)


def _combine(per_axis: dict[str, np.ndarray], axes: dict[str, float]) -> np.ndarray:
  total = sum(axes[a] for a in per_axis)
  return sum(axes[a] * per_axis[a] for a in per_axis) / total


def default_budget(c: int) -> int:
  """A third of all pairs (rounded down), but at least the ~3c/2 - 2 comparisons a max/min
  knockout needs (c distinct texts; the floor matters below c = 10)."""
  pairs = c * (c - 1) // 2
  knockout = c // 2 + 2 * max(0, -(-c // 2) - 1)
  return min(pairs, max(pairs // 3, knockout))


# --------------------------------------------------------------------------- adaptive


def _adaptive(asker: _Asker, axes, per_axis, valid, sizes, aggregate, budget, rng) -> None:
  """Knockout max/min rounds, then uncertainty-driven refinement (see module docstring). A
  knockout pair that ties, or that the budget left unasked, goes on by a draw from `rng`."""
  G, C = valid.shape
  pair_axes = asker.pair_axes
  wsum = sum(axes.values())
  reps = [asker.reps(g) for g in range(G)]
  all_pairs = [len(r) * (len(r) - 1) // 2 for r in reps]
  shares = [min(n, budget if budget is not None else default_budget(len(r)))
            for n, r in zip(all_pairs, reps)]
  caps = [min(n, int(ADAPTIVE_CAP * s)) for n, s in zip(all_pairs, shares)]
  batch_budget = sum(shares)                      # the batch's budget, shared by its prefixes
  used = lambda g: int(asker.asked[g])
  left = lambda: batch_budget - int(asker.asked.sum())

  def edge(g, i, j) -> float:
    """> 0 when i beats j on the weighted axes (pairwise verdicts + pointwise differences)."""
    e = sum(axes[a] * (2 * asker.prefs[a][g, i, j] - 1) for a in pair_axes)
    e += sum(axes[a] * (per_axis[a][g, i] - per_axis[a][g, j]) for a in per_axis)
    return e

  # Knockout: max pool keeps winners, min pool keeps losers; an odd one out goes on in both.
  max_pool = [list(r) for r in reps]
  min_pool = [None] * G
  first = True
  while True:
    plans = []
    for g in range(G):
      plan = []
      if first:
        pool = max_pool[g]
        plan.append(("first", [(pool[k], pool[k + 1]) for k in range(0, len(pool) - 1, 2)],
                     pool[-1] if len(pool) % 2 else None))
      else:
        for side, pool in (("max", max_pool[g]), ("min", min_pool[g])):
          if len(pool) > 1:
            plan.append((side, [(pool[k], pool[k + 1]) for k in range(0, len(pool) - 1, 2)],
                         pool[-1] if len(pool) % 2 else None))
      plans.append(plan)
    want = [(g, i, j) for g, plan in enumerate(plans) for _, prs, _ in plan for i, j in prs]
    if not any_process(bool(want)):
      break
    room = {g: caps[g] - used(g) for g in range(G)}
    asked, total = [], left()
    for g, i, j in want:                           # the knockout respects the budget too
      if asker.known[g, i, j]:
        continue
      if room[g] > 0 and total > 0:
        asked.append((g, i, j))
        room[g] -= 1
        total -= 1
    asker.ask(asked)
    for g, plan in enumerate(plans):
      for side, prs, odd in plan:
        win, lose = [], []
        for i, j in prs:
          e = edge(g, i, j) if asker.known[g, i, j] else 0.0   # unasked (budget ran out): a tie
          if abs(e) < TIE_EPS:
            e = _uniform(rng, g) - 0.5
          w, l = (i, j) if e > 0 else (j, i)
          win.append(w)
          lose.append(l)
        if side == "first":
          max_pool[g] = win + ([odd] if odd is not None else [])
          min_pool[g] = lose + ([odd] if odd is not None else [])
        elif side == "max":
          max_pool[g] = win + ([odd] if odd is not None else [])
        else:
          min_pool[g] = lose + ([odd] if odd is not None else [])
    first = False

  # Refinement: while another candidate may still overtake the leader (or the last place).
  # An imputed P is off by about sigma * p(1-p) (sigma: the judge's logit scatter around the BT
  # fit, estimated from the residuals of the pairs asked), so a candidate's estimated reward has
  # variance sum_unknown (w_a sigma_a p(1-p) / (C-1))^2; a contender is one whose gap to the
  # leader is within ADAPTIVE_Z standard deviations. Each round asks, per group, the open pairs
  # that carry the most of that variance among the leader and its contenders.
  if not pair_axes:
    return
  offdiag = ~np.eye(C, dtype=bool)
  for rnd in range(ADAPTIVE_REFINE_ROUNDS):
    asked_pair = asker.known & (asker.rep[:, :, None] != asker.rep[:, None, :])
    est = np.zeros((G, C))
    var_pair = np.zeros((G, C, C))            # variance one open pair adds to a reward estimate
    var_theta = np.zeros((G, C))              # correlated part: a candidate's own BT uncertainty
    unknown_all = ~asker.known & offdiag[None] & valid[:, :, None] & valid[:, None, :]
    for a in pair_axes:
      theta = fit_bradley_terry(asker.prefs[a], valid)
      p_bt = _bt_probs(theta)
      filled = np.where(asker.known, asker.prefs[a], p_bt)
      r = _mean_over_others(filled, valid) if aggregate == "win_rate" else _mean_over_others(p_bt, valid)
      est += axes[a] * r / wsum
      lg = np.log(np.clip(asker.prefs[a], 1e-3, 1 - 1e-3)) - np.log1p(-np.clip(asker.prefs[a], 1e-3, 1 - 1e-3))
      res = np.where(asked_pair, lg - (theta[:, :, None] - theta[:, None, :]), 0.0)
      sig2 = np.sum(res ** 2, (1, 2)) / np.maximum(asked_pair.sum((1, 2)), 1)
      sig2 = np.maximum(sig2, ADAPTIVE_MIN_SIGMA ** 2)
      slope = p_bt * (1 - p_bt)
      v_th = 1.0 / (np.sum(np.where(asked_pair, slope, 0.0), 2) + BT_PRIOR + 0.25)   # 1 / Fisher info
      w2 = (axes[a] / wsum) ** 2
      var_pair += w2 * slope ** 2 * (sig2[:, None, None] + ADAPTIVE_THETA_IN_VALUE * (v_th[:, :, None] + v_th[:, None, :]))
      var_theta += w2 * v_th * np.sum(np.where(unknown_all, slope, 0.0), 2) ** 2
    for a in per_axis:
      est += axes[a] * np.nan_to_num(per_axis[a], nan=0.0) / wsum
    asked = []                                # (value, g, i, j)
    for g in range(G):
      s = sizes[g]
      rg = reps[g]
      room = caps[g] - used(g)
      if room <= 0 or len(rg) < 3:
        continue
      is_rep = np.zeros(s, bool)
      is_rep[rg] = True
      unknown = (~asker.known[g, :s, :s]) & offdiag[:s, :s]
      vp = np.where(unknown, var_pair[g, :s, :s], 0.0) / (s - 1) ** 2
      var = vp.sum(1) + var_theta[g, :s] / (s - 1) ** 2
      e = est[g, :s]
      value = np.zeros((s, s))
      for lead, sign in ((int(np.argmax(np.where(is_rep, e, -np.inf))), 1.0),
                         (int(np.argmin(np.where(is_rep, e, np.inf))), -1.0)):
        gap = sign * (e[lead] - e)
        threat = np.where(is_rep, ADAPTIVE_Z * np.sqrt(var + var[lead]) - gap, -np.inf)
        threat[lead] = -np.inf
        cont = [int(i) for i in np.argsort(-threat)[:ADAPTIVE_THREATS] if threat[i] >= 0]
        if not cont:
          continue
        member = np.isin(asker.rep[g, :s], [lead] + cont).astype(np.float64)
        value += vp * (member[:, None] + member[None, :])
      # Copies of a text are one player: sum the value of a pair over its copies.
      M = (asker.rep[g, :s][None, :] == np.asarray(rg)[:, None]).astype(np.float64)   # [u, s]
      value_r = np.triu(M @ np.where(unknown, value, 0.0) @ M.T, 1)
      quota = min(room, max(2, -(-room // (ADAPTIVE_REFINE_ROUNDS - rnd))))
      for flat in np.argsort(-value_r, axis=None)[:quota]:
        i, j = divmod(int(flat), len(rg))
        if value_r[i, j] > 0:
          asked.append((float(value_r[i, j]), g, rg[i], rg[j]))
    asked.sort(key=lambda t: -t[0])               # the pool goes where it resolves most
    asked = [(g, i, j) for _, g, i, j in asked[:max(left(), 0)]]
    if not any_process(bool(asked)):
      break
    asker.ask(asked)
