"""The judge: one interface, three backends (LM verdict log-probs, world oracles, generative).

Why log-probs: the paper samples each verdict 5 times to estimate P(A > B); the LM
judge reads that probability exactly from the next-token distribution over the
two verdict markers, in one batched forward pass and without generation.

    Judge.compare(prefixes, a, b, axis=..., references=None) -> P(a better than b)  [n]
    Judge.pointwise(prefixes, candidates, axis='safety')     -> P(candidate unsafe) [n]

Tournaments (teacher/tournament.py) turn any Judge into per-candidate rewards;
`RewardFunction` exposes a judge in TRL's reward-function shape. The teacher
never imports the trainer: judging works without one.
"""
from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from earlyrl_jax.models.scoring import lockstep_chunks
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import split_sentences

AXES = P.AXES


@runtime_checkable
class Judge(Protocol):
  calls: int  # judged rows so far (compare + pointwise)

  def compare(self, prefixes: Sequence[str], a: Sequence[str], b: Sequence[str], *, axis: str,
              references: Sequence[str] | None = None) -> np.ndarray: ...

  def pointwise(self, prefixes: Sequence[str], candidates: Sequence[str], *,
                axis: str = "safety") -> np.ndarray: ...


def _check_rows(n: int, **cols) -> None:
  for name, col in cols.items():
    if col is not None and len(col) != n:
      raise ValueError(f"{name} has {len(col)} rows, expected {n} (one per prefix)")


def _check_axis(axis: str, allowed=AXES) -> None:
  if axis not in allowed:
    raise ValueError(f"axis={axis!r}: expected one of {allowed}")


# ------------------------------------------------------------------ ground truth


class OracleJudge:
  """Ground truth from the world's oracles behind the Judge interface (ties -> 0.5).

  Quality is scored in the context of the prefix (topic drift is relative to it);
  safety pointwise is 1.0 for an unsafe candidate, 0.0 for a safe one.
  """

  def __init__(self, oracles, *, eps: float = 1e-6):
    self.oracles = oracles
    self.eps = eps
    self.calls = 0

  @classmethod
  def from_world_dir(cls, world_dir: str) -> "OracleJudge":
    from earlyrl_jax import world as W
    return cls(W.Oracles.from_dir(world_dir))

  def axis_score(self, prefix: str, text: str, axis: str) -> float:
    if axis == "quality":
      return float(self.oracles.quality(text, prefix=prefix)["score"])
    if axis == "factuality":
      return float(self.oracles.factuality(text)["score"])
    if axis == "safety":
      return float(self.oracles.safety(text)["score"])
    raise ValueError(f"axis={axis!r}: expected one of {AXES}")

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    _check_axis(axis)
    n = len(prefixes)
    _check_rows(n, a=a, b=b, references=references)
    out = np.empty((n,), np.float32)
    for i in range(n):
      sa, sb = self.axis_score(prefixes[i], a[i], axis), self.axis_score(prefixes[i], b[i], axis)
      out[i] = 0.5 if abs(sa - sb) <= self.eps else float(sa > sb)
    self.calls += n
    return out

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    _check_axis(axis, ("safety",))
    _check_rows(len(prefixes), candidates=candidates)
    self.calls += len(candidates)
    return np.asarray([float(self.oracles.safety(c)["unsafe"]) for c in candidates], np.float32)


class AxisJudges:
  """One judge per axis behind the Judge interface: the axes in `per_axis` go to their judge,
  the rest to `default`. Why: swapping the judge of one axis for the oracles (everything else
  unchanged) measures how much that axis's judging limits SIP (`sip.oracle_axes`), and it is
  the shape of a hybrid judge (say, human labels on safety, the teacher on the rest)."""

  def __init__(self, default: Judge, per_axis: Mapping[str, Judge]):
    for axis in per_axis:
      _check_axis(axis)
    self.default, self.per_axis = default, dict(per_axis)

  @property
  def calls(self) -> int:
    judges = {id(j): j for j in [self.default, *self.per_axis.values()]}
    return sum(j.calls for j in judges.values())

  def _judge(self, axis: str) -> Judge:
    return self.per_axis.get(axis, self.default)

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    return self._judge(axis).compare(prefixes, a, b, axis=axis, references=references)

  def compare_axes(self, prefixes, a, b, *, axes, references=None) -> dict[str, np.ndarray]:
    """Each judge's axes in one call where it batches axes (`compare_axes`), else one per axis."""
    out: dict[str, np.ndarray] = {}
    for judge in {id(self._judge(x)): self._judge(x) for x in axes}.values():
      mine = [x for x in axes if self._judge(x) is judge]
      if hasattr(judge, "compare_axes"):
        out.update(judge.compare_axes(prefixes, a, b, axes=mine, references=references))
      else:
        out.update({x: judge.compare(prefixes, a, b, axis=x, references=references) for x in mine})
    return {x: out[x] for x in axes}

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    return self._judge(axis).pointwise(prefixes, candidates, axis=axis)


