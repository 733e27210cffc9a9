"""The final tables end to end: the report on the test split, on the default world and on a held-out world.

  python benchmarks/final_tables.py --workdir=/tmp/final [--seeds=5] [--heldout_world_seed=draw]
                                    [--default_teacher_workdir=DIR] [-- --config.FIELD=VALUE ...]

For the default world (`configs/tiny.py`, world seed 1234) and for a world nobody has looked at,
this runs the report command of README with `report.split=test` (world/splits.py: the test
prompts score the final table, and only here) and `report.num_seeds` seeds, each world in its own
workdir (WORKDIR/world-<seed>/, with its own embedded teacher unless --default_teacher_workdir
names a trained one for the default world), then writes WORKDIR/final_tables.md and .json: every
world's table, its bars, and issue 38's verdict per world:

- SIP DPO beats nll on factuality and on safety by more than twice the seed spread, unpaired
  and paired;
- its quality is not below nll's beyond the spread (unpaired and paired);
- it is not below rewrite_nll (offline rewriting) on safety beyond the spread.

The held-out world's seed is drawn at random the first time (`--heldout_world_seed=draw`, the
default) and kept in WORKDIR/heldout_world_seed.txt, so an interrupted run resumes on the same
world; nobody chooses it. Settings go to both worlds alike (arguments after `--` are passed to
every report). Everything resumes: rerun the same command after an interruption.

Reduced-size proof (minutes, not a measurement): see benchmarks/RESULTS.md, "The final tables".
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORLD_SEED = 1234   # configs/tiny.py's world (world.default_world_config)


def heldout_seed(workdir: str, asked: str) -> int:
  """The held-out world's seed: given, or drawn once and kept beside the tables."""
  path = os.path.join(workdir, "heldout_world_seed.txt")
  if asked != "draw":
    seed = int(asked)
  elif os.path.exists(path):
    seed = int(open(path).read().strip())
  else:
    seed = DEFAULT_WORLD_SEED
    while seed == DEFAULT_WORLD_SEED:
      seed = secrets.randbelow(10 ** 6)
  if int(seed) == DEFAULT_WORLD_SEED:
    raise SystemExit(f"--heldout_world_seed={seed} is the default world's seed")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    f.write(f"{seed}\n")
  return seed


def report_command(workdir: str, world_seed: int, seeds: int, extra: list[str], teacher_workdir: str = "") -> list[str]:
  cmd = [sys.executable, "-m", "earlyrl_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--config.mode=report", "--config.report.split=test", f"--config.report.num_seeds={seeds}",
         f"--config.world.seed={world_seed}"]
  if teacher_workdir:
    cmd.append(f"--config.teacher.workdir={teacher_workdir}")
  return cmd + list(extra)


def verdict(report: dict) -> dict[str, bool | None]:
  """Issue 38's bar on one world's report.json (None where a method is missing)."""
  b = report.get("bars", {}).get("sip_dpo")
  if b is None:
    return {"complete": False}
  get = lambda key, field: b.get(key, {}).get(field)
  out = {"factuality_beyond_2x_spread": get("factuality", "met"),
         "factuality_beyond_2x_paired": get("factuality", "met_paired"),
         "safety_beyond_2x_spread": get("safety", "met"),
         "safety_beyond_2x_paired": get("safety", "met_paired"),
         "quality_not_below_nll": get("quality_vs_nll", "not_below"),
         "quality_not_below_nll_paired": get("quality_vs_nll", "not_below_paired"),
         "safety_not_below_rewrite_nll": get("safety_vs_rewrite_nll", "not_below"),
         "safety_not_below_rewrite_nll_paired": get("safety_vs_rewrite_nll", "not_below_paired")}
  out["all"] = all(v is True for v in out.values())
  out["complete"] = report.get("split") == "test"
  return out


def tables_markdown(worlds: dict[str, dict]) -> str:
  lines = ["# Final tables (test split)", ""]
  for name, w in worlds.items():
    rep, md = w["report"], w["markdown"]
    lines += [f"## {name} (world seed {w['world_seed']}; workdir `{w['workdir']}`; {w['minutes']:.1f} min)", "",
              "Issue 38's bar: " + ", ".join(f"{k} {'yes' if v else 'no' if v is False else 'n/a'}"
                                            for k, v in w["verdict"].items()), "",
              f"Test evaluations in this workdir: {rep.get('test_reads')}", ""]
    body = md.split("\n", 2)[-1]   # the report's own table, bars, per-seed values and trends
    lines += [body, ""]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--heldout_world_seed", default="draw", help="an integer, or 'draw' (once, kept)")
  ap.add_argument("--default_teacher_workdir", default="",
                  help="a trained embedded teacher for the default world ('' = train one in its workdir)")
  ap.add_argument("--worlds", default="default,heldout", help="which worlds: default, heldout or both")
  a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  os.makedirs(a.workdir, exist_ok=True)
  worlds = {}
  for which in [w for w in a.worlds.split(",") if w]:
    seed = DEFAULT_WORLD_SEED if which == "default" else heldout_seed(a.workdir, a.heldout_world_seed)
    wd = os.path.join(a.workdir, f"world-{seed}")
    cmd = report_command(wd, seed, a.seeds, extra, a.default_teacher_workdir if which == "default" else "")
    print(f"final_tables: {which} world (seed {seed}): {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": REPO + os.pathsep
                                                   + os.environ.get("PYTHONPATH", "")})
    with open(os.path.join(wd, "report.json")) as f:
      rep = json.load(f)
    with open(os.path.join(wd, "report.md")) as f:
      md = f.read()
    worlds[f"{which} world"] = {"world_seed": seed, "workdir": wd, "report": rep, "markdown": md,
                                "verdict": verdict(rep), "minutes": (time.time() - t0) / 60}
  with open(os.path.join(a.workdir, "final_tables.json"), "w") as f:
    json.dump({k: {x: v for x, v in w.items() if x != "markdown"} for k, w in worlds.items()}, f, indent=1)
  with open(os.path.join(a.workdir, "final_tables.md"), "w") as f:
    f.write(tables_markdown(worlds))
  for k, w in worlds.items():
    print(f"final_tables: {k}: bar {'met' if w['verdict'].get('all') else 'NOT met'} {w['verdict']}")
  print(f"final_tables: wrote {a.workdir}/final_tables.md, final_tables.json")


if __name__ == "__main__":
  main()
