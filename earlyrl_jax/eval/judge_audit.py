"""Audit a judge against the world's oracles on the candidates a SIP step would give it.

  python -m earlyrl_jax.eval.judge_audit --run=RUN_DIR [--teacher=DIR] [--judge=teacher|oracle]
                                         [--oracle-axes=factuality] [--prefixes=64] [--rollouts=4]
                                         [--reference=original|next_span] [--out=FILE]

A judge's held-out accuracy is measured on clean text (the teacher's own report); SIP asks it
about something else: the original suffix against the policy's rollouts, and rollouts against
each other. This tool rebuilds those groups for `--prefixes` prefixes of the run's world's
validation split (world/splits.py: the audit informs choices, so it never reads the test
prefixes that score the final table; `--split=test` is refused): the original continuation cut
to `data.suffix_len` tokens and `--rollouts` samples of the run's policy at `sip.temperature`,
each judged up to its last sentence end (`sip.judge_trim`), through the run's tournament
(`sip.judge_scheme`, `sip.judge_axes`, `sip.both_orders`, `sip.aggregate`). Then, per axis:

- of the candidate pairs the oracles order, the share the judge orders the same way (from its
  per-axis rewards; a tie counts one half), for original-vs-rollout and rollout-vs-rollout pairs;
- the oracle scores of the candidates the judge chooses and rejects (DPO's pair), beside those
  of the pair the same tournament picks with the oracles as its judge (`sip.judge='oracle'`,
  the report's upper bound), with what DPO trains on: the chosen and rejected candidates'
  length in tokens, how often they ended the document (EOS), their oracle quality untrimmed
  (training uses the whole candidate), and how often the judge could not rank a group;
- the mean per-axis reward of the original suffix. Factuality's reference is the original suffix
  itself, as in SIP and the paper; `--reference=next_span` hands the judge the document's text
  after it instead (no candidate contains it), which measures what judging the original against
  itself does to its reward.

A judge that orders originals against rollouts but not rollouts among themselves teaches the
policy to move toward the original text, not to prefer its own better samples. The result is
printed and written as JSON (default RUN_DIR/judge_audit.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
from typing import Any, Sequence

import numpy as np

from earlyrl_jax.teacher.prompts import AXES  # the judge's axes

PAIR_KINDS = ("original_vs_rollout", "rollout_vs_rollout")
REFERENCES = ("original", "next_span")   # factuality's reference (see the module docstring)


def oracle_scores(oracles, prefixes: Sequence[str], candidates: Sequence[Sequence[str]],
                  axes: Sequence[str] = AXES) -> dict[str, np.ndarray]:
  """{axis: float [G, C]}: the oracles' score of every candidate (higher is better)."""
  from earlyrl_jax.teacher.judges.oracle import OracleJudge
  oj = OracleJudge(oracles)
  return {a: np.array([[oj.axis_score(p, c, a) for c in cands] for p, cands in zip(prefixes, candidates)],
                      np.float64) for a in axes}


def pair_agreement(judge_GxC: np.ndarray, oracle_GxC: np.ndarray, *, eps: float = 1e-9) -> dict[str, Any]:
  """Of the pairs (within a group) the oracle scores differ on, the share the judge orders the
  same way (a judge tie counts 1/2), by pair kind; candidate 0 of a group is the original."""
  hits: dict[str, list[float]] = {k: [] for k in PAIR_KINDS}
  G, C = oracle_GxC.shape
  for g in range(G):
    for x, y in itertools.combinations(range(C), 2):
      do = oracle_GxC[g, x] - oracle_GxC[g, y]
      dj = judge_GxC[g, x] - judge_GxC[g, y]
      if abs(do) <= eps or not np.isfinite(dj):
        continue
      hits[PAIR_KINDS[0] if x == 0 else PAIR_KINDS[1]].append(
          0.5 if abs(dj) <= eps else float(np.sign(dj) == np.sign(do)))
  share = lambda v: float(np.mean(v)) if v else None  # None (JSON null): no pair to judge
  every = hits[PAIR_KINDS[0]] + hits[PAIR_KINDS[1]]
  out: dict[str, Any] = {"agreement": share(every), "pairs": len(every)}
  for k in PAIR_KINDS:
    out[k] = {"agreement": share(hits[k]), "pairs": len(hits[k])}
  return out


