"""Surprise: where the teacher's own language model confidently expected something else.

A pretrained LM that knows the world's facts puts most of its mass on the true object of a
claim ("The capital of Vornia is" -> "Kexheim"), on correctly spelt words and on grammatical
word order. Per token, the gap

    gap_t = log p(the model's first choice at t) - log p(the text's token at t)     (>= 0)

is large only where the model was confident *and* the text disagrees: a false object, a
misspelt word, word salad, an unsafe insertion into a factual text. A free choice (which
entity a new sentence is about) has a flat distribution and a small gap, however unlikely
the token. A sentence's surprise is its largest gap; a candidate's is its largest
sentence's. No prompt, no verdict token, no training: one forward pass over
prefix + candidate, the same pass a reference-policy score needs.

    prefix ─┬─ junction ─ candidate = s1 s2 s3
            ▼
    BOS + encode(prefix + junction + candidate) ──Scorer.surprise──▶ gap per candidate token
                                                   ──max within each sentence's tokens──▶ [3]

Used by the embedded teacher at inference (`teacher.inference` in its config): the editor
drops a sentence whose surprise exceeds a threshold, and the judge can read factuality as
-surprise (embedded/judge.py). What surprise cannot see: a fact the teacher does not know
(its own LM is wrong or unsure), and defects that are likely text (drift to another topic,
a cut-off sentence).

Token spans come from encoding the joined text once and cutting at each sentence's end
(`len(encode(head + candidate[:end]))`), not from encoding sentences one by one: a
SentencePiece model without a dummy prefix encodes a sentence's first word differently
alone than after a space, and the gap of that one token would dominate the sentence.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earlyrl_jax.teacher.prompts.text import split_sentences

LIST_STARTS = ("- ", "Q:", "A:")  # world lines whose separator from the prefix is a newline


def junction(prefix: str, candidate: str) -> str:
  """The text between a prefix and its continuation: nothing when either side already has
  whitespace there, a newline before a list item or a Q/A line, else one space (suffixes are
  stored with their leading separator stripped)."""
  if not prefix or prefix[-1].isspace() or candidate[:1].isspace():
    return ""
  return "\n" if candidate.startswith(LIST_STARTS) else " "


def sentence_tokens(tokenizer, prefix: str, candidate: str, max_len: int):
  """(prompt ids, candidate ids, [(start, end)] token span of each sentence in the candidate ids).

  The prompt is BOS + the prefix (its start given up first when the row exceeds max_len);
  a candidate longer than the budget is cut, and its sentences past the cut get empty spans.
  """
  bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
  head = prefix + junction(prefix, candidate)
  full = tokenizer.encode(head + candidate)
  n0 = min(len(tokenizer.encode(head.rstrip())), len(full)) if head.strip() else 0
  spans, end, prev = [], 0, n0
  for s in split_sentences(candidate):
    end += len(s)
    stop = end - (len(s) - len(s.rstrip()))           # the sentence's last non-space character
    n1 = min(max(len(tokenizer.encode(head + candidate[:stop])), prev), len(full))
    spans.append((prev - n0, n1 - n0))
    prev = n1
  body, cont = full[:n0], full[n0:max_len - 1 + n0]   # the candidate leaves >= 1 prompt token
  spans = [(min(a, len(cont)), min(b, len(cont))) for a, b in spans]
  keep = max(1, max_len - len(cont))
  if len(bos) + len(body) > keep:                      # the prefix's start gives way
    body = body[len(body) - max(0, keep - len(bos)):]
  prompt = (bos + body)[-keep:]
  if not prompt and cont:                              # no BOS, no prefix: the first token is context
    prompt, cont = cont[:1], cont[1:]
    spans = [(max(0, a - 1), max(0, b - 1)) for a, b in spans]
  return prompt or [getattr(tokenizer, "pad_id", 0) or 0], cont, spans


class SurpriseProbe:
  """Per-sentence surprise of candidates under a Flax LM (any of ours, or an HF model loaded
  through hf_io), batched through one `TreeScorer`: rows of one prefix share its tokens."""

  def __init__(self, graphdef, tokenizer, *, max_len: int, mesh=None, tree=None):
    from earlyrl_jax.models.tree_scorer import TreeScorer
    self.tokenizer = tokenizer
    self.max_len = int(max_len)
    self.tree = tree or TreeScorer(graphdef, mesh=mesh, pad_id=tokenizer.pad_id)
    self.rows = 0  # candidates scored

  def sentence_gaps(self, params, prefixes: Sequence[str], candidates: Sequence[str]) -> list[list[np.ndarray]]:
    """The gap of each token of each sentence of each candidate (split_sentences order)."""
    if len(prefixes) != len(candidates):
      raise ValueError(f"surprise: {len(prefixes)} prefixes but {len(candidates)} candidates")
    rows = [sentence_tokens(self.tokenizer, p, c, self.max_len) for p, c in zip(prefixes, candidates)]
    self.rows += len(rows)
    # Each row read at its candidate's tokens (the gap of the token after each read position);
    # rows of one prompt (the window's prefix) share a trie.
    prompts = [list(p) + list(c) for p, c, _ in rows] or [[self.tokenizer.bos_id or 0]]
    reads = [list(range(len(p) - 1, len(p) - 1 + len(c))) for p, c, _ in rows] or [[]]
    groups = [tuple(p) for p, _, _ in rows] or [()]
    gaps = self.tree.read(params, prompts, groups, reads).gaps
    return [[gaps[i][a:b] for a, b in spans] for i, (_, _, spans) in enumerate(rows)]

  def sentences(self, params, prefixes: Sequence[str], candidates: Sequence[str]) -> list[np.ndarray]:
    """Surprise of each sentence of each candidate (split_sentences order), float32 [n_sentences]."""
    return [np.array([sentence_surprise(g) for g in per], np.float32)
            for per in self.sentence_gaps(params, prefixes, candidates)]

  def candidates(self, params, prefixes: Sequence[str], candidates: Sequence[str], *,
                 broken: Sequence[float] | None = None, total: float = 0.0,
                 checkable: Sequence[float] | None = None, floor: float = 0.0,
                 claims: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(surprise, claim surprise) of each candidate, float32 [n] each: its most surprising
    sentence, and its most surprising sentence that is a claim the teacher can check (not
    broken text, `is_broken`; with `checkable`, not surprising in two words nor inside a name,
    `is_uncheckable`; with `claims`, each sentence's P(a checkable claim) from the teacher's
    claims verdict, at least 0.5), plus `total` times the sum of those sentences' gaps, each
    less `floor` (`claim_surprise`); 0 where there is none (an empty candidate says nothing
    surprising)."""
    per = self.sentence_gaps(params, prefixes, candidates)
    top = lambda gs: max([sentence_surprise(g) for g in gs], default=0.0)
    every = np.array([top(gs) for gs in per], np.float32)
    if broken is None and not total and checkable is None and not floor and claims is None:
      return every, every
    # Sentences the teacher reads as no claim, then uncheckable ones (only those left are
    # encoded for their word marks), leave the claim surprise as broken ones do.
    sents = [split_sentences(c) for c in candidates] if checkable is not None else None
    per = [[g for j, g in enumerate(gs)
            if (claims is None or claims[i][j] >= 0.5)
            and (checkable is None or not is_uncheckable(g, word_marks(self.tokenizer, sents[i][j]), checkable))]
           for i, gs in enumerate(per)]
    return every, np.array([claim_surprise(gs, broken, total, floor) for gs in per], np.float32)


