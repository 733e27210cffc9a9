"""Choose the embedded teacher's inference settings on the validation split, never on test.

  python -m earlyrl_jax.eval.select_inference --runs=RUN_A,RUN_B [--teacher=DIR] [--prefixes=128]
                                              [--pairs=300] [--out=FILE]

`teacher.inference` (the judge's surprise mix, the claims check, the checkable-claim rule, the
claim floor, ...) changes no weight, so many settings can be compared on one trained teacher.
Each setting of `GRID` judges:

- SIP's candidate groups of each policy run (judge_audit.build_groups on validation prefixes:
  the original suffix and the policy's rollouts), scored by what online DPO learns from them:
  the oracles' gap between the chosen and the rejected candidate on each axis (a pair whose
  chosen is better on every axis teaches every axis), and the judge's agreement with the oracles
  on the pairs they order;
- the world's validation pairs (a clean suffix against a corrupted one, labelled by the
  oracles): agreement per axis, as the teacher's held-out report measures it on its own pairs.

The score of a setting is the mean over runs of the pair's summed oracle gap (the judge's axes
weighted as in the runs' `sip.judge_axes`); the table is sorted by it and written as JSON. The
groups and pairs are built once; each setting only judges again. A setting's row says what it
changes from the teacher's recorded settings.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np

# name -> teacher.inference overrides (on top of the teacher's recorded settings). The first is
# the recorded settings themselves; the others change one thing, or go back to an earlier default.
GRID: dict[str, dict[str, Any]] = {
    "recorded": {},
    "no claims verdict": {"claim_check": False},
    "no checkable rule": {"checkable_claim": None},
    "claim floor 0": {"claim_floor": 0.0},
    "claim floor 5": {"claim_floor": 5.0},
    "checkable (8, 7)": {"checkable_claim": [8.0, 7.0]},
    "checkable (6, 5)": {"checkable_claim": [6.0, 5.0]},
    "previous teacher's (no claims rules)": {"claim_check": False, "checkable_claim": None, "claim_floor": 0.0},
    "quality surprise 0": {"quality_mix": [1.0, 0.0]},
    "quality surprise 0.5": {"quality_mix": [1.0, 0.5]},
    "quality surprise 1": {"quality_mix": [1.0, 1.0]},
    "factuality + verdict": {"factuality_mix": [1.0, 1.0]},
    "broken (6, 1)": {"broken_sentence": [6.0, 1]},
    "safety whole text": {"safety_by_sentence": False},
}
AXES = ("quality", "safety", "factuality")


def pair_labels_agreement(judge, pairs: Sequence[dict]) -> dict[str, float | None]:
  """Per axis, the share of the pairs the oracles order (label 'a' / 'b') that the judge orders
  alike (a tie counts one half)."""
  from earlyrl_jax.teacher.tournament import judge_groups
  j = judge_groups(judge, [p["prefix"] for p in pairs], [[p["a"], p["b"]] for p in pairs],
                   axes=dict.fromkeys(AXES, 1.0))
  out = {}
  for axis in AXES:
    hits = []
    for g, p in enumerate(pairs):
      label = p["labels"][axis]
      if label == "tie":
        continue
      d = j.per_axis[axis][g, 0] - j.per_axis[axis][g, 1]
      hits.append(0.5 if abs(d) < 1e-9 else float((d > 0) == (label == "a")))
    out[axis] = float(np.mean(hits)) if hits else None
  return out


def pair_gap(audit: dict[str, Any], weights: dict[str, float]) -> float:
  """The oracles' weighted gap between the judge's chosen and rejected candidate (DPO's pair)."""
  p = audit["judge_pair"]
  total = sum(weights.values())
  return sum(w * (p["chosen"][a] - p["rejected"][a]) for a, w in weights.items() if a in p["chosen"]) / total


def select(run_dirs: Sequence[str], *, teacher_dir: str = "", num_prefixes: int = 128, num_pairs: int = 300,
           grid: dict[str, dict] | None = None, seed: int = 7, empty_loses: bool = True,
           log=print) -> dict[str, Any]:
  """Judges the validation groups of every run and the validation pairs with every setting.
  empty_loses: the tournament's rule (sip.empty_loses, on by default) whatever the runs used."""
  from earlyrl_jax import world as W
  from earlyrl_jax.eval import judge_audit as JA
  from earlyrl_jax.eval.evaluate import _read
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.embedded.recipe import inference_settings, settings_of
  from earlyrl_jax.teacher.teacher import load_teacher
  from earlyrl_jax.train import loop
  grid = GRID if grid is None else grid
  groups = [JA.build_groups(r, num_prefixes=num_prefixes, seed=seed) for r in run_dirs]
  for g in groups:
    g.cfg.sip.empty_loses = bool(empty_loses)
  cfg = groups[0].cfg
  teacher = load_teacher(teacher_dir or JA._teacher_dir(cfg, run_dirs[0]), mesh=mesh_lib.single_device_mesh())
  pairs = _read(W.split_file(loop.world_dir_of(cfg, run_dirs[0]), W.VALIDATION, "pairs"), num_pairs)
  recorded = settings_of(teacher)
  weights = {a: float(w) for a, w in dict(cfg.sip.judge_axes).items() if w > 0}
  rows = []
  for name, change in grid.items():
    settings = inference_settings({**recorded, **change})
    teacher.info = {**teacher.info, "inference": settings}
    judge = teacher.judge(kind="embedded")
    audits = [JA.audit_groups(g, judge) for g in groups]
    row = {"setting": name, "change": change,
           "score": float(np.mean([pair_gap(a, weights) for a in audits])),
           "pairs_agreement": pair_labels_agreement(judge, pairs) if pairs else {},
           "runs": [{"run": a["run"], "pair_gap": pair_gap(a, weights),
                     "chosen": a["judge_pair"]["chosen"], "rejected": a["judge_pair"]["rejected"],
                     "chosen_original": a["judge_pair"]["chosen_original"],
                     "agreement": {ax: {k: r[k]["agreement"] for k in JA.PAIR_KINDS}
                                   for ax, r in a["axes"].items()}} for a in audits]}
    rows.append(row)
    log(format_row(row))
  teacher.info = {**teacher.info, "inference": recorded}
  rows.sort(key=lambda r: -r["score"])
  return {"split": W.VALIDATION, "runs": list(run_dirs), "prefixes": num_prefixes, "pairs": len(pairs),
          "weights": weights, "recorded": recorded, "rows": rows}


def format_row(row: dict[str, Any]) -> str:
  gap = lambda r, a: r["chosen"][a] - r["rejected"][a]
  per_run = "; ".join(
      f"{os.path.basename(os.path.normpath(r['run'].split(' ')[0]))}: gap " + "/".join(
          f"{gap(r, a):+.2f}" for a in AXES if a in r["chosen"])
      + " rr-agree " + "/".join(f"{(r['agreement'].get(a) or {}).get('rollout_vs_rollout') or float('nan'):.2f}"
                                 for a in ("quality", "factuality"))
      for r in row["runs"])
  agree = "/".join(f"{v:.2f}" if v is not None else "-" for v in row["pairs_agreement"].values())
  return f"{row['setting']:38s} score {row['score']:+.4f} | pairs q/s/f {agree} | {per_run}"


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--runs", required=True, help="comma-separated policy run directories (their rollouts)")
  ap.add_argument("--teacher", default="", help="teacher directory ('' = the first run's teacher)")
  ap.add_argument("--prefixes", type=int, default=128, help="validation prefixes per run")
  ap.add_argument("--pairs", type=int, default=300, help="validation pairs")
  ap.add_argument("--seed", type=int, default=7, help="rollout sampling key")
  ap.add_argument("--empty_loses", type=int, default=1, help="the tournament's sip.empty_loses (1 = on)")
  ap.add_argument("--out", default="", help="JSON output ('' = select_inference.json beside the first run)")
  a = ap.parse_args(argv)
  runs = [r for r in a.runs.split(",") if r]
  res = select(runs, teacher_dir=a.teacher, num_prefixes=a.prefixes, num_pairs=a.pairs, seed=a.seed,
               empty_loses=bool(a.empty_loses))
  out = a.out or os.path.join(os.path.dirname(os.path.normpath(runs[0])), "select_inference.json")
  with open(out, "w") as f:
    json.dump(res, f, indent=1)
  print("sorted by score (DPO pair's weighted oracle gap, mean over runs):")
  for row in res["rows"]:
    print(format_row(row))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
