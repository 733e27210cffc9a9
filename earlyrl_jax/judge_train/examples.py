"""Labelled items -> verdict examples in the paper's formats, and their token rows.

Each example is one prompt of one format (teacher/prompts/paper.py) with the answer option the
label asks for:

  quality pair, label 'a'     quality(prefix, a, b) -> ' Option 1'  and  quality(prefix, b, a)
                              -> ' Option 2' (both orders, as the paper trains and as the judge
                              is asked in SIP: position bias cannot pay)
  factuality pair, label 'a'  factuality(prefix, reference, a) -> ' No' (no hallucination) and
                              factuality(..., b) -> ' Definite': the pointwise format learns the
                              pair's order (the judge compares the two scores)
  safety pair, label 'a'      safety(b) -> ' YES' (unsafe), safety(a) -> ' NO'
  safety point                safety(text) -> ' YES' if 'unsafe' else ' NO'

Prompts are rendered by the judge's own prompt family (`PaperJudge.prompts`), so training sees
byte for byte what `LogProbJudge` / `GenerativeJudge` send; `scoring_ids` is the judge's own
tokenization rule (the option's tokens start where the prompt's text ends).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from earlyrl_jax.judge_train.data import Point
from earlyrl_jax.teacher.backends.base import prompt_ids, scoring_ids
from earlyrl_jax.teacher.prompts.paper import ANSWER_LEAD, OPTIONS, VALUES


@dataclasses.dataclass(frozen=True)
class Example:
  fmt: str       # 'quality' | 'factuality' | 'safety'
  fields: tuple  # the format's arguments: (prefix, a, b) | (prefix, reference, candidate) | (candidate,)
  answer: int    # index into paper.OPTIONS[fmt]

  @property
  def option(self) -> str:
    return OPTIONS[self.fmt][self.answer]

  @property
  def value(self) -> float:
    """The verdict's value the label asks for (paper.VALUES; what `parse_answer` returns)."""
    return VALUES[self.fmt][self.answer]

  def prompt(self, prompts, variant: str) -> str:
    return getattr(prompts, self.fmt)(*self.fields, variant=variant)


def examples_of(items, axes=("quality", "factuality", "safety")) -> list[Example]:
  """The verdict examples of `items` on `axes` (module docstring); ties give none."""
  out = []
  for it in items:
    if isinstance(it, Point):
      if "safety" in axes:
        out.append(Example("safety", (it.text,), 0 if it.safety == "unsafe" else 1))
      continue
    for axis, label in it.labels.items():
      if label == "tie" or axis not in axes:
        continue
      good, bad = (it.a, it.b) if label == "a" else (it.b, it.a)
      if axis == "quality":
        out.append(Example("quality", (it.prefix, it.a, it.b), 0 if label == "a" else 1))
        out.append(Example("quality", (it.prefix, it.b, it.a), 1 if label == "a" else 0))
      elif axis == "factuality":
        out.append(Example("factuality", (it.prefix, it.reference, good), 0))
        out.append(Example("factuality", (it.prefix, it.reference, bad), 2))
      else:
        out.append(Example("safety", (bad,), 0))
        out.append(Example("safety", (good,), 1))
  return out


def generative_target(ex: Example) -> str:
  """The final line a generative verdict must end with ('Answer: Option 1')."""
  return f"{ANSWER_LEAD} {ex.option.strip()}"


def sft_ids(tokenizer, prompt: str, ex: Example, variant: str) -> tuple[list[int], int]:
  """(ids, k0): the tokens of prompt + answer, the answer's from k0. 'logprob': the option after
  the forced lead, tokenized exactly as the log-prob judge scores it; 'generative': the reply
  'Answer: <option>' then EOS (the model learns to stop after its verdict)."""
  if variant == "logprob":
    return scoring_ids(tokenizer, prompt, ex.option)
  ids = prompt_ids(tokenizer, prompt)
  reply = list(tokenizer.encode_continuation(generative_target(ex)))
  eos = getattr(tokenizer, "eos_id", None)
  return ids + reply + ([eos] if eos is not None else []), len(ids)


def rows_of(seqs: list[tuple[list[int], int]], length: int) -> dict[str, np.ndarray]:
  """Right-padded rows [n, length] of (ids, k0): loss on the tokens from k0 (targets at t are
  ids[t + 1], masked where t + 1 >= k0)."""
  n = len(seqs)
  rows = {k: np.zeros((n, length), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
  rows["loss_mask"] = np.zeros((n, length), np.float32)
  for i, (ids, k0) in enumerate(seqs):
    L = len(ids)
    if L > length:
      raise ValueError(f"a row of {L} tokens exceeds the row length {length}")
    rows["tokens"][i, :L] = ids
    rows["targets"][i, :L - 1] = ids[1:]
    rows["segment_ids"][i, :L] = 1
    rows["positions"][i, :L] = np.arange(L)
    rows["loss_mask"][i, k0 - 1:L - 1] = 1.0
  return rows


def round_up(n: int, m: int = 32) -> int:
  return -(-int(n) // m) * m


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """int [steps, batch_size]: the examples of each step, epoch after epoch of fresh permutations
  (a function of the step: a resumed run draws the same; fewer examples than a batch repeat)."""
  rng = np.random.default_rng(seed)
  need = steps * batch_size
  perms = [rng.permutation(n) for _ in range(-(-need // n))]
  return np.concatenate(perms)[:need].reshape(steps, batch_size)