def audit(judgement, oracle_judgement, oracle: dict[str, np.ndarray],
          trained: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """The audit of one judged batch: per-axis pair agreement with the oracles' scores, and the
  oracle scores of the pair the judge picks (chosen / rejected) beside the pair the same
  tournament picks with the oracles as its judge (`oracle_judgement`).

  trained: per candidate [G, C] what DPO would train on ('tokens', 'eos' as 0/1, 'quality_untrimmed'):
  reported for both picks."""
  G, C = next(iter(oracle.values())).shape
  rows = np.arange(G)
  pick = lambda table, idx: {a: float(v[rows, idx].mean()) for a, v in table.items()}

  def pair(j):
    out = {"chosen": pick(oracle, j.chosen), "rejected": pick(oracle, j.rejected),
           "chosen_original": float(np.mean(j.chosen == 0))}
    if getattr(j, "all_tied", None) is not None:
      out["all_tied"] = float(np.mean(j.all_tied))
    if trained:
      out["chosen_trained"] = pick(trained, j.chosen)
      out["rejected_trained"] = pick(trained, j.rejected)
    return out
  out = {"groups": int(G), "candidates": int(C),
         "axes": {a: pair_agreement(judgement.per_axis[a], oracle[a]) for a in oracle
                  if a in judgement.per_axis},
         "judge_pair": pair(judgement), "oracle_pair": pair(oracle_judgement)}
  if getattr(judgement, "per_axis", None):
    out["original_reward"] = {a: float(np.nanmean(r[:, 0])) for a, r in judgement.per_axis.items()}
  return out


def sip_candidates(model, tokenizer, rows: Sequence[dict], *, suffix_len: int, num_rollouts: int,
                   temperature: float, top_p: float, key, mesh=None,
                   reference: str = "original") -> dict[str, Any]:
  """The candidates of G groups as a SIP step builds them: 'texts' [G][1 + K], the original
  continuation cut to `suffix_len` tokens then K rollouts of `suffix_len` tokens (or up to an end
  of document), decoded as SIP decodes them; 'tokens' and 'eos' float [G, 1 + K] (length in
  tokens; 1 where a rollout ended its document); 'references': factuality's reference per group,
  the original ('original') or the document's next `suffix_len` tokens after it ('next_span',
  from the split's 'rest' field; '' where the document ends)."""
  from earlyrl_jax.eval.evaluate import _encode
  from earlyrl_jax.sampling.sampler import Sampler
  budget = model.cfg.max_seq_len - suffix_len
  if budget < 1:
    raise ValueError(f"data.suffix_len={suffix_len} leaves no room for a prefix in "
                     f"model.max_seq_len={model.cfg.max_seq_len}")
  if reference not in REFERENCES:
    raise ValueError(f"reference={reference!r}: expected one of {REFERENCES}")
  prompts = [_encode(tokenizer, r["prefix"], budget) for r in rows]
  eos_id = tokenizer.eos_id
  out = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)(
      prompts, max_new_tokens=suffix_len, key=key, temperature=temperature, top_p=top_p,
      num_samples=num_rollouts, stop_tokens=[eos_id] if eos_id is not None else ())
  ids = [out.tokens[r, :out.lengths[r]].tolist() for r in range(len(out.lengths))]
  rolls = [tokenizer.decode_continuation([i for i in x if i != eos_id]) for x in ids]
  ended = [bool(x) and eos_id is not None and x[-1] == eos_id for x in ids]
  texts, tokens, eos, refs = [], [], [], []
  K = num_rollouts
  for g, r in enumerate(rows):
    if reference == "next_span" and "rest" not in r:
      raise ValueError("reference='next_span' needs the split's 'rest' field (the validation prefixes)")
    doc = tokenizer.encode_continuation(r.get("rest", r["reference"]))
    original = doc[:suffix_len]
    texts.append([tokenizer.decode_continuation(original)] + rolls[g * K:(g + 1) * K])
    tokens.append([len(original)] + [len(x) - int(e) for x, e in zip(ids[g * K:(g + 1) * K], ended[g * K:(g + 1) * K])])
    eos.append([0.0] + [float(e) for e in ended[g * K:(g + 1) * K]])
    refs.append(texts[-1][0] if reference == "original" else tokenizer.decode_continuation(doc[suffix_len:2 * suffix_len]))
  return {"texts": texts, "tokens": np.asarray(tokens, np.float64), "eos": np.asarray(eos, np.float64),
          "references": refs}


