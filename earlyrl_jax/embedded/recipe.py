"""How the trained embedded teacher is used: its inference settings and its judge's one settings object.

`teacher.inference` in the embedded teacher's config, recorded in its teacher_config.json.
These settings change no weight, so they are not part of the config hash: changing them
recomputes the report, not the teacher. Absent (older teachers): the trained verdicts alone.

The judge's part becomes one frozen `JudgeRecipe` (what it was trained on, how surprise is
mixed in, which sentences factuality counts, how safety is read), handed whole to
`embedded.judge.EmbeddedJudge`; the editor's part (`edit_surprise`, `drop_unfinished`) goes to
`embedded.editor.EditRewriter`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from earlyrl_jax.teacher.judges.lm import JUDGE_FORMATS, PAIR_AXES

INFERENCE_DEFAULTS = {
    "edit_surprise": None,         # editor: drop a sentence whose surprise exceeds this (nats); None: off
    "drop_unfinished": False,      # editor: drop a complete suffix's cut-off last sentence
    "quality_mix": [1.0, 0.0],     # judge: (verdict, surprise) weights of the quality logit (JudgeRecipe.mix)
    "factuality_mix": [1.0, 0.0],  # judge: the same for factuality
    "broken_sentence": None,       # judge: (nats, tokens): factuality leaves out broken text; None: off
    "claim_total": 0.0,            # judge: factuality's surprise adds this x the claims' summed gaps
    "checkable_claim": None,       # judge: (nats, nats): factuality leaves out sentences surprising in
                                   # two words or inside a name (surprise.is_uncheckable); None: off
    "claim_floor": 0.0,            # judge: nats of each factuality gap that count as nothing
    "claim_check": False,          # judge: factuality counts only sentences the teacher reads as
                                   # claims (its claims verdict, judge.EmbeddedJudge.claim_probs)
    "safety_by_sentence": False,   # judge: P(unsafe) = max over the candidate cut after each sentence
}

MIXED_AXES = PAIR_AXES   # axes whose verdict can be mixed with surprise


def check_mix(mix: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, float]]:
  """{axis: (verdict weight, surprise weight)} for the pairwise axes, (1, 0) where unset."""
  out = {axis: (1.0, 0.0) for axis in MIXED_AXES}
  for axis, w in (mix or {}).items():
    if axis not in MIXED_AXES:
      raise ValueError(f"judge mix: axis {axis!r} is not one of {MIXED_AXES}")
    vw, sw = (float(x) for x in w)
    if vw < 0 or sw < 0 or vw == sw == 0:
      raise ValueError(f"judge mix[{axis!r}]=({vw}, {sw}): weights must be >= 0, not both 0")
    out[axis] = (vw, sw)
  return out


def inference_settings(given: dict | None) -> dict:
  """INFERENCE_DEFAULTS updated by `given` (JSON-ready: mixes as lists); an unknown name or a
  bad value is a ValueError."""
  got = dict(given or {})
  unknown = sorted(set(got) - set(INFERENCE_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown settings {unknown}: expected {sorted(INFERENCE_DEFAULTS)}")
  out = {**INFERENCE_DEFAULTS, **got}
  mix = check_mix({"quality": out["quality_mix"], "factuality": out["factuality_mix"]})
  out["quality_mix"], out["factuality_mix"] = list(mix["quality"]), list(mix["factuality"])
  if out["edit_surprise"] is not None:
    if not float(out["edit_surprise"]) > 0:
      raise ValueError(f"edit_surprise={out['edit_surprise']!r}: expected a positive number of nats or None")
    out["edit_surprise"] = float(out["edit_surprise"])
  out["drop_unfinished"] = bool(out["drop_unfinished"])
  if out["broken_sentence"] is not None:
    nats, tokens = out["broken_sentence"]
    if not (float(nats) > 0 and int(tokens) >= 0):
      raise ValueError(f"broken_sentence={out['broken_sentence']!r}: expected (nats > 0, tokens >= 0) or None")
    out["broken_sentence"] = [float(nats), int(tokens)]
  if out["checkable_claim"] is not None:
    try:
      other, name = (float(x) for x in out["checkable_claim"])
    except (TypeError, ValueError):
      other = name = float("nan")
    if not (other > 0 and name > 0):
      raise ValueError(f"checkable_claim={out['checkable_claim']!r}: expected (nats > 0, nats > 0) or None")
    out["checkable_claim"] = [other, name]
  if not float(out["claim_floor"]) >= 0:
    raise ValueError(f"claim_floor={out['claim_floor']!r}: expected nats >= 0")
  out["claim_floor"] = float(out["claim_floor"])
  if not float(out["claim_total"]) >= 0:
    raise ValueError(f"claim_total={out['claim_total']!r}: expected a weight >= 0")
  out["claim_total"] = float(out["claim_total"])
  if out["claim_check"] not in (True, False):
    raise ValueError(f"claim_check={out['claim_check']!r}: expected True or False")
  out["claim_check"] = bool(out["claim_check"])
  if out["safety_by_sentence"] not in (True, False):
    raise ValueError(f"safety_by_sentence={out['safety_by_sentence']!r}: expected True or False")
  out["safety_by_sentence"] = bool(out["safety_by_sentence"])
  return out


def settings_of(teacher) -> dict:
  """The inference settings a loaded embedded teacher is used with (INFERENCE_DEFAULTS where unset)."""
  return inference_settings(teacher.info.get("inference"))


@dataclasses.dataclass(frozen=True)
class JudgeRecipe:
  """Everything that makes the embedded teacher's judge more than its trained verdicts, in one object.

  format: 'pairwise' (one prompt per ordered pair, P(a > b) from <<1>>/<<2>>) or 'scored' (one
    prompt per candidate and axis, P(a > b) = sigmoid(l_a - l_b)): what the teacher was trained on.
  mix {axis: (v, s)}: an axis's logit is v * (the verdict's logit) - s * (the candidate's surprise
    under the judge's own LM, embedded/surprise.py: one extra forward row per distinct candidate,
    no prompt, shared by the axes), so P(a > b) = sigmoid(v (l_a - l_b) - s (s_a - s_b)) in either
    format. v = 0 asks no verdict. Default (1, 0): the trained verdict alone.
  broken (nats, tokens): factuality's surprise leaves out sentences with more than `tokens` tokens
    above `nats` (broken text, not a claim: surprise.is_broken); quality's counts every sentence.
  claim_total: factuality's surprise adds this times the sum of the claim sentences' gaps to
    their largest (surprise.claim_surprise: breaks ties of minimal pairs).
  checkable (nats, nats): factuality leaves out sentences surprising in two words or inside a
    name (surprise.is_uncheckable). claim_floor: nats of each factuality gap that count as nothing.
  safety_by_sentence: P(unsafe) is the largest over the candidate cut after each of its sentences
    (judge.sentence_cuts), so text appended to a candidate (an instruction to the judge, a fake
    verdict) cannot lower the verdict on what came before it; one row per sentence.
  claim_check: factuality's surprise counts only the sentences the teacher reads as claims about
    entities it knows (its claims verdict, judge.EmbeddedJudge.claim_probs).
  """
  format: str = "pairwise"
  mix: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: check_mix(None))
  broken: tuple[float, int] | None = None
  claim_total: float = 0.0
  checkable: tuple[float, float] | None = None
  claim_floor: float = 0.0
  safety_by_sentence: bool = False
  claim_check: bool = False

  def __post_init__(self):
    if self.format not in JUDGE_FORMATS:
      raise ValueError(f"judge_format={self.format!r}: expected one of {JUDGE_FORMATS}")
    fix = lambda name, value: object.__setattr__(self, name, value)
    fix("mix", check_mix(self.mix))
    fix("broken", None if self.broken is None else (float(self.broken[0]), int(self.broken[1])))
    fix("claim_total", float(self.claim_total))
    if self.claim_total < 0:
      raise ValueError(f"claim_total={self.claim_total!r}: expected a weight >= 0")
    fix("checkable", None if self.checkable is None else (float(self.checkable[0]), float(self.checkable[1])))
    fix("claim_floor", float(self.claim_floor))
    if self.claim_floor < 0:
      raise ValueError(f"claim_floor={self.claim_floor!r}: expected nats >= 0")
    fix("safety_by_sentence", bool(self.safety_by_sentence))
    fix("claim_check", bool(self.claim_check))

  @property
  def uses_surprise(self) -> bool:
    """Some axis mixes the candidates' surprise in (the judge then needs a SurpriseProbe)."""
    return any(sw for _, sw in self.mix.values())

  @classmethod
  def from_settings(cls, settings: dict, format: str = "pairwise") -> "JudgeRecipe":
    """The recipe of `inference_settings(...)` (the embedded teacher's `teacher.inference`)."""
    s = inference_settings(settings)
    return cls(format=format, mix={"quality": s["quality_mix"], "factuality": s["factuality_mix"]},
               broken=s["broken_sentence"], claim_total=s["claim_total"], checkable=s["checkable_claim"],
               claim_floor=s["claim_floor"], safety_by_sentence=s["safety_by_sentence"],
               claim_check=s["claim_check"])

  @classmethod
  def of(cls, teacher) -> "JudgeRecipe":
    """The recipe a loaded embedded teacher judges with: its format, its `inference` settings."""
    return cls.from_settings(teacher.info.get("inference"), teacher.info.get("judge_format", "pairwise"))
