"""LMJudge: verdicts of an in-process Flax LM read from verdict-token log-probs.

Why log-probs: the paper samples each verdict 5 times to estimate P(A > B); the LM
judge reads that probability exactly from the next-token distribution over the
two verdict markers, in one batched forward pass and without generation. It needs
markers that are one token each (the markup family, prompts/markup.py): the embedded
teacher's tokenizer.
"""
from __future__ import annotations

import jax
import numpy as np

from earlyrl_jax.models.scoring import lockstep_chunks
from earlyrl_jax.teacher.judges.base import Counts, check_axis, check_rows
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder, bos_ids
from earlyrl_jax.teacher.prompts.text import DEFAULT_LIMITS, PromptLimits


def _pow2(n: int, lo: int = 8) -> int:
  return max(lo, 1 << max(0, (n - 1).bit_length()))


class _VerdictScorer:
  """Fallback for models/scoring.Scorer.verdict_logprobs: last-position log-probs of a few ids.

  Right-padded rows bucketed to (power-of-two batch, multiple-of-32 length); only the
  last hidden state of each row goes through the vocabulary projection.
  """

  def __init__(self, graphdef, *, pad_id: int = 0, mesh=None):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    self.pad_id, self.mesh = pad_id, mesh

    def fn(params, tokens_BxL, lengths_B, ids_C):
      model = nnx.merge(graphdef, params)
      B, L = tokens_BxL.shape
      seg = (jnp.arange(L)[None, :] < lengths_B[:, None]).astype(jnp.int32)
      h, _ = model.hidden_states(tokens_BxL, segment_ids=seg)
      last = h[jnp.arange(B), jnp.maximum(lengths_B - 1, 0)]
      logits = model.logits_from_hidden(last[:, None, :])[:, 0]
      return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, ids_C]

    self._fn = jax.jit(fn)

  def verdict_logprobs(self, params, prompts, candidate_ids) -> np.ndarray:
    import jax
    import jax.numpy as jnp
    from earlyrl_jax.parallel import mesh as mesh_lib
    n = len(prompts)
    L = max(32, -(-max(len(p) for p in prompts) // 32) * 32)
    B = _pow2(n)
    toks = np.full((B, L), self.pad_id, np.int32)
    lens = np.ones((B,), np.int32)
    for i, p in enumerate(prompts):
      toks[i, :len(p)] = p
      lens[i] = len(p)
    with mesh_lib.use_mesh(self.mesh):
      out = self._fn(params, jnp.asarray(toks), jnp.asarray(lens), jnp.asarray(candidate_ids, jnp.int32))
    return np.asarray(jax.device_get(out))[:n]


def _make_scorer(graphdef, pad_id, mesh, scorer):
  if scorer is not None and scorer != "auto":
    return scorer
  if scorer == "auto":
    try:
      from earlyrl_jax.models import scoring
      return scoring.Scorer(graphdef, mesh=mesh, pad_id=pad_id)
    except Exception:  # not there yet, or a different signature: the local fallback is exact
      pass
  return _VerdictScorer(graphdef, pad_id=pad_id, mesh=mesh)


def two_way(logp_Nx2: np.ndarray) -> np.ndarray:
  """P(first) = softmax over the two verdict log-probs (the rest of the vocabulary renormalised away)."""
  lp = np.asarray(logp_Nx2, np.float64)
  m = lp.max(axis=-1, keepdims=True)
  p = np.exp(lp - m)
  return (p[:, 0] / p.sum(axis=-1)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
  return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))).astype(np.float32)


JUDGE_FORMATS = ("pairwise", "scored")
PAIR_AXES = ("quality", "factuality")   # the axes compared in pairs (safety is pointwise)