def sentence_surprise(gaps: np.ndarray) -> float:
  return float(gaps.max()) if gaps.size else 0.0


def claim_surprise(gaps: Sequence[np.ndarray], broken: Sequence[float] | None, total: float,
                   floor: float = 0.0) -> float:
  """A candidate's factuality surprise from its sentences' gaps: the largest gap of a sentence
  that is not broken text, plus `total` times the sum of those sentences' gaps; each gap less
  `floor` nats (none below 0).

  Why the sum: two candidates that differ only in a claim's object ("lies in Quelcusheim" /
  "lies in Maxtirkia") often share their largest gap (a name's first piece, where the teacher
  is unsure which entity comes next), and the largest alone ties them however far apart their
  objects are; the sum still sees the object. A small weight keeps the largest in charge, so
  a longer candidate with more (true) claims is barely penalised (at total=0.1:
  0.875 -> 0.905 on 400 fresh pairs, the 21 ties among them broken).

  Why the floor: a true claim costs a few nats too (a name's first piece, a number), so without
  it a candidate that claims nothing checkable always beats one that states true facts, where
  the oracles tie them (both score 1.0)."""
  keep = [g for g in gaps if broken is None or not is_broken(g, broken)]
  if floor:
    keep = [np.maximum(g - float(floor), 0.0) for g in keep]
  top = max([sentence_surprise(g) for g in keep], default=0.0)
  return top + float(total) * float(sum(float(g.sum()) for g in keep)) if total else top


