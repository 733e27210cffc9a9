"""The contract between the teacher layer (prompts, judges, rewriters) and a model backend.

Prompts cross as *rendered text* (chat template already applied by the prompt family):
a served model then sees exactly what an in-process one sees, and both tokenize it with
the same tokenizer. The tokenizer is always local (prompt budgets are counted in the
teacher's own tokens, before anything is sent).

Failure semantics: a backend retries what is worth retrying; a row that still fails comes
back as NaN (`continuation_logprobs`) or None (`generate`) and is counted in `failures`,
never as a made-up value. Judges turn such rows into counted failed verdicts; the trainer
stops past a threshold (`TeacherFailure`). Configuration problems (an unreachable server
at start, a model the server does not serve) raise `TeacherFailure` at once.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class TeacherFailure(RuntimeError):
  """The teacher failed past what retries fix. The message names the teacher (`Backend.name`)
  and quotes one raw output or error, so the user sees what went wrong."""


@runtime_checkable
class Backend(Protocol):
  name: str            # names the teacher in logs and errors, e.g. "hf /models/SmolLM2 (in-process)"
  tokenizer: object    # data.tokenizer.Tokenizer of the teacher (local for every backend)
  max_len: int         # the teacher's context length in its tokens
  failures: collections.Counter  # failed rows by kind ("timeout", "http_500", "malformed", ...)

  def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """float64 [n]: log p(continuation | prompt) summed over the continuation's tokens.

    The tokens are those of `prompt + continuation` encoded whole (exactly one BOS where the
    model uses one; none added when the rendered text already starts with it); the
    continuation's tokens are the ones whose text starts at or after len(prompt) characters.
    Rows sharing a prompt share its prefill (in-process) or the server's prefix cache.
    NaN for a row that failed after retries.
    """
    ...

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, n: int = 1, stop: Sequence[str] = (), seed: int = 0
               ) -> list[list[str | None]]:
    """n completions per prompt: the generated text after the prompt, cut before the first stop
    string (EOS always stops). None for a sample that failed after retries."""
    ...


# --------------------------------------------------------------------------- the tokenization rule


def prompt_ids(tokenizer, text: str) -> list[int]:
  """Token ids of rendered text with exactly one BOS where the tokenizer's convention adds one
  (`data.tokenizer.adds_bos`): none added when the text already starts with it."""
  from earlyrl_jax.data.tokenizer import adds_bos
  ids = list(tokenizer.encode(text))
  bos = getattr(tokenizer, "bos_id", None)
  if adds_bos(tokenizer) and not (ids and ids[0] == bos):
    ids = [bos] + ids
  return ids


def scoring_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
  """(ids of prompt + continuation encoded whole, k0): the continuation's tokens are ids[k0:],
  those whose text starts at or after len(prompt) characters. Both backends use exactly this,
  so in-process and served log-probs are of the same tokens."""
  from earlyrl_jax.data.tokenizer import adds_bos
  text = prompt + continuation
  ids, bounds = tokenizer.encode_with_offsets(text)
  ids = list(ids)
  cut = len(prompt)
  k0 = next((k for k in range(len(ids)) if bounds[k] >= cut), len(ids))
  bos = getattr(tokenizer, "bos_id", None)
  if adds_bos(tokenizer) and not (ids and ids[0] == bos):
    ids, k0 = [bos] + ids, k0 + 1
  if k0 == 0:
    raise ValueError(f"prompt {prompt[:60]!r} has no token before its continuation (an empty "
                     "prompt needs a BOS)")
  if k0 == len(ids):
    raise ValueError(f"continuation {continuation[:60]!r} has no token of its own after prompt "
                     f"...{prompt[-60:]!r}: its first token merges with the prompt's end (end the "
                     "prompt before the space, e.g. 'Answer:' + ' Yes')")
  return ids, k0