def format_audit(a: dict[str, Any]) -> str:
  lines = [f"{a['groups']} groups of {a['candidates']} candidates (original + rollouts); "
           "agreement = share of the pairs the oracles order that the judge orders alike"]
  lines.append(f"  {'axis':11s} {'all pairs':>16s} {'original/rollout':>18s} {'rollout/rollout':>18s}")
  for axis, r in a["axes"].items():
    cell = lambda d: "-" if d["agreement"] is None else f"{d['agreement']:.3f} ({d['pairs']})"
    lines.append(f"  {axis:11s} {cell(r):>16s} {cell(r[PAIR_KINDS[0]]):>18s} {cell(r[PAIR_KINDS[1]]):>18s}")
  for who in ("judge_pair", "oracle_pair"):
    p = a[who]
    lines.append(f"  {who.replace('_', ' ')}: oracle scores chosen / rejected " + ", ".join(
        f"{ax} {p['chosen'][ax]:.3f} / {p['rejected'][ax]:.3f}" for ax in p["chosen"])
        + f"; the original chosen in {p['chosen_original']:.0%}"
        + (f"; all tied in {p['all_tied']:.0%}" if "all_tied" in p else ""))
    if "chosen_trained" in p:
      c, r = p["chosen_trained"], p["rejected_trained"]
      lines.append("    trained on (chosen / rejected): " + ", ".join(
          f"{k} {c[k]:.3f} / {r[k]:.3f}" for k in c))
  if "original_reward" in a:
    lines.append("  the original's mean reward: " + ", ".join(
        f"{k} {v:.3f}" for k, v in a["original_reward"].items())
        + f" (factuality reference: {a.get('reference', 'original')})")
  return "\n".join(lines)


def _teacher_dir(cfg, run_dir: str) -> str:
  from earlyrl_jax.teacher_setup import teacher_workdir
  return cfg.teacher.path or os.path.join(teacher_workdir(cfg, run_dir), "teacher")


@dataclasses.dataclass
class Groups:
  """SIP-shaped candidate groups of a run's policy on held-out prefixes, with the oracles' view."""
  cfg: Any                      # the run's config
  described: str                # the policy (run and step)
  prefixes: list[str]
  judged: list[list[str]]       # [G][1 + K] as the judge sees them (sip.judge_trim)
  full: list[list[str]]         # [G][1 + K] as DPO trains on them (untrimmed)
  references: list[str]         # factuality's reference per group
  reference: str                # 'original' | 'next_span'
  oracle: dict[str, np.ndarray]     # axis -> [G, 1 + K] oracle scores of the judged texts
  trained: dict[str, np.ndarray]    # what DPO trains on: 'tokens', 'eos', 'quality_untrimmed' [G, 1 + K]
  oracles: Any

  @property
  def rollouts(self) -> int:
    return len(self.judged[0]) - 1


