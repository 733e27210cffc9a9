"""GenerativeJudge: reason, then a verdict line, for teachers without one-token verdicts.

Any instruct model judges this way (`sampler_generate` runs it in-process through our compiled
sampler). An output without a readable verdict is a tie, counted in `unparsable`.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from earlyrl_jax.models.scoring import lockstep_chunks
from earlyrl_jax.teacher.judges.base import Counts, check_axis, check_rows
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import bos_ids
from earlyrl_jax.teacher.prompts.text import DEFAULT_LIMITS, PromptLimits


class GenerativeJudge(Counts):
  """Reason-then-verdict judging for instruct teachers; unparsable output is a counted tie.

  generate: list of prompt strings -> list of generated strings (e.g. `sampler_generate`).
  """

  def __init__(self, generate: Callable[[list[str]], list[str]], *,
               limits: PromptLimits = DEFAULT_LIMITS):
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
    check_axis(axis, ("quality", "factuality"))
    n = len(prefixes)
    check_rows(n, a=a, b=b, references=references)
    refs = references if references is not None else [None] * n
    return self._run([P.generative_pair_prompt(prefixes[i], a[i], b[i], axis, refs[i], self.limits)
                      for i in range(n)], "pair")

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    check_axis(axis, ("safety",))
    check_rows(len(prefixes), candidates=candidates)
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
    ids = [bos_ids(tokenizer) + tokenizer.encode(t) for t in texts]
    out_texts: list[str] = []
    for rows in lockstep_chunks(len(ids), chunk):
      part = ids[rows]
      counter[0] += 1
      out = sampler(part or [bos_ids(tokenizer) or [tokenizer.pad_id]], max_new_tokens=max_new_tokens,
                    key=jax.random.key(seed + counter[0]), temperature=temperature,
                    stop_tokens=[tokenizer.eos_id] if tokenizer.eos_id is not None else ())
      if part:
        out_texts.extend(out.texts(tokenizer))
    return out_texts

  return generate
