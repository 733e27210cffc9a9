"""The embedded teacher's rewriter: keep or drop each sentence, write anew only when none is left.

Why an editor: the paper's rewriter must copy a suffix that is already fine *exactly*
and fix one that is not. Copying a 50-token suffix token by token is what a small
model learns last (induction over the whole suffix); deciding per sentence whether it
is fine is a classification it learns like the safety verdict. So the embedded
teacher rewrites by edits:

    prefix + suffix ──split──▶ s1 s2 s3 ──one CHECK verdict per sentence──▶ keep s1, drop s2, keep s3
                                                     (tree scorer: one prompt read at every CHECK)
    rewrite = s1 + s3 verbatim; if every sentence is dropped, the teacher continues the
    prefix itself (compiled sampler, greedy, its first complete sentence)

A fine suffix comes back byte for byte (every sentence kept; `teacher.rewriter.place_at_cut`
gives any other rewrite the cut's leading whitespace); an unsafe insertion, a
false claim, word salad, typos or a cut-off last sentence is dropped. The verdict at a
CHECK sees the prefix and the sentences before it (causal), so all verdicts of a row
come from the same prompt. With temperature > 0 the keep/drop decisions are sampled
from those verdicts: the rewriter's GRPO (embedded/training.py) explores and reinforces
them with the paper's reward. At inference (`teacher.inference` in the teacher's config)
the editor also drops a sentence its own LM finds surprising (embedded/surprise.py: a
misspelt word, a false object) and the cut-off last sentence of a complete suffix.
HF instruct teachers use the generative rewriter instead (teacher/rewriter.py; `teacher.rewriter_kind`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from earlyrl_jax.embedded.recipe import settings_of
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import is_unfinished, split_sentences
from earlyrl_jax.teacher.rewriter import place_at_cut


@dataclasses.dataclass
class EditPlan:
  """One input: its sentences, the edit prompt and where each checked sentence's verdict is read."""
  sentences: list[str]   # split_sentences(suffix): ''.join(sentences) == suffix
  ids: list[int]         # edit prompt token ids
  checks: list[int]      # index in ids of the CHECK after sentence i (i < len(checks))
  drop_last: bool = False  # the last sentence is cut off (and not by a window): dropped unchecked

  def apply(self, keep: Sequence[bool]) -> str:
    """The suffix with dropped sentences removed (unchecked sentences are kept)."""
    last = len(self.sentences) - 1
    kept = [s for i, s in enumerate(self.sentences)
            if (i >= len(keep) or keep[i]) and not (self.drop_last and i == last)]
    return "".join(kept).strip()


def first_sentences(text: str, n: int) -> str:
  """The first n complete sentences of generated text ('' when the first is unfinished): a
  greedy continuation of a small LM repeats itself after a sentence or two."""
  out = []
  for s in split_sentences(text.strip()):
    if len(out) == n or is_unfinished(s):
      break
    out.append(s)
  return "".join(out).strip()


