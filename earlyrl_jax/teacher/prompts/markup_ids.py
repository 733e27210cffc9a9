"""The markup family's prompts as token ids: one code path for SFT and for judging.

The embedded teacher is trained on exactly the ids its judge and editor later read: both go
through `PromptEncoder`. Prompts put the shared part (instructions + quoted prefix) first, so
rows of one prefix share identical head ids (`*_parts` return them apart, for one prefill per
head: models/shared_prefix.py).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import DEFAULT_LIMITS, PromptLimits


def bos_ids(tokenizer) -> list[int]:
  """[BOS] when the tokenizer has one, else []: what every encoded prompt starts with."""
  return [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []


def fit_ids(ids_head: list[int], ids_tail: list[int], max_len: int) -> list[int]:
  """head + tail within max_len tokens; the head (prefix) gives way first, the tail's end is kept."""
  if len(ids_head) + len(ids_tail) <= max_len:
    return ids_head + ids_tail
  room = max_len - len(ids_tail)
  if room > 4:
    return ids_head[:room]  + ids_tail
  return (ids_head[:1] + ids_tail)[-max_len:]


class PromptEncoder:
  """Text prompts -> token ids, identical for SFT and for judging (one code path)."""

  def __init__(self, tokenizer, *, max_len: int, limits: PromptLimits = DEFAULT_LIMITS):
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
    return tuple(bos_ids(self.tokenizer) + self.tokenizer.encode(head))

  def edit(self, prefix: str, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    """Edit prompt ids and the index of each CHECK token (one per checked sentence, in order)."""
    return self._checked("edit", prefix, sentences)

  def claims(self, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    """Claims prompt ids (no prefix: P.claims_head) and the index of each CHECK token."""
    return self._checked("claims", "", sentences)

  def _checked(self, kind: str, prefix: str, sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    check = P.verdict_ids(self.tokenizer, (P.CHECK,))[0]
    ids = fit_ids(list(self._head(kind, prefix)), self.tokenizer.encode(P.edit_tail(sentences, self.limits)),
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
    return [], fit_ids(head, tail, self.max_len - 1)

  def pair_parts(self, prefix, a, b, axis, reference=None):
    return self._parts("pair", prefix, P.pair_tail(a, b, axis, reference, self.limits))

  def point_parts(self, prefix, candidate, axis="safety"):
    return self._parts("point", prefix, P.point_tail(candidate, axis, self.limits))

  def score_parts(self, prefix, candidate, axis, reference=None):
    return self._parts("score", prefix, P.score_tail(candidate, axis, reference, self.limits))

  def rewrite(self, prefix, suffix, max_new_tokens: int = 0) -> list[int]:
    ids = bos_ids(self.tokenizer) + self.tokenizer.encode(P.rewrite_prompt(prefix, suffix, self.limits))
    room = self.max_len - max_new_tokens
    return ids if len(ids) <= room else ids[:1] + ids[len(ids) - room + 1:]
