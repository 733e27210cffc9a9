"""The judge a run's config asks for: `teacher.judge_kind` with its settings, on its backend.

    judge = configured_judge(cfg.teacher, teacher)   # teacher: the loaded bundle, or None (served)

`teacher.prompt.*` (token budgets of the paper's prompts) and `teacher.generative.*` (how a
generative verdict is sampled) become `paper_judge`'s arguments; `teacher.backend` says where the
model runs (in process over the bundle, or the served model of `teacher.openai.*`).
"""
from __future__ import annotations

import dataclasses

from earlyrl_jax.teacher.teacher import paper_judge


def judge_options(section) -> dict:
  """`teacher.prompt.*` and `teacher.generative.*` of a config's teacher section (a ConfigDict
  or dict; missing fields keep their defaults) as `paper_judge` keyword arguments."""
  from earlyrl_jax.teacher.judges.generative import Sampling
  from earlyrl_jax.teacher.prompts.paper import Budgets

  def part(name, cls):
    raw = section.get(name) if section is not None else None
    raw = dict(raw.to_dict() if hasattr(raw, "to_dict") else (raw or {}))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
      raise ValueError(f"teacher.{name}.{unknown[0]}: unknown field (known: {sorted(known)})")
    return cls(**raw)
  return {"budgets": part("prompt", Budgets), "sampling": part("generative", Sampling)}


def configured_judge(section, teacher=None, *, transport=None):
  """The judge `teacher.judge_kind` asks for, with `teacher.prompt.*` / `teacher.generative.*`,
  on the backend `teacher.backend` names: in process over the loaded `teacher`, or the served
  model (`teacher.openai.*`; no bundle needed, and 'auto' is then 'logprob')."""
  kind = section.get("judge_kind", "auto")
  if teacher is not None:
    kind = teacher.judge_kind(kind)
  elif kind not in ("auto", "logprob", "generative"):
    raise ValueError(f"teacher.judge_kind={kind!r}: a teacher without a loaded bundle (served) "
                     "is judged by 'logprob', 'generative' or 'auto'")
  if kind == "embedded":
    return teacher.judge("embedded")
  kind = "logprob" if kind == "auto" else kind
  if section.get("backend", "inprocess") == "inprocess":
    return teacher.judge(kind, **judge_options(section))
  from earlyrl_jax.teacher.backends import backend_for
  return paper_judge(kind, backend_for(section, transport=transport), **judge_options(section))
