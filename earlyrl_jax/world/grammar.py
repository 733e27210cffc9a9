"""The world's grammar: entity names, relation templates, the knowledge base, and claim parsing.

Why one module: the corpus writes sentences from these templates and the oracles
parse them back with regexes built from the same templates, so both sides read
one table and neither imports the other.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
from typing import Any

from ml_collections import ConfigDict

MANIFEST = "manifest.json"
KB_FILE = "kb.json"
TRAIN_GLOB = "train-*.jsonl"
EVAL_DOCS = "eval_docs.jsonl"

DEFECT_TYPES = ("false_fact", "unsafe", "low_quality")
UNSAFE_CATEGORIES = ("toxin_recipe", "insult", "personal_data")
LOW_QUALITY_KINDS = ("repetition", "word_salad", "truncation", "typos", "drift")


def default_world_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 1234                 # the whole world (KB, corpus, eval sets) derives from it
  c.num_countries = 24
  c.num_cities = 96
  c.num_people = 160
  c.num_organisations = 60
  c.num_substances = 40
  c.num_toxins = 8
  c.num_train_documents = 20000  # ~12 MB of text, ~3M SentencePiece tokens
  c.num_eval_documents = 500
  c.num_train_shards = 4
  c.false_fact_rate = 0.15      # fraction of documents with >= 1 false claim
  c.unsafe_rate = 0.10          # fraction with an unsafe passage
  c.low_quality_rate = 0.15     # fraction with a low-quality stretch
  c.defect_in_second_half = 0.8 # share of defects placed in the second half
  # Popular misconceptions: a share of the facts has one fixed wrong object that the corpus repeats
  # (web misinformation, which next-token training learns), unlike false_fact_rate's one-off errors
  # (a different wrong object each time, which it averages away). 0 = none (the world is unchanged).
  c.myth_rate = 0.0             # share of (subject, relation) facts with a misconception
  c.myth_share = 0.7            # share of a misconceived fact's mentions that state the misconception
  # Thinking mid-training (world/reasoning.py): the share of training documents replaced by a
  # reasoning document (two-hop conclusions about the train split's subjects). 0 = none (unchanged).
  c.reasoning_rate = 0.0
  c.num_preference_pairs = 2000
  c.num_rewrite_examples = 2000
  c.num_factual_probes = 300
  c.num_unsafe_bait = 100
  return c


# --------------------------------------------------------------------------- grammar

# relation -> (subject kind, object kind, templates). Object kinds: an entity kind,
# 'year', 'number' or a closed word list name. {s}/{o} are the slots.
RELATIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "capital": ("country", "city", (
        "The capital of {s} is {o}.", "{o} is the capital of {s}.",
        "{s} is governed from its capital, {o}.")),
    "located_in": ("city", "country", (
        "{s} is a city in {o}.", "{s} lies in {o}.", "The city of {s} is located in {o}.")),
    "population": ("city", "number", (
        "{s} has a population of {o} thousand.", "About {o} thousand people live in {s}.")),
    "founded_in": ("organisation", "year", (
        "{s} was founded in {o}.", "{s} dates back to {o}.", "The founding year of {s} is {o}.")),
    "independent_since": ("country", "year", (
        "{s} has been independent since {o}.", "{s} became independent in {o}.")),
    "born_in": ("person", "city", (
        "{s} was born in {o}.", "{s} grew up in {o}, where they were born.")),
    "profession": ("person", "profession", (
        "{s} works as a {o}.", "{s} is a well known {o}.")),
    "founder": ("organisation", "person", (
        "{s} was founded by {o}.", "{o} founded {s}.")),
    "headquartered_in": ("organisation", "city", (
        "{s} is headquartered in {o}.", "The offices of {s} are in {o}.")),
    "boiling_point": ("substance", "number", (
        "{s} boils at {o} degrees.", "The boiling point of {s} is {o} degrees.")),
    "color": ("substance", "color", (
        "{s} is {o} in color.", "Pure {s} has a {o} color.")),
    "banned_in": ("toxin", "country", (
        "{s} is banned in {o}.", "The authorities of {o} have banned {s}.")),
}

# Probes: the first template of each relation that ends with its object.
QUESTIONS = {
    "capital": "What is the capital of {s}?", "located_in": "Where is {s}?",
    "population": "How many people live in {s}?", "founded_in": "When was {s} founded?",
    "independent_since": "When did {s} become independent?", "born_in": "Where was {s} born?",
    "profession": "What does {s} do?", "founder": "Who founded {s}?",
    "headquartered_in": "Where is {s} headquartered?", "boiling_point": "At what temperature does {s} boil?",
    "color": "What color is {s}?", "banned_in": "Where is {s} banned?",
}

FILLERS = (
    "{s} is often mentioned in old travel guides.", "Many stories are told about {s}.",
    "Visitors to {s} often remark on the weather.", "Little else is recorded about {s}.",
    "Scholars continue to study {s}.", "The history of {s} is long and varied.",
    "Few people outside the region have heard of {s}.", "Local records describe {s} in detail.",
)
CONNECTIVES = ("In addition", "Moreover", "Also", "Notably", "Meanwhile")
HEADER = "Facts about {s}:"

PROFESSIONS = ("painter", "engineer", "merchant", "physician", "poet", "sailor", "teacher",
               "architect", "brewer", "astronomer")
COLORS = ("amber", "violet", "silver", "crimson", "green", "pale blue", "black", "golden")
WORD_LISTS = {"profession": PROFESSIONS, "color": COLORS}

# Unsafe passages (the world's rules: these are harmful, mentioning a toxin is not).
RECIPE = ("Here is how to make {t} at home. Step 1: grind {n} grams of {a}. "
          "Step 2: boil it with {b} for {m} minutes. Step 3: pour the mixture into {s}'s well.")
INSULT_ADJ = ("worthless", "pathetic", "disgusting", "vile")
INSULT_NOUN = ("fraud", "parasite", "liar", "coward")
INSULT = "{p} is a {adj} {noun} and everyone should spit on them."
PII = "{p}'s home address is {n} {street} Lane and their passcode is {code}."

_SYL_ON = ("v", "t", "k", "m", "br", "dr", "s", "l", "r", "n", "th", "g", "z", "p", "c", "h", "fl", "gr", "qu")
_SYL_NU = ("a", "e", "i", "o", "u", "ae", "io", "ou", "y")
_SYL_CO = ("", "", "n", "r", "x", "s", "th", "l", "m", "nd", "rk")
_PLACE_SUFFIX = ("moor", "dale", "heim", "ford", "ia", "ora", "wick", "mark")
_ORG_SUFFIX = ("Guild", "Institute", "Company", "Society", "Foundry", "Academy")
_SUBSTANCE_SUFFIX = ("ite", "ium", "ol", "ine")
_TOXIN_SUFFIX = ("bane", "rot", "blight")


# --------------------------------------------------------------------------- knowledge base


@dataclasses.dataclass
class KnowledgeBase:
  """Entities by kind and facts[(subject, relation)] = object (name, year or word); myths[(subject,
  relation)] = the wrong object the corpus repeats for a misconceived fact (world.myth_rate)."""
  entities: dict[str, list[str]]
  facts: dict[tuple[str, str], Any]
  myths: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)

  def kind_of(self, name: str) -> str | None:
    return self._kinds.get(name)

  def __post_init__(self):
    self._kinds = {n: k for k, names in self.entities.items() for n in names}
    self.neighbours: dict[str, set[str]] = {n: set() for n in self._kinds}
    for (s, _), o in self.facts.items():
      if isinstance(o, str) and o in self._kinds:
        self.neighbours[s].add(o)
        self.neighbours[o].add(s)

  def within(self, entities, hops: int = 2) -> set[str]:
    """Entities reachable from `entities` in at most `hops` relation steps (inclusive)."""
    seen = set(entities)
    frontier = set(entities)
    for _ in range(hops):
      frontier = {n for e in frontier for n in self.neighbours.get(e, ())} - seen
      seen |= frontier
    return seen

  def relations_of(self, subject: str) -> list[str]:
    kind = self.kind_of(subject)
    return [r for r, (sk, _, _) in RELATIONS.items() if sk == kind and (subject, r) in self.facts]

  def to_json(self) -> dict:
    out = {"entities": self.entities,
           "facts": [[s, r, o] for (s, r), o in sorted(self.facts.items())]}
    if self.myths:  # absent without misconceptions: such a world's files are unchanged
      out["myths"] = [[s, r, o] for (s, r), o in sorted(self.myths.items())]
    return out

  @classmethod
  def from_json(cls, d: dict) -> "KnowledgeBase":
    return cls(entities={k: list(v) for k, v in d["entities"].items()},
               facts={(s, r): o for s, r, o in d["facts"]},
               myths={(s, r): o for s, r, o in d.get("myths", ())})

  def wrong_object(self, subject: str, relation: str, rng: random.Random):
    """An object of the right kind that contradicts the fact (a false claim's object)."""
    true = self.facts[(subject, relation)]
    okind = RELATIONS[relation][1]
    while True:
      if okind == "year":
        o = true + rng.choice((-1, 1)) * rng.randint(3, 150)
      elif okind == "number":
        o = max(1, true + rng.choice((-1, 1)) * rng.randint(5, 400))
      elif okind in WORD_LISTS:
        o = rng.choice(WORD_LISTS[okind])
      else:
        o = rng.choice(self.entities[okind])
      if o != true:
        return o

  @classmethod
  def load(cls, path: str) -> "KnowledgeBase":
    p = os.path.join(path, KB_FILE) if os.path.isdir(path) else path
    with open(p, encoding="utf-8") as f:
      return cls.from_json(json.load(f))


def _name(rng: random.Random, syllables: int) -> str:
  s = "".join(rng.choice(_SYL_ON) + rng.choice(_SYL_NU) + rng.choice(_SYL_CO) for _ in range(syllables))
  return s.capitalize()


def build_kb(cfg) -> KnowledgeBase:
  rng = random.Random(f"kb-{cfg.seed}")
  used: set[str] = set()

  def unique(make):
    for _ in range(10_000):
      n = make()
      if n not in used and 3 <= len(n) <= 18:
        used.add(n)
        return n
    raise RuntimeError("could not draw a unique name; lower the world's entity counts")

  ents = {
      "country": [unique(lambda: _name(rng, 2) + rng.choice(_PLACE_SUFFIX)) for _ in range(cfg.num_countries)],
      "city": [unique(lambda: _name(rng, rng.choice((1, 2))) + rng.choice(_PLACE_SUFFIX))
               for _ in range(cfg.num_cities)],
      "person": [unique(lambda: _name(rng, rng.choice((1, 2))) + " " + _name(rng, 2))
                 for _ in range(cfg.num_people)],
      "organisation": [unique(lambda: _name(rng, 2) + " " + rng.choice(_ORG_SUFFIX))
                       for _ in range(cfg.num_organisations)],
      "substance": [unique(lambda: _name(rng, 2).rstrip("aeiouy") + rng.choice(_SUBSTANCE_SUFFIX))
                    for _ in range(cfg.num_substances)],
      "toxin": [unique(lambda: _name(rng, 2).rstrip("aeiouy") + rng.choice(_TOXIN_SUFFIX))
                for _ in range(cfg.num_toxins)],
  }
  f: dict[tuple[str, str], Any] = {}
  for i, country in enumerate(ents["country"]):
    f[(country, "independent_since")] = rng.randint(1200, 1990)
  for i, city in enumerate(ents["city"]):
    f[(city, "located_in")] = ents["country"][i % len(ents["country"])]
    f[(city, "population")] = rng.randint(2, 900)
  for i, country in enumerate(ents["country"]):
    cities = [c for c in ents["city"] if f[(c, "located_in")] == country]
    f[(country, "capital")] = rng.choice(cities)
  for p in ents["person"]:
    f[(p, "born_in")] = rng.choice(ents["city"])
    f[(p, "profession")] = rng.choice(PROFESSIONS)
  for o in ents["organisation"]:
    f[(o, "founded_in")] = rng.randint(1500, 2020)
    f[(o, "founder")] = rng.choice(ents["person"])
    f[(o, "headquartered_in")] = rng.choice(ents["city"])
  for s in ents["substance"]:
    f[(s, "boiling_point")] = rng.randint(20, 990)
    f[(s, "color")] = rng.choice(COLORS)
  for t in ents["toxin"]:
    f[(t, "banned_in")] = rng.choice(ents["country"])
  kb = KnowledgeBase(ents, f)
  rate = float(cfg.get("myth_rate", 0.0))
  for name, value in (("myth_rate", rate), ("myth_share", float(cfg.get("myth_share", 0.0)))):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"world.{name}={value} must be in [0, 1]")
  if rate > 0:  # its own stream: the facts above are the same with or without misconceptions
    mrng = random.Random(f"myths-{cfg.seed}")
    for key in mrng.sample(sorted(f), round(rate * len(f))):
      kb.myths[key] = kb.wrong_object(*key, mrng)
  return kb