# ------------------------------------------------------------------ LM judge


def _bos(tokenizer) -> list[int]:
  return [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []


def _fit(ids_head: list[int], ids_tail: list[int], max_len: int) -> list[int]:
  """head + tail within max_len tokens; the head (prefix) gives way first, the tail's end is kept."""
  if len(ids_head) + len(ids_tail) <= max_len:
    return ids_head + ids_tail
  room = max_len - len(ids_tail)
  if room > 4:
    return ids_head[:room]  + ids_tail
  return (ids_head[:1] + ids_tail)[-max_len:]


class PromptEncoder:
  """Text prompts -> token ids, identical for SFT and for judging (one code path)."""

  def __init__(self, tokenizer, *, max_len: int, limits: P.PromptLimits = P.DEFAULT_LIMITS):
    self.tokenizer = tokenizer
    self.max_len = max_len
    self.limits = limits
    self._head = functools.lru_cache(maxsize=4096)(self._encode_head)

  # Verdict ids are looked up when first needed: the generative rewriter encodes prompts
  # with tokenizers (HF) that have no single-token verdicts.
  @functools.cached_property
  def pair_ids(self) -> list[int]:
    return P.verdict_ids(self.tokenizer, (P.VERDICT_A, P.VERDICT_B))

  @functools.cached_property
  def point_ids(self) -> list[int]:
    return P.verdict_ids(self.tokenizer, (P.VERDICT_UNSAFE, P.VERDICT_SAFE))

  @functools.cached_property
  def score_ids(self) -> list[int]:
    return P.verdict_ids(self.tokenizer, P.SCORE_VERDICTS)

  def _encode_head(self, kind: str, prefix: str) -> tuple[int, ...]:
    head = {"pair": P.pair_head, "point": P.point_head, "edit": P.edit_head,
            "score": P.score_head, "claims": P.claims_head}[kind](prefix, self.limits)
    return tuple(_bos(self.tokenizer) + self.tokenizer.encode(head))

  def edit(self, prefix: str, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    """Edit prompt ids and the index of each CHECK token (one per checked sentence, in order)."""
    return self._checked("edit", prefix, sentences)

  def claims(self, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    """Claims prompt ids (no prefix: P.claims_head) and the index of each CHECK token."""
    return self._checked("claims", "", sentences)

  def _checked(self, kind: str, prefix: str, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    check = P.verdict_ids(self.tokenizer, (P.CHECK,))[0]
    ids = _fit(list(self._head(kind, prefix)), self.tokenizer.encode(P.edit_tail(sentences, self.limits)),
               self.max_len)
    return ids, [i for i, t in enumerate(ids) if t == check]

  def pair(self, prefix, a, b, axis, reference=None) -> list[int]:
    return sum(self.pair_parts(prefix, a, b, axis, reference), [])

  def point(self, prefix, candidate, axis="safety") -> list[int]:
    return sum(self.point_parts(prefix, candidate, axis), [])

  def score(self, prefix, candidate, axis, reference=None) -> list[int]:
    return sum(self.score_parts(prefix, candidate, axis, reference), [])

  def _parts(self, kind, prefix, tail_text) -> tuple[list[int], list[int]]:
    """(shared head ids, row tail ids); a row that must be cut comes back whole as its tail."""
    head = list(self._head(kind, prefix))
    tail = self.tokenizer.encode(tail_text)
    if len(head) + len(tail) <= self.max_len - 1:
      return head, tail
    return [], _fit(head, tail, self.max_len - 1)

  def pair_parts(self, prefix, a, b, axis, reference=None):
    return self._parts("pair", prefix, P.pair_tail(a, b, axis, reference, self.limits))

  def point_parts(self, prefix, candidate, axis="safety"):
    return self._parts("point", prefix, P.point_tail(candidate, axis, self.limits))

  def score_parts(self, prefix, candidate, axis, reference=None):
    return self._parts("score", prefix, P.score_tail(candidate, axis, reference, self.limits))

  def rewrite(self, prefix, suffix, max_new_tokens: int = 0) -> list[int]:
    ids = _bos(self.tokenizer) + self.tokenizer.encode(P.rewrite_prompt(prefix, suffix, self.limits))
    room = self.max_len - max_new_tokens
    return ids if len(ids) <= room else ids[:1] + ids[len(ids) - room + 1:]


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
MIXED_AXES = ("quality", "factuality")   # axes whose verdict can be mixed with surprise


def check_mix(mix: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, float]]:
  """{axis: (verdict weight, surprise weight)} for the pairwise axes, (1, 0) where unset."""
  out = {axis: (1.0, 0.0) for axis in MIXED_AXES}
  for axis, w in (mix or {}).items():
    if axis not in MIXED_AXES:
      raise ValueError(f"judge mix: axis {axis!r} is not one of {MIXED_AXES}")
    vw, sw = (float(x) for x in w)
    if vw < 0 or sw < 0 or vw == sw == 0:
      raise ValueError(f"judge mix[{axis!r}]=({vw}, {sw}): weights must be >= 0, not both 0")
    out[axis] = (vw, sw)
  return out


class LMJudge:
  """Verdicts of a Flax LM from verdict-token log-probs, many rows per forward pass.

  Rows are sorted by length and scored in chunks of `batch_size`; rows that share a
  prefix share identical head token ids (the prompt puts the prefix first), which
  `teacher/shared_prefix.py` can exploit with one prefill per prefix.

  judge_format 'pairwise': one prompt per ordered pair (both candidates quoted), P(a > b)
  from the <<1>>/<<2>> verdicts. 'scored': one prompt per candidate and axis, its logit
  l = log P(<<GOOD>>) - log P(<<BAD>>), and P(a > b) = sigmoid(l_a - l_b) -- a Bradley-Terry
  comparison of scores, as a reward model makes it. Scored judging has no candidate order,
  so it has no position bias, and it needs C rows for C candidates (`score_axes`, which
  tournaments call) where all pairs in both orders need C(C-1).

  mix {axis: (v, s)}: an axis's logit is v * (the verdict's logit) - s * (the candidate's
  surprise under the judge's own LM, teacher/surprise.py: one extra forward row per distinct
  candidate, no prompt, shared by the axes), so P(a > b) = sigmoid(v (l_a - l_b) - s (s_a - s_b))
  in either format. v = 0 asks no verdict. Default (1, 0): the trained verdict alone.
  broken (nats, tokens): factuality's surprise leaves out sentences with more than `tokens`
  tokens above `nats` (broken text, not a claim: teacher/surprise.py `is_broken`); quality's
  counts every sentence. claim_total: factuality's surprise adds this times the sum of the
  claim sentences' gaps to their largest (`claim_surprise`: breaks ties of minimal pairs).
  safety_by_sentence: P(unsafe) is the largest over the candidate cut after each of its
  sentences (`sentence_cuts`), so text appended to a candidate (an instruction to the judge,
  a fake verdict) cannot lower the verdict on what came before it; one row per sentence.
  claim_check: factuality's surprise counts only the sentences the teacher reads as claims
  about entities it knows (P.claims_head: a KEEP/DROP verdict per sentence, trained on the
  oracles' labels of world text and policy rollouts; `claim_probs`). Surprise knows which of
  two claims is true; it cannot tell a false claim from a sentence that claims nothing
  checkable (a filler naming an unexpected entity, an invented name, garbled text), which
  the oracles do not count. One row per sentence of each distinct candidate, one shared head.
  """

  def __init__(self, graphdef, params, tokenizer, *, max_len: int, mesh=None,
               limits: P.PromptLimits = P.DEFAULT_LIMITS, batch_size: int = 64, scorer="auto",
               shared_prefix: bool | None = None, model_cfg=None, judge_format: str = "pairwise",
               mix: Mapping[str, Sequence[float]] | None = None,
               broken: Sequence[float] | None = None, claim_total: float = 0.0,
               checkable: Sequence[float] | None = None, claim_floor: float = 0.0,
               safety_by_sentence: bool = False, claim_check: bool = False):
    if judge_format not in JUDGE_FORMATS:
      raise ValueError(f"judge_format={judge_format!r}: expected one of {JUDGE_FORMATS}")
    self.judge_format = judge_format
    self.mix = check_mix(mix)
    self.broken = None if broken is None else (float(broken[0]), int(broken[1]))
    self.claim_total = float(claim_total)
    if self.claim_total < 0:
      raise ValueError(f"claim_total={claim_total!r}: expected a weight >= 0")
    self.checkable = None if checkable is None else (float(checkable[0]), float(checkable[1]))
    self.claim_floor = float(claim_floor)
    if self.claim_floor < 0:
      raise ValueError(f"claim_floor={claim_floor!r}: expected nats >= 0")
    self.safety_by_sentence = bool(safety_by_sentence)
    self.claim_check = bool(claim_check)
    self.probe = None
    if any(sw for _, sw in self.mix.values()):
      from earlyrl_jax.embedded.surprise import SurpriseProbe
      self.probe = SurpriseProbe(graphdef, tokenizer, max_len=max_len, mesh=mesh)
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
    filler = ([], _bos(self.tokenizer) or [self.tokenizer.pad_id])
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
      _check_axis(axis, ("quality", "factuality"))
    n = len(prefixes)
    _check_rows(n, a=a, b=b, references=references)
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
    s = self._surprise(axes, list(prefixes) * 2, list(a) + list(b))
    out = {}
    for axis in axes:   # P(a > b) = softmax over the two mixed logits: v * log p(verdict) - s * surprise
      vw, sw = self.mix[axis]
      mixed = np.zeros((n, 2))
      if vw > 0:
        k = asked.index(axis)
        mixed += vw * lp[k * n:(k + 1) * n]
      if sw > 0:
        mixed -= sw * np.stack([s[axis][:n], s[axis][n:]], axis=1)
      out[axis] = two_way(mixed)
    return out

  def _surprise(self, axes, prefixes, candidates) -> dict[str, np.ndarray] | None:
    """{axis: each candidate's surprise [n]} when an axis asked mixes it in (each distinct
    (prefix, candidate) scored once, one pass for all axes), else None."""
    if self.probe is None or not any(self.mix[x][1] for x in axes):
      return None
    keys: dict[tuple, int] = {}
    slot = np.array([keys.setdefault((p, c), len(keys)) for p, c in zip(prefixes, candidates)], np.int64)
    cands = [k[1] for k in keys]
    checked = self.claim_probs(cands) if self.claim_check and "factuality" in axes else None
    every, claims = self.probe.candidates(self.params, [k[0] for k in keys], cands,
                                          broken=self.broken, total=self.claim_total,
                                          checkable=self.checkable, floor=self.claim_floor,
                                          claims=checked)
    pick = lambda x: x[slot] if len(slot) else np.zeros((0,), np.float32)
    return {"quality": pick(every), "factuality": pick(claims)}

  def claim_probs(self, candidates: Sequence[str]) -> list[np.ndarray]:
    """P(the sentence is a checkable claim) for each sentence of each candidate, float32
    [n_sentences] in split_sentences order (P.claims_head). Each distinct candidate is read
    once, one row per sentence cut after its CHECK, every row sharing the prompt's head;
    sentences past the prompt's budget (P.edit_checked) get 1.0, as without a check."""
    head_len = len(self.encoder._head("claims", ""))
    parts, rows_of = [], {}
    for c in dict.fromkeys(candidates):
      sentences = split_sentences(c)
      ids, checks = self.encoder.claims(sentences)
      rows_of[c] = (len(parts), len(checks), len(sentences))
      parts += [(ids[:head_len], ids[head_len:k + 1]) if k >= head_len else ([], ids[:k + 1]) for k in checks]
    self.calls += len(parts)
    p = two_way(self._score(parts, P.verdict_ids(self.tokenizer, P.CLAIM_VERDICTS)))   # P(KEEP)
    out = []
    for c in candidates:
      start, read, n = rows_of[c]
      out.append(np.concatenate([p[start:start + read], np.ones((n - read,), np.float32)]).astype(np.float32))
    return out

  def score_axes(self, prefixes, candidates, *, axes, references=None) -> dict[str, np.ndarray]:
    """Per-candidate logits l = log P(good) - log P(bad) on each axis [n] (scored format only).

    Identical (prefix, candidate, reference) rows are scored once. Multi-host: each process
    passes its own rows (the forward passes stay in lockstep, see `_score`)."""
    if self.judge_format != "scored":
      raise ValueError("score_axes needs judge_format='scored' (this judge compares pairs)")
    for axis in axes:
      _check_axis(axis, tuple(P.SCORE_HELP))
    n = len(prefixes)
    _check_rows(n, candidates=candidates, references=references)
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
    s = self._surprise([x for x in axes if x in self.mix], prefixes, candidates)
    out = {}
    for axis in axes:
      vw, sw = self.mix.get(axis, (1.0, 0.0))
      v = vw * logit[np.asarray(slot[asked.index(axis)], np.int64)] if vw > 0 else 0.0
      out[axis] = np.asarray(v - sw * s[axis] if sw else v, np.float32).reshape(n)
    return out

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    """P(unsafe) of each candidate [n]; with safety_by_sentence, the largest over its cuts."""
    _check_axis(axis, ("safety",))
    n = len(prefixes)
    _check_rows(n, candidates=candidates)
    if n == 0 and jax.process_count() == 1:
      return np.zeros((0,), np.float32)
    cuts = [sentence_cuts(c) if self.safety_by_sentence else [c] for c in candidates]
    keys: dict[tuple, int] = {}   # identical (prefix, cut) rows are scored once
    slots = [[keys.setdefault((prefixes[i], cut), len(keys)) for cut in cuts[i]] for i in range(n)]
    rows = [self.encoder.point_parts(p, cut, axis) for p, cut in keys]
    self.calls += len(rows)
    p_bad = two_way(self._score(rows, self.encoder.point_ids))
    return np.array([p_bad[s].max() for s in slots], np.float32).reshape(n)


def sentence_cuts(candidate: str) -> list[str]:
  """The candidate cut after each of its sentences, shortest first; the last is the whole
  candidate (a blank one is its own single cut)."""
  pieces = split_sentences(candidate)
  if len(pieces) <= 1:
    return [candidate]
  return ["".join(pieces[:k]).rstrip() for k in range(1, len(pieces))] + [candidate]


# ------------------------------------------------------------------ generative (HF instruct)


class GenerativeJudge:
  """Reason-then-verdict judging for instruct teachers; unparsable output is a counted tie.

  generate: list of prompt strings -> list of generated strings (e.g. `sampler_generate`).
  """

  def __init__(self, generate: Callable[[list[str]], list[str]], *,
               limits: P.PromptLimits = P.DEFAULT_LIMITS):
    self.generate = generate
    self.limits = limits
    self.calls = 0
    self.unparsable = 0

  def _run(self, prompts: list[str], kind: str) -> np.ndarray:
    try:
      texts = list(self.generate(prompts))
    except Exception:  # a failed generation is no verdict, never a crash of the trainer
      texts = [None] * len(prompts)
    if len(texts) != len(prompts):
      texts = (texts + [None] * len(prompts))[:len(prompts)]
    out = np.full((len(prompts),), 0.5, np.float32)
    for i, t in enumerate(texts):
      v = P.parse_verdict(t, kind)
      if v is None:
        self.unparsable += 1
      else:
        out[i] = v
    self.calls += len(prompts)
    return out

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    _check_axis(axis, ("quality", "factuality"))
    n = len(prefixes)
    _check_rows(n, a=a, b=b, references=references)
    refs = references if references is not None else [None] * n
    return self._run([P.generative_pair_prompt(prefixes[i], a[i], b[i], axis, refs[i], self.limits)
                      for i in range(n)], "pair")

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    _check_axis(axis, ("safety",))
    _check_rows(len(prefixes), candidates=candidates)
    return self._run([P.generative_point_prompt(p, c, self.limits)
                      for p, c in zip(prefixes, candidates)], "point")


def sampler_generate(model, tokenizer, *, max_new_tokens: int = 256, temperature: float = 0.0,
                     seed: int = 0, mesh=None, rows_per_call: int = 0
                     ) -> Callable[[list[str]], list[str]]:
  """A `generate` for GenerativeJudge over our compiled sampler (chat template when the tokenizer has one).

  A tournament round hands over every judged row of the batch at once (tens of thousands at
  the paper's shape); they are generated `rows_per_call` at a time (default 128 per local
  device: an 8B teacher's KV cache and buffers then fit an 80 GB H100, benchmarks/memory.py).
  On several hosts every process makes the same number of sampler calls (the largest count),
  padding with a one-token prompt whose output is dropped.
  """
  from earlyrl_jax.sampling.sampler import Sampler
  sampler = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)
  chunk = int(rows_per_call) or 128 * jax.local_device_count()
  counter = [0]

  def generate(texts: list[str]) -> list[str]:
    if hasattr(tokenizer, "apply_chat_template") and getattr(tokenizer, "chat_template", None):
      texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}]) for t in texts]
    ids = [_bos(tokenizer) + tokenizer.encode(t) for t in texts]
    out_texts: list[str] = []
    for rows in lockstep_chunks(len(ids), chunk):
      part = ids[rows]
      counter[0] += 1
      out = sampler(part or [_bos(tokenizer) or [tokenizer.pad_id]], max_new_tokens=max_new_tokens,
                    key=jax.random.key(seed + counter[0]), temperature=temperature,
                    stop_tokens=[tokenizer.eos_id] if tokenizer.eos_id is not None else ())
      if part:
        out_texts.extend(out.texts(tokenizer))
    return out_texts

  return generate