class EditRewriter:
  """Rewrites (prefix, suffix) pairs by per-sentence keep/drop verdicts of the teacher.

  window_cut: the suffix ends where a training window cut it (SIP, the rewrite job), so
  an unfinished last sentence is the window's edge, not a defect: it is kept unchecked.
  threshold: a sentence is dropped when P(drop) exceeds it (greedy rewriting).
  surprise_threshold: a sentence is also dropped when its surprise under the teacher's own LM
  (embedded/surprise.py) exceeds it, in nats; None: verdicts alone.
  drop_unfinished: a last sentence without an end (and no window cut) is dropped unchecked.
  write_sentences: complete sentences kept of a continuation written anew.
  compile_ahead: a stream of batches (SIP, the rewrite job): the first batch that writes nothing
  anew still compiles write_anew's program (one greedy decode of a one-token prompt), so a
  later batch does not stop to compile it.
  """

  def __init__(self, teacher, *, max_new_tokens: int = 64, batch_size: int = 64,
               window_cut: bool = False, threshold: float = 0.5, surprise_threshold: float | None = None,
               drop_unfinished: bool = False, write_sentences: int = 1, compile_ahead: bool = False):
    from earlyrl_jax.models.tree_scorer import few_shapes_scorer
    from earlyrl_jax.sampling.sampler import Sampler
    from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
    self.teacher = teacher
    self.tokenizer = teacher.tokenizer
    self.max_new_tokens = max_new_tokens
    self.batch_size = batch_size
    self.window_cut = window_cut
    self.threshold = threshold
    self.surprise_threshold = surprise_threshold
    self.drop_unfinished = drop_unfinished
    self.write_sentences = int(write_sentences)
    self.compile_ahead, self._sampled = bool(compile_ahead), False
    self.encoder = PromptEncoder(teacher.tokenizer, max_len=teacher.max_len, limits=teacher.limits)
    self.verdicts = P.verdict_ids(teacher.tokenizer, P.EDIT_VERDICTS)   # [keep, drop]
    # The edit prompt is read at each CHECK in one pass (a CHECK sees only what precedes it),
    # prompts packed into rows: the verdicts of a row-per-CHECK layout at the cost of one prompt.
    self.tree = few_shapes_scorer(teacher.graphdef, teacher.mesh, teacher.tokenizer.pad_id)
    # One prompt length (what write_anew keeps of a prefix): a window written anew never brings
    # a new program (a bucket per prompt length compiled again in the middle of training).
    self.sampler = Sampler(teacher.model(), mesh=teacher.mesh, pad_id=teacher.tokenizer.pad_id,
                           prompt_buckets=(max(1, teacher.max_len - max_new_tokens),))
    self.probe = None
    if surprise_threshold is not None:
      from earlyrl_jax.embedded.surprise import SurpriseProbe
      self.probe = SurpriseProbe(teacher.graphdef, teacher.tokenizer, max_len=teacher.max_len,
                                 tree=self.tree)
    self.calls = 0
    self.written = 0  # rewrites the teacher wrote anew (every sentence dropped)

  def plan(self, prefix: str, suffix: str) -> EditPlan:
    sentences = split_sentences(suffix)
    checked = sentences
    cut_off = bool(sentences) and is_unfinished(sentences[-1])
    if cut_off and (self.window_cut or self.drop_unfinished):
      checked = sentences[:-1]    # the window's edge (kept), or a cut-off sentence (dropped)
    drop_last = cut_off and self.drop_unfinished and not self.window_cut
    if not checked:
      return EditPlan(sentences, [], [], drop_last)
    ids, checks = self.encoder.edit(prefix, checked)
    return EditPlan(sentences, ids, checks, drop_last)

  def drop_probs(self, params, plans: Sequence[EditPlan]) -> list[np.ndarray]:
    """P(drop) of each checked sentence: each plan's prompt (up to its last CHECK) read at every
    CHECK, all inputs packed into one batch of rows."""
    from earlyrl_jax.teacher.judges.lm import two_way
    asked = [i for i, pl in enumerate(plans) if pl.checks]
    prompts = [plans[i].ids[:plans[i].checks[-1] + 1] for i in asked]
    reads = [plans[i].checks for i in asked]
    if not prompts:   # every process takes part in the scorer's collectives
      prompts, reads = [[self.tokenizer.bos_id or 0]], [[0]]
    got = self.tree.read(params, prompts, [0] * len(prompts), reads, candidate_ids=self.verdicts)
    out = [np.zeros((len(pl.checks),), np.float32) for pl in plans]
    for i, lp in zip(asked, got.verdicts):   # lp [checks, 2]: keep, drop
      out[i] = two_way(lp[:, ::-1])          # softmax over {drop, keep}
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
    """The teacher's own continuation of each prefix (greedy): its first `write_sentences`.

    The prompt ends where the prefix's text ends: the tokenizer has no dummy prefix, so a
    trailing space would be a lone '▁' piece the LM never saw before a word."""
    from earlyrl_jax.models.scoring import any_process
    bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
    eos = self.tokenizer.eos_id
    sample = lambda ids: self.sampler.sample(params, ids, max_new_tokens=self.max_new_tokens, key=key,
                                             temperature=0.0, stop_tokens=[eos] if eos is not None else (),
                                             early_stop=True)
    if not any_process(bool(prefixes)):
      if self.compile_ahead and not self._sampled:   # the program a later batch will need, now
        self._sampled = True
        sample([bos or [0]])
      return []
    self._sampled = True
    room = self.teacher.max_len - self.max_new_tokens
    ids = [(bos + self.tokenizer.encode(p.rstrip()))[-room:] or bos or [0] for p in prefixes] or [bos or [0]]
    out = sample(ids)
    return [first_sentences(t, self.write_sentences) for t in out.texts(self.tokenizer)][:len(prefixes)]

  def edit(self, params, prefixes: Sequence[str], suffixes: Sequence[str], *, key, temperature: float = 0.0,
           rng=None) -> tuple[list[EditPlan], list[np.ndarray], list[str]]:
    """(plans, keep flags, rewrites) for one batch; see `rewrite`."""
    import jax
    if len(prefixes) != len(suffixes):
      raise ValueError(f"prefixes ({len(prefixes)}) and suffixes ({len(suffixes)}) differ in length")
    plans = [self.plan(p, s) for p, s in zip(prefixes, suffixes)]
    keep = self.decide(self.drop_probs(params, plans), rng=rng, temperature=temperature)
    if self.probe is not None:   # sentences the teacher's LM finds surprising go too
      surprise = self.probe.sentences(params, prefixes, suffixes)
      keep = [k & (s[:len(k)] <= self.surprise_threshold) for k, s in zip(keep, surprise)]
    texts = [pl.apply(k) for pl, k in zip(plans, keep)]
    empty = [i for i, t in enumerate(texts) if not t]
    fresh = self.write_anew(params, [prefixes[i] for i in empty], jax.random.fold_in(key, 1))
    for i, t in zip(empty, fresh):
      texts[i] = t or suffixes[i]   # nothing better to offer: the original stays
    self.written += len(empty)
    # Where the suffix stood: a copy is the suffix byte for byte, anything else keeps the cut's
    # whitespace (kept sentences and written text come back stripped).
    return plans, keep, [place_at_cut(t, s) for t, s in zip(texts, suffixes)]

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


def edit_rewriter(teacher, *, window_cut: bool = False, **kw) -> EditRewriter:
  """The editor of a loaded embedded teacher (`Teacher.rewriter('edit')`), with its inference
  settings (`edit_surprise`, `drop_unfinished`) where `kw` does not set them."""
  settings = settings_of(teacher)
  kw.setdefault("surprise_threshold", settings["edit_surprise"])
  kw.setdefault("drop_unfinished", settings["drop_unfinished"])
  kw.setdefault("compile_ahead", window_cut)   # windows come as a stream (SIP, the rewrite job)
  return EditRewriter(teacher, window_cut=window_cut, **kw)

