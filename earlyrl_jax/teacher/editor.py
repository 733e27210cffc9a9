"""The embedded teacher's rewriter: keep or drop each sentence, write anew only when none is left.

Why an editor: the paper's rewriter must copy a suffix that is already fine *exactly*
and fix one that is not. Copying a 50-token suffix token by token is what a small
model learns last (induction over the whole suffix); deciding per sentence whether it
is fine is a classification it learns like the safety verdict. So the embedded
teacher rewrites by edits:

    prefix + suffix ──split──▶ s1 s2 s3 ──one CHECK verdict per sentence──▶ keep s1, drop s2, keep s3
                                                     (scorer: one forward row per CHECK)
    rewrite = s1 + s3 verbatim; if every sentence is dropped, the teacher continues the
    prefix itself (compiled sampler, cut at its last sentence end)

A fine suffix comes back byte for byte (every sentence kept); an unsafe insertion, a
false claim, word salad, typos or a cut-off last sentence is dropped. The verdict at a
CHECK sees the prefix and the sentences before it (causal), so all verdicts of a row
come from the same prompt. With temperature > 0 the keep/drop decisions are sampled
from those verdicts: the rewriter's GRPO (train_teacher.grpo) explores and reinforces
them with the paper's reward. Teachers whose tokenizer lacks the edit markers (HF
instruct models) use the generative `rewriter.Rewriter`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from earlyrl_jax.teacher import prompts as P


@dataclasses.dataclass
class EditPlan:
  """One input: its sentences, the edit prompt and where each checked sentence's verdict is read."""
  sentences: list[str]   # split_sentences(suffix): ''.join(sentences) == suffix
  ids: list[int]         # edit prompt token ids
  checks: list[int]      # index in ids of the CHECK after sentence i (i < len(checks))

  def apply(self, keep: Sequence[bool]) -> str:
    """The suffix with dropped sentences removed (unchecked sentences are kept)."""
    kept = [s for i, s in enumerate(self.sentences) if i >= len(keep) or keep[i]]
    return "".join(kept).strip()


def trim_to_sentence_end(text: str) -> str:
  """The text up to its last sentence end (generation stops mid-sentence at a token limit)."""
  cut = max(text.rfind("."), text.rfind("?"), text.rfind("!"))
  return text[:cut + 1].strip() if cut > 0 else text.strip()


