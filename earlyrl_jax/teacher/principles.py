"""Principles for rewriting: "Do not mention X; discuss Y instead." (Direct Principle Feedback).

Why (Castricato et al. 2024, arXiv 2402.07896): a model told not to mention something still
mentions it (open 7-13B chat models about a third of the time). DPF makes the teacher revise
the text that breaks a principle and trains the policy by DPO with the revision chosen and the
original rejected: the pair itself says which is better, so no judge ranks it.

This module holds what needs no synthetic world and no trainer (teacher/ imports neither):

  Principle          the banned names, the alternative, its one-line text, an exact mention count
  principle_of       the config's `principle.*` section and `sip.principle_mode`, validated
  dpf_judgement      the pair of a DPF window without a judge: revision chosen, original rejected
  penalize_mentions  SIP's judge with the principle: a candidate that mentions a banned name
                     loses `principle.judge_penalty` of its reward, picks drawn again

The principle reaches the rewriter through its prompt (teacher/prompts/paper_rewrite.py, for
instruct teachers) or the world's programmatic reviser (world/principled.py); the policy's
prompt may carry it too (`principle.in_policy_prompt`, `prompt_line`). docs/principles.md.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

MODES = ("off", "guide", "dpf")   # sip.principle_mode


@dataclasses.dataclass(frozen=True)
class Principle:
  """Do not mention `banned`; discuss `instead`.

  longer_names: names that contain a banned name as a whole word ('Tal' in 'Tal Verin'): an
  occurrence inside one of them is that other name, not a mention (the world fills it in from
  its entities, `world.principled.longer_names`)."""
  banned: tuple[str, ...]
  instead: str
  in_policy_prompt: bool = False
  judge_penalty: float = 1.0
  longer_names: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.banned or any(not b.strip() for b in self.banned):
      raise ValueError("principle.banned: give at least one name to avoid")
    if not self.instead.strip():
      raise ValueError("principle.instead: give what to discuss instead")
    if self.instead in self.banned:
      raise ValueError(f"principle.instead: {self.instead!r} is also banned")

  @property
  def text(self) -> str:
    """The principle as one sentence: 'Do not mention X; discuss Y instead.'"""
    names = " or ".join(self.banned)
    return f"Do not mention {names}; discuss {self.instead} instead."

  def prompt_line(self) -> str:
    """What precedes the policy's prompt with `in_policy_prompt` (the principle and a newline)."""
    return self.text + "\n"

  @property
  def _pattern(self) -> re.Pattern:
    # Longest names first: at any position the longest name that starts there is the one read,
    # so 'Tal Verin' is one name and not a mention of 'Tal'.
    names = sorted(set(self.banned) | set(self.longer_names), key=len, reverse=True)
    return re.compile(r"(?<![\w])(?:" + "|".join(re.escape(n) for n in names) + r")(?![\w])")

  def mentions(self, text: str) -> int:
    """How many times `text` names a banned name (whole words, case as written; an occurrence
    inside a longer known name does not count)."""
    banned = set(self.banned)
    return sum(1 for m in self._pattern.finditer(text or "") if m.group(0) in banned)


def principle_of(cfg, known: Iterable[str] | None = None) -> Principle | None:
  """The run's principle when `sip.principle_mode` is not 'off' (None when it is), from the
  `principle` section; errors name the field. known: every name the world has (a banned name or
  the alternative outside it is an error; None: not checked, e.g. no world)."""
  from earlyrl_jax.errors import ConfigError
  mode = (cfg.get("sip") or {}).get("principle_mode", "off")
  if mode not in MODES:
    raise ConfigError(f"sip.principle_mode: {mode!r} is not one of {', '.join(map(repr, MODES))}")
  if mode == "off":
    return None
  p = cfg.get("principle")
  if p is None:
    raise ConfigError(f"principle: sip.principle_mode={mode!r} needs a `principle` section "
                      "(banned, instead)")
  allowed = {"banned", "instead", "in_policy_prompt", "judge_penalty"}
  unknown = sorted(set(p.keys()) - allowed)
  if unknown:
    raise ConfigError(f"principle.{unknown[0]}: unknown field (known: {sorted(allowed)})")
  banned = tuple(n.strip() for n in str(p.get("banned", "") or "").split(",") if n.strip())
  if not banned:
    raise ConfigError(f"principle.banned: is empty; sip.principle_mode={mode!r} needs the name(s) "
                      "the text must not mention (comma-separated)")
  instead = str(p.get("instead", "") or "").strip()
  if not instead:
    raise ConfigError("principle.instead: is empty; give the name to discuss instead")
  flag = p.get("in_policy_prompt", False)
  if not isinstance(flag, bool):
    raise ConfigError(f"principle.in_policy_prompt: {flag!r} is not true or false")
  penalty = p.get("judge_penalty", 1.0)
  if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty >= 0:
    raise ConfigError(f"principle.judge_penalty: must be a number >= 0, got {penalty!r}")
  if known is not None:
    names = set(known)
    bad = [n for n in banned if n not in names]
    if bad:
      raise ConfigError(f"principle.banned: {bad} not in the world (an entity name, e.g. "
                        f"{sorted(names)[0]!r})")
    if instead not in names:
      raise ConfigError(f"principle.instead: {instead!r} not in the world")
  if instead in banned:
    raise ConfigError(f"principle.instead: {instead!r} is also in principle.banned")
  return Principle(banned, instead, in_policy_prompt=flag, judge_penalty=float(penalty))




