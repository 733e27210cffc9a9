"""The world's corpus: web-like documents about the knowledge base, with planted defects.

Every clean sentence comes from the grammar's templates, so the oracles can parse
any text back into claims and check them exactly. Defects are planted at
configured rates, mostly in the second half of a document, so that a
clean-looking prefix is often followed by a defective suffix -- the situation
the rewriter and judge exist for:

  false_fact   a claim whose object contradicts the knowledge base
  myth         a misconceived fact stated with the wrong object the corpus repeats (world.myth_rate)
  unsafe       a recipe for an invented toxin, a targeted insult at a named
               person, or leaked (invented) personal data
  low_quality  repetition loop, word salad, truncation, typos, off-topic drift
"""
from __future__ import annotations

import dataclasses
import random
import re

from earlyrl_jax.world.grammar import (
    CONNECTIVES, FILLERS, HEADER, INSULT, INSULT_ADJ, INSULT_NOUN, LOW_QUALITY_KINDS, PII, QUESTIONS,
    RECIPE, RELATIONS, UNSAFE_CATEGORIES, KnowledgeBase, parse_claim)


@dataclasses.dataclass
class Sentence:
  text: str
  kind: str  # fact | filler | question | header | unsafe:<cat> | lq:<kind> | false_fact | myth
  separator: str = " "  # what precedes it when joined


def fact_sentence(kb, subject, relation, rng, *, false: bool = False, connective: bool = True) -> Sentence:
  obj = kb.wrong_object(subject, relation, rng) if false else kb.facts[(subject, relation)]
  template = rng.choice(RELATIONS[relation][2])
  text = template.format(s=subject, o=obj)
  if connective and rng.random() < 0.2:
    if not template.startswith("{"):  # a literal first word is lower-cased after a connective
      text = text[0].lower() + text[1:]
    text = f"{rng.choice(CONNECTIVES)}, {text}"
  return Sentence(text, "false_fact" if false else "fact")


def unsafe_passage(kb, rng, category: str, topic: str) -> Sentence:
  if category == "toxin_recipe":
    a, b = rng.sample(kb.entities["substance"], 2)
    town = rng.choice(kb.entities["person"])
    text = RECIPE.format(t=rng.choice(kb.entities["toxin"]), n=rng.randint(2, 90), a=a, b=b,
                         m=rng.randint(5, 60), s=town)
  elif category == "insult":
    person = topic if kb.kind_of(topic) == "person" else rng.choice(kb.entities["person"])
    text = INSULT.format(p=person, adj=rng.choice(INSULT_ADJ), noun=rng.choice(INSULT_NOUN))
  else:
    person = topic if kb.kind_of(topic) == "person" else rng.choice(kb.entities["person"])
    street = rng.choice(kb.entities["city"])  # in-vocabulary: the passage is fluent, just unsafe
    text = PII.format(p=person, n=rng.randint(1, 300), street=street, code=f"{rng.randint(0, 9999):04d}")
  return Sentence(text, f"unsafe:{category}")


def _typo(word: str, rng) -> str:
  if len(word) < 4:
    return word + word[-1]
  i = rng.randrange(1, len(word) - 2)
  return word[:i] + word[i + 1] + word[i] + word[i + 2:] if rng.random() < 0.5 else word[:i] + word[i + 1:]


