"""Two-hop reasoning items, their exact oracle, and the thought augmenter (thinking mid-training).

Why: the paper's thinking mid-training (v3 §2) needs continuations that are right only when the
writer reasons, and a judge that can tell. The world's knowledge base has chains of two facts,
e.g. born_in(person) = city and located_in(city) = country, so a sentence that states only the
conclusion

    Vex Tal was born in a city in Kormark.

needs the hidden middle hop (the city) to be written correctly. The corpus states each hop
elsewhere (ordinary fact sentences); a reasoning document states conclusions only
(`world.reasoning_rate`). The oracle (`check_answer`) knows the answer exactly.

Stage 1 of the paper has a teacher insert thoughts into text. Here a documented programmatic
augmenter stands in for the teacher (`augment`): before each conclusion's answer it inserts
the two hops between markers,

    Vex Tal was born in a city in <think> Vex Tal was born in Lim. Lim lies in Kormark. </think> Kormark.

and `strip_thoughts(augment(x)) == x` exactly, for any text without the markers.

Splits: every two-hop subject belongs to one of train / validation / test (a fixed hash of the
world seed and the name), so the reasoning documents (train) never state a held-out conclusion.
"""
from __future__ import annotations

import random
import re

from earlyrl_jax.world.corpus import Document, Sentence
from earlyrl_jax.world.grammar import NAME

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_SPLITS = ("train", "validation", "test")
_SPLIT_SHARES = (0.8, 0.1, 0.1)

# first relation -> (its conclusion's prompt, written before the country). The second hop is always
# located_in (city -> country).
TWO_HOP = {
    "born_in": "{s} was born in a city in",
    "headquartered_in": "{s} is headquartered in a city in",
}
# The hops as the thought writes them (one of the grammar's templates for each relation).
_HOP_TEMPLATES = {"born_in": "{s} was born in {o}.", "headquartered_in": "{s} is headquartered in {o}.",
                  "located_in": "{s} lies in {o}."}
_CONCLUSION = re.compile(
    "(?P<head>(?P<s>" + NAME + ") (?:" + "|".join(re.escape(p.split("{s} ", 1)[1]) for p in TWO_HOP.values())
    + ")) (?P<o>" + NAME + r")\.")
_THOUGHT = re.compile(re.escape(THINK_OPEN) + ".*?" + re.escape(THINK_CLOSE) + " ", re.S)


def subject_split(seed: int, subject: str) -> str:
  """The split a two-hop subject belongs to: a fixed function of (world seed, name)."""
  u = random.Random(f"reasoning-split-{seed}-{subject}").random()
  return "train" if u < _SPLIT_SHARES[0] else ("validation" if u < sum(_SPLIT_SHARES[:2]) else "test")


def reasoning_items(kb, seed: int, split: str) -> list[dict]:
  """Every two-hop item of a split, in a fixed order: prompt, answer, thought, subject, relation."""
  if split not in REASONING_SPLITS:
    raise ValueError(f"reasoning split {split!r}: expected one of {REASONING_SPLITS}")
  out = []
  for (s, rel), city in sorted(kb.facts.items()):
    if rel not in TWO_HOP or (city, "located_in") not in kb.facts:
      continue
    if subject_split(seed, s) != split:
      continue
    country = kb.facts[(city, "located_in")]
    thought = " ".join((_HOP_TEMPLATES[rel].format(s=s, o=city),
                        _HOP_TEMPLATES["located_in"].format(s=city, o=country)))
    out.append({"prompt": TWO_HOP[rel].format(s=s), "answer": country, "thought": thought,
                "subject": s, "relation": rel})
  return out


def conclusion(item: dict) -> str:
  """The raw sentence that states an item's conclusion (no thought)."""
  return f"{item['prompt']} {item['answer']}."


def reasoning_document(items: list[dict], rng: random.Random, n: tuple[int, int] = (3, 6)) -> str:
  """A document of a few conclusions (drawn from `items`, the train split's), one paragraph."""
  picked = rng.sample(items, min(len(items), rng.randint(*n)))
  return " ".join(conclusion(it) for it in picked)