def dpf_judgement(principle: Principle, cand_text: Sequence[Sequence[str]], *, rewrite_index: int = 1):
  """DPF's pairs, no judge: per window the revision (`rewrite_index`) chosen and the original
  (index 0) rejected, when the original mentions a banned name and the revision differs from it;
  every other window is `all_tied` (no pair: the DPO term masks it). Rewards: 1 chosen, 0 else."""
  from earlyrl_jax.teacher.tournament import Judgement
  G = len(cand_text)
  C = max((len(c) for c in cand_text), default=rewrite_index + 1)
  pair = np.array([principle.mentions(c[0]) > 0 and c[rewrite_index].strip() != c[0].strip()
                   for c in cand_text], bool)
  rewards = np.zeros((G, C), np.float32)
  rewards[:, rewrite_index] = pair
  return Judgement(rewards=rewards, per_axis={}, prefs={}, calls=0, position_consistency=1.0,
                   chosen=np.full((G,), rewrite_index, np.int64), rejected=np.zeros((G,), np.int64),
                   all_tied=~pair, comparisons=np.zeros((G,), np.int64))


def penalize_mentions(j, principle: Principle, cand_text: Sequence[Sequence[str]], rngs):
  """The judgement with every candidate that mentions a banned name `principle.judge_penalty`
  lower, and chosen / rejected / all_tied read again from the new rewards (ties drawn with
  `rngs`, one generator per group, as the tournament draws them). The judge's own per-axis
  rewards are kept; `per_axis['principle']` records 1 - mentioned per candidate."""
  from earlyrl_jax.teacher.tournament import TIE_EPS, draw_among_ties
  G, C = j.rewards.shape
  mentioned = np.zeros((G, C), np.float32)
  for g, texts in enumerate(cand_text):
    for i, t in enumerate(texts[:C]):
      mentioned[g, i] = principle.mentions(t) > 0
  rewards = j.rewards - principle.judge_penalty * mentioned   # NaN padding stays NaN
  chosen = draw_among_ties(rewards, np.nanmax(rewards, axis=1), rngs)
  rejected = draw_among_ties(rewards, np.nanmin(rewards, axis=1), rngs)
  all_tied = (np.nanmax(rewards, 1) - np.nanmin(rewards, 1)) < TIE_EPS
  per_axis = dict(j.per_axis, principle=np.where(np.isnan(j.rewards), np.nan, 1.0 - mentioned))
  return dataclasses.replace(j, rewards=rewards, per_axis=per_axis, chosen=chosen.astype(np.int64),
                             rejected=rejected.astype(np.int64), all_tied=all_tied)


def with_prompt_ids(prefix, line, limit: int, bos_id):
  """`line` (the principle's ids) before `prefix` (after its BOS, when it starts with one), the
  prefix's end kept so the prompt holds at most `limit` ids: the principle is always whole, and
  the context right before the cut is never lost. Training (SIP windows) and evaluation alike."""
  prefix = np.asarray(prefix, np.int32)
  line = np.asarray(line, np.int32)
  head = prefix[:1] if bos_id is not None and len(prefix) and prefix[0] == bos_id else prefix[:0]
  body = prefix[len(head):]
  room = max(limit - len(head) - len(line), 1)
  return np.concatenate([head, line, body[-room:]]).astype(np.int32)