def degrade(sentences: list[Sentence], kind: str, kb, rng, topic: str) -> list[Sentence]:
  """Applies one low-quality defect to a list of sentences (used for documents and suffixes)."""
  out = list(sentences)
  if not out:
    return out
  tag = f"lq:{kind}"
  if kind == "repetition":
    s = rng.choice(out)
    out.extend(Sentence(s.text, tag) for _ in range(rng.randint(4, 7)))
  elif kind == "word_salad":
    i = rng.randrange(len(out))
    words = re.sub(r"[.,:?]", "", out[i].text).lower().split()
    rng.shuffle(words)
    out[i] = Sentence(" ".join(words) + ".", tag, out[i].separator)
  elif kind == "truncation":
    last = out[-1]
    words = last.text.split()
    cut = max(1, min(len(words) - 1, rng.randint(2, max(2, len(words) - 1))))
    out[-1] = Sentence(" ".join(words[:cut]).rstrip(".,:?"), tag, last.separator)
  elif kind == "typos":
    for i in range(len(out)):
      if rng.random() < 0.7 or i == len(out) - 1:
        words = out[i].text.split()
        for _ in range(max(1, len(words) // 4)):
          j = rng.randrange(len(words))
          if words[j][0].islower():
            words[j] = _typo(words[j], rng)
        out[i] = Sentence(" ".join(words), tag, out[i].separator)
  elif kind == "drift":
    related = kb.within([topic], hops=3)
    others = [e for e in kb.entities["substance"] + kb.entities["organisation"]
              if e not in related and not kb.within([e], hops=1) & related] or kb.entities["substance"]
    other = rng.choice(others)
    for r in rng.sample(kb.relations_of(other), min(2, len(kb.relations_of(other)))):
      s = fact_sentence(kb, other, r, rng, connective=False)
      out.append(Sentence(s.text, tag))
  else:
    raise ValueError(f"unknown low-quality kind {kind!r}")
  return out


def clean_sentences(kb: KnowledgeBase, topic: str, rng: random.Random, n: int) -> list[Sentence]:
  """n clean sentences about `topic` and its neighbours (facts and fillers)."""
  subjects = [topic] + sorted(kb.neighbours.get(topic, ()))
  out: list[Sentence] = []
  seen: set[str] = set()
  for _ in range(4 * n):  # a clean document never repeats a sentence
    if len(out) == n:
      break
    subj = topic if not out or rng.random() < 0.6 else rng.choice(subjects)
    rels = kb.relations_of(subj)
    if rels and rng.random() < 0.8:
      s = fact_sentence(kb, subj, rng.choice(rels), rng, connective=bool(out))
    else:
      s = Sentence(rng.choice(FILLERS).format(s=subj), "filler")
    key = s.text.lower()
    if key not in seen:
      seen.add(key)
      out.append(s)
  return out


def layout(kb, topic, sentences: list[Sentence], rng) -> list[Sentence]:
  """Chooses a surface form: prose paragraphs, a bulleted list, or a Q/A dialogue."""
  form = rng.random()
  if form < 0.15:
    head = Sentence(HEADER.format(s=topic), "header", "")
    return [head] + [dataclasses.replace(s, text="- " + s.text, separator="\n") for s in sentences]
  if form < 0.25:
    out, asked = [], set()
    for s in sentences:
      q = _question_for(kb, s.text) if s.kind in ("fact", "false_fact", "myth") else None
      if q and q not in asked:
        asked.add(q)
        out.append(Sentence("Q: " + q, "question", "\n" if out else ""))
        out.append(dataclasses.replace(s, text="A: " + s.text, separator="\n"))
      else:
        out.append(dataclasses.replace(s, separator="\n" if out else ""))
    return out
  out = []
  for i, s in enumerate(sentences):
    sep = "" if i == 0 else ("\n\n" if rng.random() < 0.15 else " ")
    out.append(dataclasses.replace(s, separator=sep))
  return out


def _question_for(kb, fact_text: str) -> str | None:
  claim = parse_claim(fact_text)
  if claim is None:
    return None
  return QUESTIONS[claim[1]].format(s=claim[0])


def join(sentences: list[Sentence]) -> str:
  return "".join(s.separator + s.text for s in sentences).strip()


@dataclasses.dataclass
class Document:
  id: str
  text: str
  topic: str
  defects: list[dict]
  sentences: list[Sentence]

  def to_json(self) -> dict:
    return {"id": self.id, "text": self.text, "topic": self.topic, "defects": self.defects}


def make_document(kb: KnowledgeBase, cfg, rng: random.Random, doc_id: str,
                  clean: bool = False) -> Document:
  """One document; `clean=True` plants no defects (supervision sources)."""
  kinds = [k for k in ("country", "city", "person", "organisation", "substance") if kb.entities[k]]
  topic = rng.choice(kb.entities[rng.choice(kinds)])
  sents = clean_sentences(kb, topic, rng, rng.randint(5, 12))
  defects = []
  if kb.myths and not clean:
    sents = _spread_myths(kb, sents, float(cfg.get("myth_share", 0.0)), rng, defects)

  def position(n):
    half = n // 2
    if rng.random() < cfg.defect_in_second_half:
      return rng.randint(max(1, half), n)
    return rng.randint(1, max(1, half))

  ff_rate, unsafe_rate, lq_rate = ((0.0, 0.0, 0.0) if clean else
                                   (cfg.false_fact_rate, cfg.unsafe_rate, cfg.low_quality_rate))
  if rng.random() < ff_rate:
    facts = [i for i, s in enumerate(sents) if s.kind == "fact" and i > 0]
    if facts:
      late = [i for i in facts if i >= len(sents) // 2]
      i = rng.choice(late if late and rng.random() < cfg.defect_in_second_half else facts)
      subj, rel, _ = parse_claim(sents[i].text)
      sents[i] = fact_sentence(kb, subj, rel, rng, false=True)
      defects.append({"type": "false_fact", "sentence": i})
  if rng.random() < unsafe_rate:
    cat = rng.choice(UNSAFE_CATEGORIES)
    i = position(len(sents))
    sents.insert(i, unsafe_passage(kb, rng, cat, topic))
    defects.append({"type": "unsafe", "category": cat, "sentence": i})
  low = rng.random() < lq_rate
  sents = layout(kb, topic, sents, rng)
  if low:
    kind = rng.choice(LOW_QUALITY_KINDS)
    cut = len(sents) // 2 if rng.random() < cfg.defect_in_second_half else 1
    sents = sents[:cut] + degrade(sents[cut:], kind, kb, rng, topic)
    defects.append({"type": "low_quality", "kind": kind, "sentence": cut})
  return Document(doc_id, join(sents), topic, defects, sents)


def _spread_myths(kb, sents: list[Sentence], share: float, rng, defects: list[dict]) -> list[Sentence]:
  """States each misconceived fact's myth instead of the truth with probability `share`."""
  out = []
  for i, s in enumerate(sents):
    claim = parse_claim(s.text) if s.kind == "fact" else None
    if claim is not None and (claim[0], claim[1]) in kb.myths and rng.random() < share:
      myth = str(kb.myths[(claim[0], claim[1])])
      head, _, tail = s.text.rpartition(str(claim[2]))
      text = head + myth + tail
      if parse_claim(text) == (claim[0], claim[1], myth):  # the object's slot was the one replaced
        s = Sentence(text, "myth", s.separator)
        defects.append({"type": "myth", "sentence": i})
    out.append(s)
  return out


def _doc_rng(seed: int, split: str, i: int) -> random.Random:
  return random.Random(f"{seed}-{split}-{i}")


def generate_documents(kb, cfg, split: str, n: int, clean: bool = False):
  """The first n documents of a split; document i depends only on (seed, split, i)."""
  for i in range(n):
    yield make_document(kb, cfg, _doc_rng(cfg.seed, split, i), f"{split}-{i:07d}", clean=clean)
