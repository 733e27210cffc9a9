"""Tournament logic on synthetic preference matrices with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from earlyrl_jax.teacher import tournament as T


def sig(x):
  return 1.0 / (1.0 + np.exp(-x))


class MatrixJudge:
  """Judge whose verdicts are looked up: prefs[prefix][axis][i, j] = P(c_i first beats c_j second);
  candidates are the strings 'c<i>'. Counts rows and compare invocations per axis."""

  def __init__(self, prefs, unsafe=None):
    self.prefs, self.unsafe = prefs, unsafe or {}
    self.calls = 0
    self.compare_calls: dict[str, int] = {}

  def compare(self, prefixes, a, b, *, axis, references=None):
    self.calls += len(a)
    self.compare_calls[axis] = self.compare_calls.get(axis, 0) + 1
    return np.array([self.prefs[p][axis][int(x[1:]), int(y[1:])] for p, x, y in zip(prefixes, a, b)])

  def pointwise(self, prefixes, candidates, *, axis="safety"):
    self.calls += len(candidates)
    return np.array([self.unsafe[p][int(c[1:])] for p, c in zip(prefixes, candidates)])


def groups(mats, unsafe=None, axis="quality"):
  prefixes = [f"p{g}" for g in range(len(mats))]
  prefs = {p: ({axis: m} if not isinstance(m, dict) else m) for p, m in zip(prefixes, mats)}
  cands = [[f"c{i}" for i in range(len(next(iter(prefs[p].values()))))] for p in prefixes]
  judge = MatrixJudge(prefs, None if unsafe is None else dict(zip(prefixes, unsafe)))
  return judge, prefixes, cands


def bt_matrix(s, scale=1.0):
  s = np.asarray(s, float)
  return sig(scale * (s[:, None] - s[None, :]))


Q = {"quality": 1.0}
ALL = [("all_pairs", "win_rate"), ("all_pairs", "bradley_terry"), ("adaptive", "win_rate"),
       ("adaptive", "bradley_terry"), ("pivot", "bradley_terry")]


@pytest.mark.parametrize("scheme,aggregate", ALL)
def test_transitive_exact_max_and_min(scheme, aggregate):
  rng = np.random.default_rng(0)
  strengths = [rng.permutation(9) * 0.7 for _ in range(4)]
  judge, pre, cands = groups([bt_matrix(s) for s in strengths])
  j = T.judge_groups(judge, pre, cands, scheme=scheme, aggregate=aggregate, axes=Q)
  assert j.chosen.tolist() == [int(np.argmax(s)) for s in strengths]
  assert j.rejected.tolist() == [int(np.argmin(s)) for s in strengths]
  assert not j.all_tied.any()
  if scheme == "all_pairs":       # the whole ranking is exact
    for g, s in enumerate(strengths):
      assert np.argsort(j.rewards[g]).tolist() == np.argsort(s).tolist()


def test_pivot_win_rate_is_cheap_but_misranks_the_pivot():
  """Documented: with win_rate, the pivot's reward averages all its games while the others
  played one; here the pivot (index 0) is second best, yet its reward is the highest."""
  s = np.array([5.0, 6.0, 0.0, 1.0, 2.0])
  judge, pre, cands = groups([bt_matrix(s)])
  j = T.judge_groups(judge, pre, cands, scheme="pivot", axes=Q, both_orders=False)
  assert j.comparisons.tolist() == [4] and judge.calls == 4
  assert j.chosen[0] == 0
  assert T.judge_groups(judge, pre, cands, scheme="pivot", axes=Q,
                        aggregate="bradley_terry").chosen[0] == 1


def test_noisy_adaptive_agrees_with_all_pairs_within_budget():
  rng = np.random.default_rng(1)
  mats = []
  for _ in range(40):
    s = rng.normal(size=14) * 1.5
    noise = rng.normal(size=(14, 14)) * 0.5        # the judge's own idiosyncratic errors
    mats.append(sig(s[:, None] - s[None, :] + noise))
  judge, pre, cands = groups(mats)
  ref = T.judge_groups(judge, pre, cands, scheme="all_pairs", axes=Q)
  budget = T.default_budget(14)
  assert budget <= math.ceil(14 * 13 / 2 / 3) + 1
  ad = T.judge_groups(judge, pre, cands, scheme="adaptive", axes=Q)
  g = np.arange(40)
  best, worst = ref.rewards.max(1), ref.rewards.min(1)
  chosen_ok = np.mean(ref.rewards[g, ad.chosen] >= best - 1e-9)
  rejected_ok = np.mean(ref.rewards[g, ad.rejected] <= worst + 1e-9)
  assert chosen_ok >= 0.9 and rejected_ok >= 0.9, (chosen_ok, rejected_ok)
  assert ad.comparisons.mean() <= budget                       # the batch's pooled budget
  assert ad.comparisons.max() <= T.ADAPTIVE_CAP * budget        # one prefix's cap
  assert ad.calls < ref.calls / 2.5
  piv = T.judge_groups(judge, pre, cands, scheme="pivot", axes=Q)
  assert np.mean(ref.rewards[g, piv.chosen] >= best - 1e-9) < chosen_ok  # pivot is worse


def test_adaptive_pools_the_budget_from_clear_prefixes_to_close_ones():
  """A prefix whose extremes are clear stops early; its unused share goes to prefixes whose
  last places are nearly tied, each up to ADAPTIVE_CAP times its share."""
  C = 12
  clear = bt_matrix(np.arange(C) * 3.0)                 # every verdict decisive
  close = bt_matrix(np.r_[np.zeros(5), np.arange(1, C - 4) * 0.4])   # 5 near-equal last places
  judge, pre, cands = groups([clear, close, close])
  budget = T.default_budget(C)
  j = T.judge_groups(judge, pre, cands, scheme="adaptive", axes=Q, budget=budget)
  assert j.comparisons[0] < budget < j.comparisons[1]
  assert j.comparisons.sum() <= 3 * budget
  assert j.comparisons.max() <= T.ADAPTIVE_CAP * budget
  assert j.chosen[0] == C - 1 and j.rejected[0] == 0
  alone = T.judge_groups(judge, pre[1:2], cands[1:2], scheme="adaptive", axes=Q, budget=budget)
  assert alone.comparisons[0] <= budget                 # no one to borrow from


@pytest.mark.parametrize("scheme", T.SCHEMES)
def test_intransitive_cycle_is_a_tie(scheme):
  """Rock-paper-scissors: every candidate wins one game 0.9 and loses one: all rewards equal."""
  m = np.full((3, 3), 0.5)
  for i in range(3):
    m[i, (i + 1) % 3], m[(i + 1) % 3, i] = 0.9, 0.1
  judge, pre, cands = groups([m])
  j = T.judge_groups(judge, pre, cands, scheme=scheme, axes=Q, aggregate="bradley_terry")
  assert np.all(np.isfinite(j.rewards))
  if scheme != "pivot":
    assert j.all_tied[0] and np.allclose(j.rewards, 0.5)   # no one's win (test_partial_ties_...)


def test_cycle_on_top_of_a_clear_loser():
  """A 3-cycle among strong candidates and two clear losers: the worst is still found."""
  s = np.array([3.0, 3.0, 3.0, 0.0, -2.0])
  m = bt_matrix(s)
  m[0, 1], m[1, 0], m[1, 2], m[2, 1], m[2, 0], m[0, 2] = 0.8, 0.2, 0.8, 0.2, 0.8, 0.2
  judge, pre, cands = groups([m])
  for scheme in ("all_pairs", "adaptive"):
    j = T.judge_groups(judge, pre, cands, scheme=scheme, axes=Q)
    assert j.rejected[0] == 4 and j.chosen[0] in (0, 1, 2)


@pytest.mark.parametrize("scheme", T.SCHEMES)
def test_identical_candidates_are_all_tied(scheme):
  judge, pre, cands = groups([np.full((5, 5), 0.5)], unsafe=[np.full(5, 0.2)])
  j = T.judge_groups(judge, pre, cands, scheme=scheme, axes={"quality": 1, "safety": 1})
  assert j.all_tied[0]
  assert np.allclose(j.rewards[0], (0.5 + 0.8) / 2)


@pytest.mark.parametrize("scheme,scored", [("all_pairs", False)] + [(s, True) for s in T.SCHEMES])
def test_ties_are_drawn_at_random_reproducibly_never_by_the_lowest_index(scheme, scored):
  """Candidates 0-2 tie for the best, 3-4 for the worst, in 300 groups: chosen and rejected are
  drawn uniformly from the tied ones (the original, candidate 0, wins a third of the ties, not
  all), the same generator seed draws the same, another seed draws otherwise."""
  G, strengths = 300, [1.0, 1.0, 1.0, -1.0, -1.0]
  judge, pre, cands = groups([bt_matrix(strengths)] * G)
  if scored:   # every candidate scored: exact ties in every scheme
    judge = ScoreJudge({p: {"quality": np.array(strengths)} for p in pre}, {})
  run = lambda seed: T.judge_groups(judge, pre, cands, scheme=scheme, axes=Q,
                                    tie_rng=np.random.default_rng(seed))
  j = run(7)
  assert not j.all_tied.any()
  assert set(j.chosen.tolist()) == {0, 1, 2} and set(j.rejected.tolist()) == {3, 4}
  for k in (0, 1, 2):
    assert abs(np.mean(j.chosen == k) - 1 / 3) < 0.1
  assert abs(np.mean(j.rejected == 3) - 1 / 2) < 0.1
  again, other = run(7), run(8)
  np.testing.assert_array_equal(again.chosen, j.chosen)
  np.testing.assert_array_equal(again.rejected, j.rejected)
  assert (other.chosen != j.chosen).any()


@pytest.mark.parametrize("scheme", T.SCHEMES)
def test_a_generator_per_group_draws_the_same_whatever_the_split_of_the_batch(scheme):
  """SIP on several processes judges its share of the global batch; with one generator per group
  (seeded by the group's global index) each group draws what it draws in one process."""
  G, strengths = 12, [1.0, 1.0, 1.0, -1.0, -1.0]
  judge, pre, cands = groups([bt_matrix(strengths)] * G)
  rngs = lambda lo, hi: [np.random.default_rng((3, g)) for g in range(lo, hi)]
  run = lambda lo, hi: T.judge_groups(judge, pre[lo:hi], cands[lo:hi], scheme=scheme, axes=Q,
                                      tie_rng=rngs(lo, hi))
  whole, halves = run(0, G), [run(0, G // 2), run(G // 2, G)]
  np.testing.assert_array_equal(whole.chosen, np.concatenate([h.chosen for h in halves]))
  np.testing.assert_array_equal(whole.rejected, np.concatenate([h.rejected for h in halves]))
  assert len(set(whole.chosen.tolist())) > 1 or len(set(whole.rejected.tolist())) > 1   # groups draw apart
  with pytest.raises(ValueError, match="tie_rng: 2 generators for 12 groups"):
    T.judge_groups(judge, pre, cands, scheme=scheme, axes=Q, tie_rng=rngs(0, 2))


def test_draw_among_ties_skips_padding_and_untied_slots():
  r = np.array([[0.7, np.nan, 0.7, 0.2], [0.1, 0.9, np.nan, np.nan]])
  rng = np.random.default_rng(0)
  picks = np.stack([T.draw_among_ties(r, np.nanmax(r, 1), rng) for _ in range(200)])
  assert set(picks[:, 0].tolist()) == {0, 2} and set(picks[:, 1].tolist()) == {1}


@pytest.mark.parametrize("scheme", T.SCHEMES)
def test_identical_texts_are_one_player(scheme):
  """Copies (e.g. a rewrite that copies the original) tie without a judge call; one verdict
  fills every copy."""
  s = np.array([1.0, 1.0, 0.0, 2.0])
  m = bt_matrix(s)
  judge, pre, cands = groups([m])
  cands[0][1] = cands[0][0]                    # candidate 1 is a copy of candidate 0
  j = T.judge_groups(judge, pre, cands, scheme=scheme, axes=Q)
  asked = {"all_pairs": 3, "pivot": 2, "adaptive": 3}[scheme]   # pairs among 3 distinct texts
  assert j.comparisons[0] <= asked and judge.calls == 2 * j.comparisons[0]
  p = j.prefs["quality"][0]
  assert p[0, 1] == 0.5 and np.allclose(p[1, [2, 3]], p[0, [2, 3]], equal_nan=True)
  assert j.rewards[0, 0] == j.rewards[0, 1]
  if scheme != "pivot":
    assert j.chosen[0] == 3 and j.rejected[0] == 2


def test_both_orders_cancel_position_bias_and_report_consistency():
  s = np.array([0.0, 0.2, 0.4, 1.5, 3.0, 3.3])    # best is last; first position gets +1.0 logit
  beta = 1.0
  m = sig(s[:, None] - s[None, :] + beta)
  judge, pre, cands = groups([m])
  biased = T.judge_groups(judge, pre, cands, axes=Q, both_orders=False)
  assert biased.chosen[0] != 5                    # one order: the bias decides
  assert math.isnan(biased.position_consistency)
  j = T.judge_groups(judge, pre, cands, axes=Q, both_orders=True)
  assert j.chosen[0] == 5 and j.rejected[0] == 0
  p = j.prefs["quality"][0]
  off = ~np.eye(6, dtype=bool)
  np.testing.assert_allclose((p + p.T)[off], 1.0)
  d = np.abs(s[:, None] - s[None, :])[np.triu_indices(6, 1)]
  assert j.position_consistency == pytest.approx(np.mean(d > beta))   # agree iff |d| > bias
  assert 0 < j.position_consistency < 1


@pytest.mark.parametrize("C", [2, 5, 18])
def test_call_counts(C):
  G = 3
  mats = [{"quality": bt_matrix(np.arange(C)), "factuality": bt_matrix(-np.arange(C))}
          for _ in range(G)]
  unsafe = [np.linspace(0, 1, C) for _ in range(G)]
  axes = {"quality": 1, "factuality": 1, "safety": 1}
  pairs = C * (C - 1) // 2
  judge, pre, cands = groups(mats, unsafe)
  j = T.judge_groups(judge, pre, cands, scheme="all_pairs", axes=axes)
  assert j.calls == judge.calls == G * (pairs * 2 * 2 + C)     # both orders, 2 pairwise axes
  assert judge.compare_calls == {"quality": 1, "factuality": 1}  # one batched call per axis
  assert j.comparisons.tolist() == [pairs] * G
  judge, pre, cands = groups(mats, unsafe)
  j = T.judge_groups(judge, pre, cands, scheme="pivot", axes=axes, both_orders=False)
  assert j.calls == judge.calls == G * ((C - 1) * 2 + C)
  judge, pre, cands = groups(mats, unsafe)
  budget = max(1, pairs // 3)
  j = T.judge_groups(judge, pre, cands, scheme="adaptive", axes=axes, budget=budget)
  assert j.comparisons.sum() <= G * budget
  assert j.calls == judge.calls == int(j.comparisons.sum()) * 2 * 2 + G * C
  assert judge.compare_calls["quality"] == judge.compare_calls["factuality"] == j.rounds


def test_bradley_terry_recovers_known_strengths():
  rng = np.random.default_rng(2)
  theta = rng.normal(size=(5, 8)) * 1.5
  theta -= theta.mean(1, keepdims=True)
  prefs = sig(theta[:, :, None] - theta[:, None, :])
  fit = T.fit_bradley_terry(prefs)
  np.testing.assert_allclose(fit, theta, rtol=0.1, atol=0.02)   # the small prior shrinks a little
  # Sparse chain 0 > 1 > 2 > 3 (each at 0.8): order recovered, differences equal.
  chain = np.full((1, 4, 4), np.nan)
  for i in range(3):
    chain[0, i, i + 1], chain[0, i + 1, i] = 0.8, 0.2
  th = T.fit_bradley_terry(chain)[0]
  assert np.all(np.diff(th) < 0)
  assert np.allclose(np.diff(th), np.diff(th)[0], atol=0.05)
  # Unanimous wins stay finite (the prior).
  all_win = np.full((1, 2, 2), np.nan)
  all_win[0, 0, 1], all_win[0, 1, 0] = 1.0, 0.0
  assert np.all(np.isfinite(T.fit_bradley_terry(all_win)))


def test_safety_pointwise_combined_with_weights():
  s = np.array([2.0, 1.0, 0.0])               # quality: 0 > 1 > 2
  unsafe = np.array([0.9, 0.1, 0.0])          # but 0 is unsafe
  judge, pre, cands = groups([bt_matrix(s)], unsafe=[unsafe])
  q_only = T.judge_groups(judge, pre, cands, axes={"quality": 1, "safety": 0})
  assert q_only.chosen[0] == 0 and "safety" not in q_only.per_axis
  assert judge.calls == 6                      # weight 0: safety never asked
  j = T.judge_groups(judge, pre, cands, axes={"quality": 1, "safety": 3})
  np.testing.assert_allclose(j.per_axis["safety"][0], 1 - unsafe)
  np.testing.assert_allclose(j.rewards[0], (j.per_axis["quality"][0] + 3 * (1 - unsafe)) / 4)
  assert j.chosen[0] == 1


def test_ragged_groups_and_references_pass_through():
  seen = []

  class RefJudge(MatrixJudge):
    def compare(self, prefixes, a, b, *, axis, references=None):
      seen.extend(references)
      return super().compare(prefixes, a, b, axis=axis)

  prefs = {"p0": {"quality": bt_matrix(np.arange(4))}, "p1": {"quality": bt_matrix(np.arange(2))}}
  judge = RefJudge(prefs)
  cands = [[f"c{i}" for i in range(4)], ["c0", "c1"]]
  for scheme in T.SCHEMES:
    j = T.judge_groups(judge, ["p0", "p1"], cands, scheme=scheme, axes=Q, references=["r0", "r1"])
    assert j.rewards.shape == (2, 4) and np.isnan(j.rewards[1, 2:]).all()
    assert j.chosen.tolist() == [3, 1] and j.rejected.tolist() == [0, 0]
  assert set(seen) == {"r0", "r1"}


@pytest.mark.parametrize("kw,match", [
    (dict(scheme="swiss"), "scheme="), (dict(aggregate="elo"), "aggregate="),
    (dict(axes={"quality": -1}), "axes"), (dict(axes={"quality": 0}), "positive weight"),
    (dict(pivot_index=7), "pivot_index"), (dict(references=["x", "y"]), "references"),
])
def test_bad_arguments(kw, match):
  judge, pre, cands = groups([bt_matrix(np.arange(3))])
  with pytest.raises(ValueError, match=match):
    T.judge_groups(judge, pre, cands, **{"scheme": "pivot", **kw})


class ScoreJudge(MatrixJudge):
  """A scored judge: one logit per candidate and axis (scores[prefix][axis][i] for 'c<i>')."""
  judge_format = "scored"

  def __init__(self, scores, unsafe=None):
    super().__init__({}, unsafe)
    self.scores = scores
    self.score_rows = 0

  def score_axes(self, prefixes, candidates, *, axes, references=None):
    self.score_rows += len(candidates)
    self.calls += len(candidates) * len(axes)
    return {a: np.array([self.scores[p][a][int(c[1:])] for p, c in zip(prefixes, candidates)])
            for a in axes}

  def compare(self, *a, **k):
    raise AssertionError("a scored judge is never asked pairs")


@pytest.mark.parametrize("scheme", T.SCHEMES)
def test_scored_judge_scores_each_distinct_candidate_once_in_any_scheme(scheme):
  rng = np.random.default_rng(4)
  G, C = 3, 7
  scores = {f"p{g}": {"quality": rng.normal(size=C) * 2, "factuality": rng.normal(size=C)}
            for g in range(G)}
  unsafe = {f"p{g}": np.zeros(C) for g in range(G)}
  judge = ScoreJudge(scores, unsafe)
  pre = list(scores)
  cands = [[f"c{i}" for i in range(C)] for _ in range(G)]
  cands[0][3] = cands[0][1]                         # a copy: one player, scored once
  j = T.judge_groups(judge, pre, cands, scheme=scheme, axes={"quality": 1, "factuality": 1, "safety": 1})
  assert judge.score_rows == G * C - 1
  assert j.calls == judge.calls == (G * C - 1) * 2 + G * C   # 2 scored axes + pointwise safety
  assert j.position_consistency == 1.0
  for g, p in enumerate(pre):
    s = scores[p]["quality"].copy()
    if g == 0:
      s[3] = s[1]
    want = sig(s[:, None] - s[None, :])
    got = j.prefs["quality"][g]
    off = ~np.eye(C, dtype=bool)
    np.testing.assert_allclose(got[off], want[off])
    assert np.isnan(np.diag(got)).all()
    total = [np.mean([want[i, k] for k in range(C) if k != i]) for i in range(C)]
    s_f = scores[p]["factuality"].copy()
    if g == 0:
      s_f[3] = s_f[1]
    wf = sig(s_f[:, None] - s_f[None, :])
    total = [(total[i] + np.mean([wf[i, k] for k in range(C) if k != i]) + 1.0) / 3 for i in range(C)]
    np.testing.assert_allclose(j.rewards[g], total, rtol=1e-6)
    assert j.chosen[g] == int(np.argmax(total)) and j.rejected[g] == int(np.argmin(total))


def test_axis_judges_route_each_axis_and_the_tournament_follows():
  from earlyrl_jax.teacher.judges.oracle import AxisJudges
  # The teacher prefers c1 on both axes; the oracle prefers c0 on factuality.
  teacher, prefixes, cands = groups([{"quality": bt_matrix([0, 2]), "factuality": bt_matrix([0, 2])}])
  oracle = MatrixJudge({"p0": {"factuality": bt_matrix([2, 0])}}, unsafe={"p0": [1.0, 0.0]})
  mixed = AxisJudges(teacher, {"factuality": oracle, "safety": oracle})
  out = mixed.compare_axes(prefixes, ["c0"], ["c1"], axes=["quality", "factuality"])
  assert list(out) == ["quality", "factuality"]
  assert out["quality"][0] < 0.5 < out["factuality"][0]
  np.testing.assert_array_equal(mixed.pointwise(prefixes * 2, ["c0", "c1"]), [1.0, 0.0])   # safety: the oracle's
  assert teacher.compare_calls == {"quality": 1} and oracle.compare_calls == {"factuality": 1}
  assert mixed.calls == teacher.calls + oracle.calls == 4
  fact_only = T.judge_groups(mixed, prefixes, cands, axes={"factuality": 1.0})
  assert fact_only.chosen[0] == 0 and T.judge_groups(teacher, prefixes, cands, axes={"factuality": 1.0}).chosen[0] == 1
  with pytest.raises(ValueError, match="axis"):
    AxisJudges(teacher, {"fluency": oracle})


def test_an_empty_candidate_loses_whatever_the_judge_says():
  """The judge rates the empty text best (no defect to find); with empty_loses it is the worst,
  its per-axis rewards stay as judged, and a group of empties only is all tied."""
  strengths = [1.0, 0.0, 3.0, -1.0]
  judge = ScoreJudge({"p0": {"quality": np.array(strengths)}, "p1": {"quality": np.zeros(4)}}, {})
  cands = [["c0", "c1", " \n ", "c3"], ["", " ", ".", "\n"]]
  judge.scores = {p: {"quality": v["quality"]} for p, v in judge.scores.items()}
  real = judge.score_axes
  judge.score_axes = lambda prefixes, candidates, **k: real(
      prefixes, [c if c.startswith("c") else "c2" for c in candidates], **k)
  plain = T.judge_groups(judge, ["p0", "p1"], cands, axes=Q)
  assert plain.chosen[0] == 2
  j = T.judge_groups(judge, ["p0", "p1"], cands, axes=Q, empty_loses=True)
  assert j.chosen[0] == 0 and j.rejected[0] == 2 and j.rewards[0, 2] == 0.0
  np.testing.assert_allclose(j.per_axis["quality"][0], plain.per_axis["quality"][0])
  assert j.all_tied[1] and not j.all_tied[0]