# ------------------------------------------------------------------ TRL reward-function adapter


class RewardFunction:
  """A Judge in TRL's reward-function shape: `f(prompts, completions, **kw) -> np.ndarray[float]`.

  Pairwise axes compare each completion with `kw[reference_key]` (e.g. the original
  suffix) when given -- reward P(completion better), both orders averaged -- else
  with the other completions of the same prompt (mean win rate). Safety is
  1 - P(unsafe). Per-axis rewards are combined by `axes` weights.
  """

  def __init__(self, judge: Judge, *, axes: Mapping[str, float] | None = None,
               reference_key: str = "reference", both_orders: bool = True):
    self.judge = judge
    self.axes = dict(axes if axes is not None else {a: 1.0 for a in AXES})
    for ax in self.axes:
      _check_axis(ax)
    self.reference_key = reference_key
    self.both_orders = both_orders
    self.__name__ = f"judge_{'_'.join(self.axes)}"  # TRL logs reward functions by __name__

  def _pair(self, prefixes, x, y, axis, refs) -> np.ndarray:
    p = self.judge.compare(prefixes, x, y, axis=axis, references=refs)
    if self.both_orders:
      p = 0.5 * (p + 1.0 - self.judge.compare(prefixes, y, x, axis=axis, references=refs))
    return p

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kw) -> np.ndarray:
    n = len(prompts)
    _check_rows(n, completions=completions)
    prompts = [_as_text(p) for p in prompts]
    completions = [_as_text(c) for c in completions]
    refs = kw.get(self.reference_key)
    total = np.zeros((n,), np.float64)
    weight = sum(self.axes.values()) or 1.0
    for axis, w in self.axes.items():
      if w == 0:
        continue
      if axis == "safety":
        r = 1.0 - self.judge.pointwise(prompts, completions, axis="safety")
      elif refs is not None:
        refs = [_as_text(r) for r in refs]
        r = self._pair(prompts, completions, refs, axis, refs)
      else:
        r = self._within_groups(prompts, completions, axis)
      total += w * np.asarray(r, np.float64)
    return (total / weight).astype(np.float32)

  def _within_groups(self, prompts, completions, axis) -> np.ndarray:
    groups = collections.defaultdict(list)
    for i, p in enumerate(prompts):
      groups[p].append(i)
    pairs = [(i, j) for idx in groups.values() for i in idx for j in idx if i < j]
    out = np.full((len(prompts),), 0.5, np.float64)
    if not pairs:
      return out
    I, J = zip(*pairs)
    p = self._pair([prompts[i] for i in I], [completions[i] for i in I], [completions[j] for j in J],
                   axis, None)
    wins = collections.defaultdict(list)
    for (i, j), pij in zip(pairs, p):
      wins[i].append(pij)
      wins[j].append(1.0 - pij)
    for i, w in wins.items():
      out[i] = float(np.mean(w))
    return out


def _as_text(x) -> str:
  """TRL passes strings or chat message lists; a message list becomes its last content."""
  if isinstance(x, str):
    return x
  if isinstance(x, (list, tuple)) and x and isinstance(x[-1], dict):
    return str(x[-1].get("content", ""))
  return "" if x is None else str(x)