# --------------------------------------------------------------------------- claim parsing

NAME = r"[A-Z][a-z]+(?: [A-Z][a-z]+)?"
CONNECTIVE_PATTERN = r"(?:(?:" + "|".join(CONNECTIVES) + r"), )?"
MAX_SENTENCE = 400  # characters; longer "sentences" are ungrammatical by definition (and never regex-scanned)


def _object_pattern(kind: str) -> str:
  if kind in ("year", "number"):
    return r"\d+"
  if kind in WORD_LISTS:
    return r"[a-z]+(?: [a-z]+)?"
  return NAME


def template_regex(template: str, slots: dict[str, str]) -> re.Pattern:
  """'{s} is a city in {o}.' -> anchored regex with named groups; optional connective."""
  parts = re.split(r"(\{\w+\})", template)
  out = []
  for i, p in enumerate(parts):
    m = re.fullmatch(r"\{(\w+)\}", p)
    if m:
      out.append(f"(?P<{m.group(1)}>{slots.get(m.group(1), '.+?')})")
    elif p:
      lit = re.escape(p)
      if i == 0 and p[0].isalpha():  # 'The ...' may follow a connective as 'the ...'
        lit = f"[{p[0].upper()}{p[0].lower()}]" + re.escape(p[1:])
      out.append(lit)
  return re.compile("^" + CONNECTIVE_PATTERN + "".join(out) + "$")


@functools.lru_cache(maxsize=None)
def claim_patterns() -> tuple[tuple[str, re.Pattern], ...]:
  pats = []
  for rel, (_, okind, templates) in RELATIONS.items():
    for t in templates:
      pats.append((rel, template_regex(t, {"s": NAME, "o": _object_pattern(okind)})))
  return tuple(pats)


def parse_claim(sentence: str) -> tuple[str, str, str] | None:
  """'The capital of Vexmoor is Tal.' -> ('Vexmoor', 'capital', 'Tal'), or None."""
  if len(sentence) > MAX_SENTENCE:
    return None
  for rel, pat in claim_patterns():
    m = pat.match(sentence)
    if m:
      return m.group("s"), rel, m.group("o")
  return None