def is_broken(gaps: np.ndarray, broken: Sequence[float]) -> bool:
  """More than `broken[1]` tokens above `broken[0]` nats: misspelt words, word salad, an
  insult in a factual register. A false claim misses once (its object; the rest of the
  sentence follows from it), so broken text is left out of factuality: the oracles count
  only false claims there (held out, 0.76-0.80 -> 0.87-0.88 agreement at (8, 2))."""
  return int((gaps > float(broken[0])).sum()) > int(broken[1])


def word_marks(tokenizer, sentence: str) -> tuple[np.ndarray, np.ndarray]:
  """(word index, later piece of a capitalised word) of each token of `sentence`, int [n] and
  bool [n], as it reads after a space (its first word as in running text). A word is a run of
  letters and digits, or one other character; a token belongs to the word of its first
  non-space character (a lone space piece to the word after it). Any tokenizer with offsets."""
  text = " " + sentence.strip()
  ids, bounds = tokenizer.encode_with_offsets(text)
  start = np.array([not ch.isspace() and not (j and text[j - 1].isalnum() and ch.isalnum())
                    for j, ch in enumerate(text)] + [True], bool)   # a word starts at char j
  word_of = np.cumsum(start) - 1
  first = np.flatnonzero(start)                                       # first char of each word
  word, later = np.zeros((len(ids),), np.int64), np.zeros((len(ids),), bool)
  for k in range(len(ids)):
    b = int(bounds[k])
    if b < 0:                  # inside a character (a byte piece): the previous token's word goes on
      word[k], later[k] = (word[k - 1], later[k - 1]) if k else (0, False)
      continue
    j = b
    while j < len(text) and text[j].isspace():
      j += 1
    word[k] = word_of[j]
    later[k] = not start[j] and text[first[word_of[j]]].isupper()
  return word, later


def is_uncheckable(gaps: np.ndarray, marks: tuple[np.ndarray, np.ndarray], checkable: Sequence[float]) -> bool:
  """Not a claim the teacher can check (left out of factuality; quality still counts it).

  A false claim is one surprising word in a sentence the teacher otherwise expects: its object
  ("grew up in Zyxtumdale" where it expected another city). A sentence with a gap above
  `checkable[0]` nats outside its most surprising word is surprising in two places (garbled
  text, a claim about one thing ending on another), and one with a gap above `checkable[1]`
  inside a later piece of a capitalised word names something the teacher does not know (an
  invented name: it expected a known name to go on). The world's oracles count neither as a
  false claim, so the judge should not. `marks` (`word_marks`) align with the gaps from the
  end (the sentence's first token may be cut differently inside the candidate)."""
  n = gaps.size
  if not n:
    return False
  word, later = (m[-n:] if m.size >= n else np.concatenate([np.full((n - m.size,), d, m.dtype), m])
                 for m, d in zip(marks, (-1, False)))
  if (gaps[later] > float(checkable[1])).any():
    return True
  other = gaps[word != word[int(gaps.argmax())]]
  return bool(other.size) and float(other.max()) > float(checkable[0])