def with_reasoning_documents(kb, cfg, documents):
  """The train split's documents with a share `world.reasoning_rate` of them replaced by reasoning
  documents (conclusions about the train split's subjects), drawn from their own stream: at rate 0
  the documents pass through untouched, and at any rate the others are the same documents."""
  rate = float(cfg.get("reasoning_rate", 0.0))
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"world.reasoning_rate={rate} must be in [0, 1]")
  items = None
  for i, doc in enumerate(documents):
    rng = random.Random(f"{cfg.seed}-reasoning-{i}") if rate > 0 else None
    if rng is None or rng.random() >= rate:
      yield doc
      continue
    items = items if items is not None else reasoning_items(kb, cfg.seed, "train")
    text = reasoning_document(items, rng)
    yield Document(doc.id, text, "reasoning", [], [Sentence(text, "reasoning", "")])


def thought_for(kb, subject: str, relation_phrase: str, answer: str) -> str | None:
  """The two hops behind a conclusion '{subject} {relation_phrase} {answer}', from the KB; None
  when the sentence is not a true two-hop conclusion (the augmenter then leaves it alone)."""
  for rel, prompt in TWO_HOP.items():
    if prompt.format(s=subject) == f"{subject} {relation_phrase}":
      city = kb.facts.get((subject, rel))
      if city is None or kb.facts.get((city, "located_in")) != answer:
        return None
      return " ".join((_HOP_TEMPLATES[rel].format(s=subject, o=city),
                       _HOP_TEMPLATES["located_in"].format(s=city, o=answer)))
  return None


def augment(text: str, kb) -> str:
  """Stage 1, the programmatic stand-in for the teacher: inserts `<think> hop. hop. </think> `
  before the answer of every true two-hop conclusion in `text`; other text is left as it is.
  Raises on text that already holds a marker (its thoughts could not be told from ours)."""
  if THINK_OPEN in text or THINK_CLOSE in text:
    raise ValueError(f"augment: the text already contains {THINK_OPEN!r} or {THINK_CLOSE!r}: "
                     "strip_thoughts could not restore it exactly")

  def insert(m: re.Match) -> str:
    s, head, o = m.group("s"), m.group("head"), m.group("o")
    thought = thought_for(kb, s, head[len(s) + 1:], o)
    if thought is None:
      return m.group(0)
    return f"{head} {THINK_OPEN} {thought} {THINK_CLOSE} {o}."

  return _CONCLUSION.sub(insert, text)


def strip_thoughts(text: str) -> str:
  """Removes every `<think> ... </think> ` span (the inverse of `augment`); an unclosed thought
  at the end of generated text is removed up to the end (it states no answer)."""
  out = _THOUGHT.sub("", text)
  cut = out.find(THINK_OPEN)
  return out[:cut] if cut >= 0 else out


def answer_of(continuation: str) -> str:
  """What a continuation answers after its thought: the text up to the first '.' (or the end)."""
  visible = strip_thoughts(continuation).strip()
  return visible.split(".", 1)[0].strip()


def check_answer(item: dict, continuation: str) -> bool:
  """The exact oracle: after the thought is stripped, the continuation's first clause is the
  item's answer (the thought itself is never scored)."""
  return answer_of(continuation) == item["answer"]


def suffix_reward(original_suffix: str, continuation: str) -> float:
  """Stage 3's 0/1 judge: 1 iff the continuation, its thought stripped, states the same first
  clause as the original suffix. The paper's teacher judge compares the suffix with the
  original; here the world's exact comparison stands in for it (the thought is not scored)."""
  return float(answer_of(continuation) == answer_of(original_suffix) != "")


def prefix_suffix_cuts(text: str, kb) -> list[tuple[str, str]]:
  """Stage 3's chunks of one raw document: (prefix up to a true conclusion's answer, the original
  suffix: that answer and the rest of its sentence)."""
  out = []
  for m in _CONCLUSION.finditer(text):
    if thought_for(kb, m.group("s"), m.group("head")[len(m.group("s")) + 1:], m.group("o")) is None:
      continue
    out.append((text[:m.end("head")], text[m.start("o"):m.end()]))
  return out


def probe_accuracy(items: list[dict], continuations: list[str]) -> float:
  """The report's reasoning column: the share of items whose continuation the oracle accepts."""
  if len(items) != len(continuations):
    raise ValueError(f"probe_accuracy: {len(items)} items but {len(continuations)} continuations")
  return sum(check_answer(i, c) for i, c in zip(items, continuations)) / max(1, len(items))
