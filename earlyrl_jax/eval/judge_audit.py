"""Audit a judge against the world's oracles on the candidates a SIP step would give it.

  python -m earlyrl_jax.eval.judge_audit --run=RUN_DIR [--teacher=DIR] [--judge=teacher|oracle]
                                         [--oracle-axes=factuality] [--prefixes=64] [--rollouts=4]
                                         [--out=FILE]

A judge's held-out accuracy is measured on clean text (the teacher's own report); SIP asks it
about something else: the original suffix against the policy's rollouts, and rollouts against
each other. This tool rebuilds those groups for `--prefixes` held-out prefixes of the run's
world (`eval_prefixes.jsonl`): the original continuation cut to `data.suffix_len` tokens and
`--rollouts` samples of the run's policy at `sip.temperature`, each judged up to its last
sentence end (`sip.judge_trim`), through the run's tournament (`sip.judge_scheme`,
`sip.judge_axes`, `sip.both_orders`, `sip.aggregate`). Then, per axis:

- of the candidate pairs the oracles order, the share the judge orders the same way (from its
  per-axis rewards; a tie counts one half), for original-vs-rollout and rollout-vs-rollout pairs;
- the oracle scores of the candidates the judge chooses and rejects (DPO's pair), beside those
  of the pair the same tournament picks with the oracles as its judge (`sip.judge='oracle'`,
  the report's upper bound).

A judge that orders originals against rollouts but not rollouts among themselves teaches the
policy to move toward the original text, not to prefer its own better samples. The result is
printed and written as JSON (default RUN_DIR/judge_audit.json).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
from typing import Any, Sequence

import numpy as np

from earlyrl_jax.teacher.prompts import AXES  # the judge's axes

PAIR_KINDS = ("original_vs_rollout", "rollout_vs_rollout")


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


def audit(judgement, oracle_judgement, oracle: dict[str, np.ndarray]) -> dict[str, Any]:
  """The audit of one judged batch: per-axis pair agreement with the oracles' scores, and the
  oracle scores of the pair the judge picks (chosen / rejected) beside the pair the same
  tournament picks with the oracles as its judge (`oracle_judgement`)."""
  G, C = next(iter(oracle.values())).shape
  rows = np.arange(G)
  pick = lambda idx: {a: float(oracle[a][rows, idx].mean()) for a in oracle}
  pair = lambda j: {"chosen": pick(j.chosen), "rejected": pick(j.rejected),
                    "chosen_original": float(np.mean(j.chosen == 0))}
  return {"groups": int(G), "candidates": int(C),
          "axes": {a: pair_agreement(judgement.per_axis[a], oracle[a]) for a in oracle
                   if a in judgement.per_axis},
          "judge_pair": pair(judgement), "oracle_pair": pair(oracle_judgement)}


def sip_candidates(model, tokenizer, rows: Sequence[dict], *, suffix_len: int, num_rollouts: int,
                   temperature: float, top_p: float, key, mesh=None) -> list[list[str]]:
  """[G][1 + K] candidate texts as a SIP step builds them: the original continuation cut to
  `suffix_len` tokens, then K rollouts of `suffix_len` tokens (or up to an end of document)."""
  from earlyrl_jax.eval.evaluate import _encode
  from earlyrl_jax.sampling.sampler import Sampler
  budget = model.cfg.max_seq_len - suffix_len
  if budget < 1:
    raise ValueError(f"data.suffix_len={suffix_len} leaves no room for a prefix in "
                     f"model.max_seq_len={model.cfg.max_seq_len}")
  prompts = [_encode(tokenizer, r["prefix"], budget) for r in rows]
  stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else ()
  out = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)(
      prompts, max_new_tokens=suffix_len, key=key, temperature=temperature, top_p=top_p,
      num_samples=num_rollouts, stop_tokens=stops)
  texts = out.texts(tokenizer)
  originals = [tokenizer.decode_continuation(tokenizer.encode_continuation(r["reference"])[:suffix_len])
               for r in rows]
  return [[originals[g]] + texts[g * num_rollouts:(g + 1) * num_rollouts] for g in range(len(rows))]


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
        + f"; the original chosen in {p['chosen_original']:.0%}")
  return "\n".join(lines)


def _teacher_dir(cfg, run_dir: str) -> str:
  from earlyrl_jax.teacher_setup import teacher_workdir
  return cfg.teacher.path or os.path.join(teacher_workdir(cfg, run_dir), "teacher")


def run_audit(run_dir: str, *, teacher_dir: str = "", judge: str = "teacher", num_prefixes: int = 64,
              num_rollouts: int = 0, seed: int = 0, out: str = "", oracle_axes: str | None = None) -> dict[str, Any]:
  """Builds, judges and audits the groups of a training run's newest checkpoint; writes `out`.
  oracle_axes: axes the oracles judge beside the teacher ('factuality'); None: the run's own
  `sip.oracle_axes`."""
  import jax
  import ml_collections
  from earlyrl_jax.eval.evaluate import _read
  from earlyrl_jax.generate import load_run
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax import configs
  from earlyrl_jax.teacher.judges.oracle import AxisJudges, OracleJudge
  from earlyrl_jax.teacher.tournament import judge_groups
  from earlyrl_jax.train import loop
  from earlyrl_jax.train.sip import judged_texts
  from earlyrl_jax.world import KnowledgeBase, Oracles
  if judge not in ("teacher", "oracle"):
    raise ValueError(f"--judge={judge!r}: expected 'teacher' or 'oracle'")
  with open(os.path.join(run_dir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  world_dir = loop.world_dir_of(cfg, run_dir)
  prefixes_path = os.path.join(world_dir, "eval_prefixes.jsonl")
  if not os.path.isfile(prefixes_path):
    raise FileNotFoundError(f"{prefixes_path}: the run's world has no held-out prefixes")
  rows = _read(prefixes_path, num_prefixes)
  if not rows:
    raise ValueError(f"{prefixes_path}: no held-out prefixes")
  mesh = mesh_lib.single_device_mesh()
  model, tokenizer, described = load_run(run_dir, mesh=mesh)
  s, K = cfg.sip, int(num_rollouts or cfg.sip.num_rollouts)
  if K < 1:
    raise ValueError(f"{run_dir}: sip.num_rollouts={cfg.sip.num_rollouts} (a run without rollouts); "
                     "pass --rollouts=K")
  loop.log(f"judge audit: {described}, {len(rows)} prefixes x (original + {K} rollouts), {judge} judge")
  cands = sip_candidates(model, tokenizer, rows, suffix_len=int(cfg.data.suffix_len), num_rollouts=K,
                         temperature=float(s.temperature), top_p=float(s.top_p),
                         key=jax.random.key(seed), mesh=mesh)
  references = [c[0] for c in cands]  # factuality's reference: the untrimmed original, as in SIP
  if s.get("judge_trim", False):
    cands = judged_texts(cands)
  oracles = Oracles(KnowledgeBase.load(world_dir))
  if judge == "oracle":
    the_judge = OracleJudge(oracles)
  else:
    from earlyrl_jax.teacher.teacher import load_teacher
    the_judge = load_teacher(teacher_dir or _teacher_dir(cfg, run_dir), mesh=mesh).judge(
        kind=cfg.teacher.get("judge_kind", "auto"))
    asked = cfg if oracle_axes is None else ml_collections.ConfigDict({"sip": {"oracle_axes": oracle_axes}})
    axes = configs.oracle_axes(asked)
    if axes:
      the_judge = AxisJudges(the_judge, dict.fromkeys(axes, OracleJudge(oracles)))
      judge = f"teacher, oracles on {','.join(axes)}"
  prefixes = [r["prefix"] for r in rows]
  weights = {a: float(w) for a, w in dict(s.judge_axes).items() if w > 0}
  tournament = lambda j: judge_groups(j, prefixes, cands, scheme=s.judge_scheme, axes=weights,
                                      both_orders=bool(s.both_orders), aggregate=s.aggregate,
                                      references=references, budget=int(s.judge_budget) or None)
  result = audit(tournament(the_judge), tournament(OracleJudge(oracles)),
                 oracle_scores(oracles, prefixes, cands, tuple(weights)))
  result.update(run=described, judge=judge, rollouts=K, seed=seed)
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
  ap.add_argument("--out", default="", help="JSON output ('' = RUN/judge_audit.json)")
  a = ap.parse_args(argv)
  run_audit(a.run, teacher_dir=a.teacher, judge=a.judge, num_prefixes=a.prefixes,
            num_rollouts=a.rollouts, seed=a.seed, out=a.out, oracle_axes=a.oracle_axes)


if __name__ == "__main__":
  main()