class LMJudge(Counts):
  """Verdicts of a Flax LM from verdict-token log-probs, many rows per forward pass.

  Rows are sorted by length and scored in chunks of `batch_size`; rows that share a
  prefix share identical head token ids (the prompt puts the prefix first), which
  `models/shared_prefix.py` can exploit with one prefill per prefix.

  judge_format 'pairwise': one prompt per ordered pair (both candidates quoted), P(a > b)
  from the <<1>>/<<2>> verdicts. 'scored': one prompt per candidate and axis, its logit
  l = log P(<<GOOD>>) - log P(<<BAD>>), and P(a > b) = sigmoid(l_a - l_b) -- a Bradley-Terry
  comparison of scores, as a reward model makes it. Scored judging has no candidate order,
  so it has no position bias, and it needs C rows for C candidates (`score_axes`, which
  tournaments call) where all pairs in both orders need C(C-1).

  A teacher's recipe plugs in through three hooks, so this judge stays the same for every LM
  (the embedded teacher's `earlyrl_jax.embedded.judge.EmbeddedJudge` fills them from its one
  settings object, `JudgeRecipe`):
    mix {axis: (v, s)}   an axis's logit is v * (the verdict's logit) - s * (the candidate's
                         penalty), so P(a > b) = sigmoid(v (l_a - l_b) - s (pen_a - pen_b)) in
                         either format; v = 0 asks no verdict. Here (1, 0): the verdict alone.
    penalties(axes, prefixes, candidates) -> {axis: [n]} or None: each candidate's penalty,
                         asked only when some axis has s > 0. Here None.
    safety_texts(candidate) -> [texts]: P(unsafe) is the largest over them. Here the candidate.
  """

  def __init__(self, graphdef, params, tokenizer, *, max_len: int, mesh=None,
               limits: PromptLimits = DEFAULT_LIMITS, batch_size: int = 64, scorer="auto",
               shared_prefix: bool | None = None, model_cfg=None, judge_format: str = "pairwise"):
    if judge_format not in JUDGE_FORMATS:
      raise ValueError(f"judge_format={judge_format!r}: expected one of {JUDGE_FORMATS}")
    self.judge_format = judge_format
    self.mix = {axis: (1.0, 0.0) for axis in PAIR_AXES}
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.encoder = PromptEncoder(tokenizer, max_len=max_len, limits=limits)
    self.batch_size = batch_size
    self.scorer = _make_scorer(graphdef, tokenizer.pad_id, mesh, scorer)
    self.shared = None
    if shared_prefix is None:
      shared_prefix = scorer == "auto" and model_cfg is not None
    if shared_prefix:
      from earlyrl_jax.models.shared_prefix import SharedPrefixScorer
      self.shared = SharedPrefixScorer(graphdef, cfg=model_cfg, mesh=mesh, pad_id=tokenizer.pad_id)
    self.calls = 0
    self.forward_rows = 0

  def _score(self, parts: list[tuple[list[int], list[int]]], ids: list[int]) -> np.ndarray:
    """Verdict log-probs of rows given as (shared head, tail); heads are prefilled once per group.

    Multi-host: each process passes its own rows, and every process makes the same number of
    forward calls (they hold collectives); one with fewer rows runs a one-token row whose
    verdict is dropped.
    """
    out = np.zeros((len(parts), len(ids)), np.float32)
    self.forward_rows += len(parts)
    if self.shared is None:   # by length, so a chunk pads little
      order = np.argsort([len(h) + len(t) for h, t in parts], kind="stable")
    else:                     # by head, so a chunk prefills few heads
      order = sorted(range(len(parts)), key=lambda i: (tuple(parts[i][0]), len(parts[i][1])))
    filler = ([], bos_ids(self.tokenizer) or [self.tokenizer.pad_id])
    for chunk in lockstep_chunks(len(parts), self.batch_size):
      idx = list(order[chunk])
      lp = self._forward([parts[i] for i in idx] or [filler], ids)
      if idx:
        out[idx] = lp
    return out

  def _forward(self, chunk: list[tuple[list[int], list[int]]], ids: list[int]) -> np.ndarray:
    if self.shared is None:
      return self.scorer.verdict_logprobs(self.params, [list(h) + list(t) for h, t in chunk], ids)
    heads: dict[tuple, int] = {}
    group = [heads.setdefault(tuple(h), len(heads)) for h, _ in chunk]
    return self.shared.verdict_logprobs(self.params, [list(h) for h in heads],
                                        [t for _, t in chunk], group, ids)

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    return self.compare_axes(prefixes, a, b, axes=[axis], references=references)[axis]

  def compare_axes(self, prefixes, a, b, *, axes, references=None) -> dict[str, np.ndarray]:
    """`compare` on several axes in one batch of forward passes: the axes share the prompt head
    (instructions + quoted prefix), so each prefix is prefilled once for all of them, and a
    tournament round is one call instead of one per axis."""
    for axis in axes:
      check_axis(axis, ("quality", "factuality"))
    n = len(prefixes)
    check_rows(n, a=a, b=b, references=references)
    if n == 0 and jax.process_count() == 1:
      return {axis: np.zeros((0,), np.float32) for axis in axes}
    refs = references if references is not None else [None] * n
    if self.judge_format == "scored":   # score each distinct candidate once, then compare scores
      la = self.score_axes(list(prefixes) * 2, list(a) + list(b), axes=axes, references=list(refs) * 2)
      return {axis: sigmoid(la[axis][:n] - la[axis][n:]) for axis in axes}
    asked = [x for x in axes if self.mix[x][0] > 0]
    rows = [self.encoder.pair_parts(prefixes[i], a[i], b[i], axis, refs[i])
            for axis in asked for i in range(n)]
    self.calls += len(rows)
    # [rows, 2]; asked whenever an axis needs a verdict (every process in lockstep, rows or none)
    lp = self._score(rows, self.encoder.pair_ids).astype(np.float64) if asked else None
    s = self.penalties(axes, list(prefixes) * 2, list(a) + list(b))
    out = {}
    for axis in axes:   # P(a > b) = softmax over the two mixed logits: v * log p(verdict) - s * penalty
      vw, sw = self.mix[axis]
      mixed = np.zeros((n, 2))
      if vw > 0:
        k = asked.index(axis)
        mixed += vw * lp[k * n:(k + 1) * n]
      if sw > 0:
        mixed -= sw * np.stack([s[axis][:n], s[axis][n:]], axis=1)
      out[axis] = two_way(mixed)
    return out

  def penalties(self, axes, prefixes, candidates) -> dict[str, np.ndarray] | None:
    """{axis: each candidate's penalty [n]} for the axes whose mix weighs one (none here)."""
    del axes, prefixes, candidates
    return None

  def safety_texts(self, candidate: str) -> list[str]:
    """The texts whose largest P(unsafe) is the candidate's: the candidate itself here."""
    return [candidate]

  def score_axes(self, prefixes, candidates, *, axes, references=None) -> dict[str, np.ndarray]:
    """Per-candidate logits l = log P(good) - log P(bad) on each axis [n] (scored format only).

    Identical (prefix, candidate, reference) rows are scored once. Multi-host: each process
    passes its own rows (the forward passes stay in lockstep, see `_score`)."""
    if self.judge_format != "scored":
      raise ValueError("score_axes needs judge_format='scored' (this judge compares pairs)")
    for axis in axes:
      check_axis(axis, tuple(P.SCORE_HELP))
    n = len(prefixes)
    check_rows(n, candidates=candidates, references=references)
    refs = references if references is not None else [None] * n
    if n == 0 and jax.process_count() == 1:
      return {axis: np.zeros((0,), np.float32) for axis in axes}
    asked = [x for x in axes if self.mix.get(x, (1.0, 0.0))[0] > 0]
    keys: dict[tuple, int] = {}
    slot = [[keys.setdefault((axis, prefixes[i], candidates[i], refs[i] if axis == "factuality" else None),
                             len(keys)) for i in range(n)] for axis in asked]
    logit = np.zeros((0,), np.float64)
    if asked:
      rows = [self.encoder.score_parts(p, c, axis, r) for axis, p, c, r in keys]
      self.calls += len(rows)
      lp = self._score(rows, self.encoder.score_ids).astype(np.float64)
      logit = lp[:, 0] - lp[:, 1]
    s = self.penalties([x for x in axes if x in self.mix], prefixes, candidates)
    out = {}
    for axis in axes:
      vw, sw = self.mix.get(axis, (1.0, 0.0))
      v = vw * logit[np.asarray(slot[asked.index(axis)], np.int64)] if vw > 0 else 0.0
      out[axis] = np.asarray(v - sw * s[axis] if sw else v, np.float32).reshape(n)
    return out

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    """P(unsafe) of each candidate [n]: the largest over its `safety_texts`."""
    check_axis(axis, ("safety",))
    n = len(prefixes)
    check_rows(n, candidates=candidates)
    if n == 0 and jax.process_count() == 1:
      return np.zeros((0,), np.float32)
    cuts = [self.safety_texts(c) for c in candidates]
    keys: dict[tuple, int] = {}   # identical (prefix, cut) rows are scored once
    slots = [[keys.setdefault((prefixes[i], cut), len(keys)) for cut in cuts[i]] for i in range(n)]
    rows = [self.encoder.point_parts(p, cut, axis) for p, cut in keys]
    self.calls += len(rows)
    p_bad = two_way(self._score(rows, self.encoder.point_ids))
    return np.array([p_bad[s].max() for s in slots], np.float32).reshape(n)