class EditRewriter:
  """Rewrites (prefix, suffix) pairs by per-sentence keep/drop verdicts of the teacher.

  window_cut: the suffix ends where a training window cut it (SIP, the rewrite job), so
  an unfinished last sentence is the window's edge, not a defect: it is kept unchecked.
  threshold: a sentence is dropped when P(drop) exceeds it (greedy rewriting).
  """

  def __init__(self, teacher, *, max_new_tokens: int = 64, batch_size: int = 64,
               window_cut: bool = False, threshold: float = 0.5):
    from earlyrl_jax.models.scoring import Scorer
    from earlyrl_jax.sampling.sampler import Sampler
    from earlyrl_jax.teacher.judge import PromptEncoder
    self.teacher = teacher
    self.tokenizer = teacher.tokenizer
    self.max_new_tokens = max_new_tokens
    self.batch_size = batch_size
    self.window_cut = window_cut
    self.threshold = threshold
    self.encoder = PromptEncoder(teacher.tokenizer, max_len=teacher.max_len, limits=teacher.limits)
    self.verdicts = P.verdict_ids(teacher.tokenizer, P.EDIT_VERDICTS)   # [keep, drop]
    self.scorer = Scorer(teacher.graphdef, mesh=teacher.mesh, pad_id=teacher.tokenizer.pad_id)
    self.sampler = Sampler(teacher.model(), mesh=teacher.mesh, pad_id=teacher.tokenizer.pad_id)
    self.calls = 0
    self.written = 0  # rewrites the teacher wrote anew (every sentence dropped)

  def plan(self, prefix: str, suffix: str) -> EditPlan:
    sentences = P.split_sentences(suffix)
    checked = sentences
    if self.window_cut and sentences and not sentences[-1].rstrip().endswith((".", "?", "!")):
      checked = sentences[:-1]
    if not checked:
      return EditPlan(sentences, [], [])
    ids, checks = self.encoder.edit(prefix, checked)
    return EditPlan(sentences, ids, checks)

  def drop_probs(self, params, plans: Sequence[EditPlan]) -> list[np.ndarray]:
    """P(drop) of each checked sentence: one scored row per CHECK, all inputs batched."""
    rows, owner = [], []
    for i, pl in enumerate(plans):
      for c in pl.checks:
        rows.append(pl.ids[:c + 1])
        owner.append(i)
    out = [np.zeros((len(pl.checks),), np.float32) for pl in plans]
    if not rows:
      rows = [[self.tokenizer.bos_id or 0]]   # every process takes part in the scorer's collectives
    from earlyrl_jax.teacher.judge import two_way
    lp = self.scorer.verdict_logprobs(params, rows, self.verdicts)           # [rows, 2]: keep, drop
    p_drop = two_way(lp[:, ::-1])                                           # softmax over {drop, keep}
    seen = [0] * len(plans)
    for r, i in enumerate(owner):
      out[i][seen[i]] = p_drop[r]
      seen[i] += 1
    return out

  def decide(self, probs: Sequence[np.ndarray], *, rng=None, temperature: float = 0.0) -> list[np.ndarray]:
    """Keep flags per sentence: greedy (P(drop) <= threshold) or sampled at `temperature`."""
    if temperature <= 0 or rng is None:
      return [p <= self.threshold for p in probs]
    out = []
    for p in probs:
      logit = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log(np.clip(1 - p, 1e-6, 1.0))
      out.append(rng.random(p.shape) >= 1.0 / (1.0 + np.exp(-logit / temperature)))
    return out

  def write_anew(self, params, prefixes: Sequence[str], key) -> list[str]:
    """The teacher's own continuation of each prefix (greedy), cut at its last sentence end."""
    from earlyrl_jax.models.scoring import any_process
    if not any_process(bool(prefixes)):
      return []
    bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
    room = self.teacher.max_len - self.max_new_tokens
    ids = [(bos + self.tokenizer.encode(p.rstrip() + " "))[-room:] for p in prefixes] or [bos or [0]]
    eos = self.tokenizer.eos_id
    out = self.sampler.sample(params, ids, max_new_tokens=self.max_new_tokens, key=key,
                              temperature=0.0, stop_tokens=[eos] if eos is not None else ())
    return [trim_to_sentence_end(t) for t in out.texts(self.tokenizer)][:len(prefixes)]

  def edit(self, params, prefixes: Sequence[str], suffixes: Sequence[str], *, key, temperature: float = 0.0,
           rng=None) -> tuple[list[EditPlan], list[np.ndarray], list[str]]:
    """(plans, keep flags, rewrites) for one batch; see `rewrite`."""
    import jax
    if len(prefixes) != len(suffixes):
      raise ValueError(f"prefixes ({len(prefixes)}) and suffixes ({len(suffixes)}) differ in length")
    plans = [self.plan(p, s) for p, s in zip(prefixes, suffixes)]
    keep = self.decide(self.drop_probs(params, plans), rng=rng, temperature=temperature)
    texts = [pl.apply(k) for pl, k in zip(plans, keep)]
    empty = [i for i, t in enumerate(texts) if not t]
    fresh = self.write_anew(params, [prefixes[i] for i in empty], jax.random.fold_in(key, 1))
    for i, t in zip(empty, fresh):
      texts[i] = t or suffixes[i].strip()   # nothing better to offer: the original stays
    self.written += len(empty)
    return plans, keep, texts

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key, temperature: float = 0.0,
              max_new_tokens: int | None = None) -> list[str]:
    """One rewrite per (prefix, suffix), as text: kept sentences verbatim, or the teacher's own."""
    import jax
    from earlyrl_jax.models.scoring import lockstep_chunks
    del max_new_tokens  # the edit keeps or drops whole sentences; only write_anew generates
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist()) \
        if temperature > 0 else None
    out: list[str] = []
    for c, sl in enumerate(lockstep_chunks(len(prefixes), self.batch_size)):
      _, _, texts = self.edit(self.teacher.params, prefixes[sl], suffixes[sl],
                              key=jax.random.fold_in(key, c), temperature=temperature, rng=rng)
      out.extend(texts)
    self.calls += len(prefixes)
    return out
