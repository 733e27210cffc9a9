"""DPF on the world: how often the base model, `nll` and `dpf` mention a banned entity, with and
without the principle in the prompt (docs/principles.md; benchmarks/RESULTS.md).

    python benchmarks/principle.py --workdir=/tmp/dpf_bench                      # validation
    python benchmarks/principle.py --workdir=/tmp/dpf_bench --split=test         # the final table

The report's machinery (tools/report.py) trains one base model per seed (plain NLL), continues
it by `nll` and by `dpf` on the same windows, and evaluates each final model; this script adds
the base model's row. The banned entity X is chosen on the validation split (`--banned=auto`: the
country the validation documents name most often; Y: the next one), never on test. Runs are
reused when the command is repeated (the report's run directories), so `--split=test` after a
validation run only evaluates.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def most_mentioned(world_dir: str, kind: str = "country", split: str = "validation") -> list[str]:
  """The world's entities of `kind`, most mentioned in the split's documents first (a choice on
  validation: the test split is never read to make it)."""
  from earlyrl_jax import world as W
  from earlyrl_jax.world.splits import tuning_split
  tuning_split(split, "benchmarks/principle.py --banned=auto")
  oracles = W.Oracles.from_dir(world_dir)
  names = oracles.kb.entities[kind]
  counts = collections.Counter()
  with open(W.split_file(world_dir, split, "docs"), encoding="utf-8") as f:
    for line in f:
      text = json.loads(line)["text"]
      for n in names:
        counts[n] += oracles.mentions(text, [n])
  return [n for n, _ in counts.most_common()]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--split", default="validation", choices=("validation", "test"))
  ap.add_argument("--banned", default="auto", help="entity name(s), comma-separated, or 'auto'")
  ap.add_argument("--instead", default="auto")
  ap.add_argument("--seeds", type=int, default=1)
  ap.add_argument("--base_steps", type=int, default=400)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--prompts", type=int, default=64)
  ap.add_argument("--samples", type=int, default=8)
  ap.add_argument("--beta", type=float, default=0.1)
  ap.add_argument("--in_policy_prompt", action="store_true",
                  help="dpf trains with the principle line before its prompts")
  args = ap.parse_args(argv)

  from configs import tiny
  from earlyrl_jax import world as W
  from earlyrl_jax.tools import report
  from earlyrl_jax.train import loop

  cfg = tiny.get_config()
  world_dir = os.path.join(args.workdir, "world")
  if not os.path.exists(os.path.join(world_dir, W.MANIFEST)):
    W.write_world(cfg.world, world_dir)
  ranked = most_mentioned(world_dir)
  banned = ranked[0] if args.banned == "auto" else args.banned
  instead = next(n for n in ranked if n not in banned.split(",")) if args.instead == "auto" else args.instead
  cfg.report.methods = "nll,dpf"
  cfg.report.num_seeds = args.seeds
  cfg.report.base_steps = args.base_steps
  cfg.report.steps = args.steps
  cfg.report.split = args.split
  cfg.report.eval_prompts = args.prompts
  cfg.report.eval_samples = args.samples
  cfg.report.bait_samples = 1
  cfg.report.eval_every_steps = 0
  cfg.sip.beta = args.beta
  cfg.principle.banned, cfg.principle.instead = banned, instead
  cfg.principle.in_policy_prompt = bool(args.in_policy_prompt)
  t0 = time.time()
  out = report.run(cfg, args.workdir)
  if out.get("preempted"):
    return 1
  run = loop.setup(cfg, args.workdir)
  run.ckpt.close()
  base_rows = [report.principle_row(cfg, args.workdir, os.path.join(args.workdir, "runs", f"base-s{s}"),
                                    run.tokenizer, run.mesh, args.split, s)
               for s in range(args.seeds)]
  keys = ("mention_rate", "mention_rate_prompted", "instead_rate", "instead_rate_prompted")
  import numpy as np
  rows = {"base": {k: (float(np.mean([r[k] for r in base_rows])), float(np.std([r[k] for r in base_rows])))
                   for k in keys}}
  for m in ("nll", "dpf"):
    per = out["per_seed"][m]
    rows[m] = {k: (float(np.mean([r[k] for r in per])), float(np.std([r[k] for r in per]))) for k in keys}
  print(f"\nprinciple: Do not mention {banned}; discuss {instead} instead. split={args.split}, "
        f"{base_rows[0]['principle_prompts']} prompts x {args.samples} samples, {args.seeds} seed(s), "
        f"{args.base_steps} base steps, {args.steps} steps per method, beta={args.beta}, "
        f"in_policy_prompt={args.in_policy_prompt}; {(time.time() - t0) / 60:.1f} min\n")
  print("| model | mentions X | mentions X, principle in prompt | mentions Y | mentions Y, principle in prompt |")
  print("|---|---|---|---|---|")
  for m, r in rows.items():
    print(f"| {m} | " + " | ".join(f"{r[k][0]:.3f}" + (f" ± {r[k][1]:.3f}" if args.seeds > 1 else "")
                                    for k in keys) + " |")
  pairs = [json.loads(l).get("sip/principle_pairs_frac") for s in range(args.seeds)
           for l in open(os.path.join(args.workdir, "runs", f"dpf-s{s}", "metrics.jsonl"))]
  pairs = [p for p in pairs if p is not None]
  print(f"\ndpf: windows with a pair (original mentions X) {np.mean(pairs):.3f} of the logged steps' windows")
  return 0


if __name__ == "__main__":
  sys.exit(main())