def build_groups(run_dir: str, *, split: str = "validation", num_prefixes: int = 64, num_rollouts: int = 0,
                 seed: int = 0, reference: str = "original", axes: Sequence[str] | None = None) -> Groups:
  """The groups of a training run's newest checkpoint on `num_prefixes` prefixes of a tuning
  split (validation: the test split is refused, world/splits.py)."""
  import jax
  import ml_collections
  from earlyrl_jax import world as W
  from earlyrl_jax.eval.evaluate import _read
  from earlyrl_jax.generate import load_run
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax import configs
  from earlyrl_jax.teacher.judges.oracle import OracleJudge
  from earlyrl_jax.train import loop
  from earlyrl_jax.train.sip import judged_texts
  W.tuning_split(split, "judge_audit")
  with open(os.path.join(run_dir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  world_dir = loop.world_dir_of(cfg, run_dir)
  rows = _read(W.split_file(world_dir, split, "prefixes"), num_prefixes)
  if not rows:
    raise ValueError(f"{W.split_file(world_dir, split, 'prefixes')}: no held-out prefixes")
  mesh = mesh_lib.single_device_mesh()
  model, tokenizer, described = load_run(run_dir, mesh=mesh)
  s, K = cfg.sip, int(num_rollouts or cfg.sip.num_rollouts)
  if K < 1:
    raise ValueError(f"{run_dir}: sip.num_rollouts={cfg.sip.num_rollouts} (a run without rollouts); "
                     "pass --rollouts=K")
  built = sip_candidates(model, tokenizer, rows, suffix_len=int(cfg.data.suffix_len), num_rollouts=K,
                         temperature=float(s.temperature), top_p=float(s.top_p),
                         key=jax.random.key(seed), mesh=mesh, reference=reference)
  full = built["texts"]
  judged = judged_texts(full) if s.get("judge_trim", False) else full
  oracles = W.Oracles(W.KnowledgeBase.load(world_dir))
  prefixes = [r["prefix"] for r in rows]
  axes = tuple(axes or [a for a, w in dict(s.judge_axes).items() if w > 0])
  oj = OracleJudge(oracles)
  trained = {"tokens": built["tokens"], "eos": built["eos"],
             "quality_untrimmed": np.array([[oj.axis_score(p, c, "quality") for c in cands]
                                            for p, cands in zip(prefixes, full)], np.float64)}
  return Groups(cfg, described, prefixes, judged, full, built["references"], reference,
                oracle_scores(oracles, prefixes, judged, axes), trained, oracles)


def tournament(groups: Groups, judge, *, axes: dict[str, float] | None = None):
  """The run's tournament (`sip.*`) over the groups with `judge`; axes: other weights."""
  from earlyrl_jax.teacher.tournament import judge_groups
  s = groups.cfg.sip
  weights = axes or {a: float(w) for a, w in dict(s.judge_axes).items() if w > 0}
  return judge_groups(judge, groups.prefixes, groups.judged, scheme=s.judge_scheme, axes=weights,
                      both_orders=bool(s.both_orders), aggregate=s.aggregate,
                      references=groups.references, budget=int(s.judge_budget) or None,
                      empty_loses=bool(s.get("empty_loses", False)))


def audit_groups(groups: Groups, judge) -> dict[str, Any]:
  """`audit` of `judge` on the groups, beside the same tournament with the oracles as judge."""
  from earlyrl_jax.teacher.judges.oracle import OracleJudge
  result = audit(tournament(groups, judge), tournament(groups, OracleJudge(groups.oracles)),
                 groups.oracle, groups.trained)
  result.update(run=groups.described, rollouts=groups.rollouts, reference=groups.reference)
  return result


def run_audit(run_dir: str, *, teacher_dir: str = "", judge: str = "teacher", num_prefixes: int = 64,
              num_rollouts: int = 0, seed: int = 0, out: str = "", oracle_axes: str | None = None,
              split: str = "validation", reference: str = "original") -> dict[str, Any]:
  """Builds, judges and audits the groups of a training run's newest checkpoint; writes `out`.
  oracle_axes: axes the oracles judge beside the teacher ('factuality'); None: the run's own
  `sip.oracle_axes`."""
  import ml_collections
  from earlyrl_jax import configs
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.teacher.judges.oracle import AxisJudges, OracleJudge
  from earlyrl_jax.train import loop
  if judge not in ("teacher", "oracle"):
    raise ValueError(f"--judge={judge!r}: expected 'teacher' or 'oracle'")
  groups = build_groups(run_dir, split=split, num_prefixes=num_prefixes, num_rollouts=num_rollouts,
                        seed=seed, reference=reference)
  cfg = groups.cfg
  loop.log(f"judge audit: {groups.described}, {len(groups.prefixes)} {split} prefixes x (original + "
           f"{groups.rollouts} rollouts), {judge} judge")
  if judge == "oracle":
    the_judge = OracleJudge(groups.oracles)
  else:
    from earlyrl_jax.teacher.teacher import load_teacher
    the_judge = load_teacher(teacher_dir or _teacher_dir(cfg, run_dir),
                             mesh=mesh_lib.single_device_mesh()).judge(
        kind=cfg.teacher.get("judge_kind", "auto"))
    asked = cfg if oracle_axes is None else ml_collections.ConfigDict({"sip": {"oracle_axes": oracle_axes}})
    axes = configs.oracle_axes(asked)
    if axes:
      the_judge = AxisJudges(the_judge, dict.fromkeys(axes, OracleJudge(groups.oracles)))
      judge = f"teacher, oracles on {','.join(axes)}"
  result = audit_groups(groups, the_judge)
  result.update(judge=judge, seed=seed, split=split)
  out = out or os.path.join(run_dir, "judge_audit.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  loop.log(format_audit(result) + f"\nwrote {out}")
  return result


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--run", required=True, help="a training run's WORKDIR (config.json + checkpoints)")
  ap.add_argument("--teacher", default="", help="teacher directory ('' = the run's teacher)")
  ap.add_argument("--judge", default="teacher", choices=("teacher", "oracle"))
  ap.add_argument("--prefixes", type=int, default=64, help="held-out prefixes (groups)")
  ap.add_argument("--rollouts", type=int, default=0, help="rollouts per prefix (0 = sip.num_rollouts)")
  ap.add_argument("--oracle-axes", default=None,
                  help="axes the oracles judge beside the teacher ('factuality'; default: the run's)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--split", default="validation", help="held-out split (validation; test is refused)")
  ap.add_argument("--reference", default="original", choices=REFERENCES,
                  help="factuality's reference: the original suffix (SIP's) or the text after it")
  ap.add_argument("--out", default="", help="JSON output ('' = RUN/judge_audit.json)")
  a = ap.parse_args(argv)
  run_audit(a.run, teacher_dir=a.teacher, judge=a.judge, num_prefixes=a.prefixes,
            num_rollouts=a.rollouts, seed=a.seed, out=a.out, oracle_axes=a.oracle_axes, split=a.split,
            reference=a.reference)


if __name__ == "__main__":
  main()
