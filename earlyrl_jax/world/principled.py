"""The world's principle-following reviser: a programmatic stand-in for a teacher told a principle.

Why a stand-in: DPF (docs/principles.md) needs a teacher that revises text to follow "Do not
mention X; discuss Y instead." An instruct model gets the principle in its rewrite prompt
(teacher/prompts/paper_rewrite.py); the world's embedded teacher was never trained on principles,
so on the world the revision is written by rule, from the world's own grammar:

    suffix ──split at sentence ends (whitespace kept)──▶ s1 s2 s3
    each piece that mentions a banned name (world/oracles.py: Oracles.mentions, exact)
        ──▶ replaced by a TRUE fact sentence about Y (a relation drawn from the piece's text)
    every other piece: kept byte for byte; a suffix without a mention comes back unchanged

A piece that the window cut (the suffix's unfinished last sentence, or a first piece that
continues the prefix's sentence) is replaced whole by a complete sentence about Y: the revision
never mentions X, keeps the rest, and says only true things, at the price of one seam. It is a
rule, not a model: the measured effect of DPF on the world is the effect of training on such
pairs, not of a teacher's skill at following principles.
"""
from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence

from earlyrl_jax.world.corpus import fact_sentence
from earlyrl_jax.world.grammar import KnowledgeBase
from earlyrl_jax.world.oracles import Oracles

_PIECES = re.compile(r"(?<=[.?!])(\s+)")


def longer_names(kb: KnowledgeBase, banned: Sequence[str]) -> tuple[str, ...]:
  """The world's names that hold a banned name as a whole word (not mentions of it)."""
  out = set()
  for names in kb.entities.values():
    for n in names:
      if n not in banned and any(re.search(rf"(?<![\w]){re.escape(b)}(?![\w])", n) for b in banned):
        out.add(n)
  return tuple(sorted(out))


def check_names(kb: KnowledgeBase, banned: Sequence[str], instead: str, where: str = "principle") -> None:
  """Every banned name and the alternative are entities of this world (ValueError naming the field)."""
  for field, names in (("banned", banned), ("instead", [instead])):
    bad = [n for n in names if kb.kind_of(n) is None]
    if bad:
      raise ValueError(f"{where}.{field}: {bad} not an entity of this world")


class WorldReviser:
  """Revises (prefix, suffix) windows to follow 'Do not mention `banned`; discuss `instead`'.

  Has the rewriter interface (`rewrite(prefixes, suffixes, *, key, temperature, max_new_tokens)`,
  `calls`, `failed`): SIP takes it as `sip.rewrite='principle'`. Deterministic: the sentence about
  `instead` that replaces a piece depends only on that piece's text."""

  def __init__(self, kb: KnowledgeBase, banned: Sequence[str], instead: str):
    check_names(kb, banned, instead)
    self.kb, self.banned, self.instead = kb, tuple(banned), instead
    self.oracles = Oracles(kb)
    self.relations = kb.relations_of(instead)
    self.calls = 0      # windows asked for
    self.revised = 0    # of them, how many mentioned a banned name (and were revised)
    self.failed = 0     # the rule never fails (the rewriter interface counts failures)

  def about_instead(self, seed_text: str, avoid: Sequence[str] = ()) -> str:
    """One true sentence about `instead` that names no banned entity: a fact when one of its
    relations gives such a sentence ('Y lies in X' does not, when X is banned), else a filler;
    one not in `avoid` (the text around it: a repeated sentence is a defect) while there is one."""
    from earlyrl_jax.world.grammar import FILLERS
    rng = random.Random(zlib.crc32(seed_text.encode("utf-8")))
    options = [fact_sentence(self.kb, self.instead, rel, rng, connective=False).text
               for rel in rng.sample(self.relations, len(self.relations))]
    options += [f.format(s=self.instead) for f in rng.sample(FILLERS, len(FILLERS))]
    options = [t for t in options if not self.oracles.mentions(t, self.banned)]
    return next((t for t in options if t not in avoid), options[0])

  def revise(self, suffix: str) -> str:
    """The suffix with every piece that mentions a banned name replaced (see the module doc)."""
    parts = _PIECES.split(suffix)          # [piece, ws, piece, ws, ...]
    changed = False
    for i in range(0, len(parts), 2):
      if self.oracles.mentions(parts[i], self.banned):
        lead = parts[i][:len(parts[i]) - len(parts[i].lstrip())]
        parts[i] = lead + self.about_instead(parts[i], avoid=[p.strip() for p in parts[::2]])
        changed = True
    return "".join(parts) if changed else suffix

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key=None,
              temperature: float = 0.0, max_new_tokens: int | None = None) -> list[str]:
    del key, temperature, max_new_tokens   # a rule: the same revision every time
    if len(prefixes) != len(suffixes):
      raise ValueError(f"prefixes ({len(prefixes)}) and suffixes ({len(suffixes)}) differ in length")
    out = [self.revise(s) for s in suffixes]
    self.calls += len(suffixes)
    self.revised += sum(o != s for o, s in zip(out, suffixes))
    return out
