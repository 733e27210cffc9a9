"""A small side-by-side of `sip.advantage` on one policy (issue 40): group / token_entropy / gcpo.

  PYTHONPATH=. python benchmarks/gcpo_runs.py --pretrained /tmp/gcpo_signals/pretrain [--steps 20]

Continues the policy `benchmarks/gcpo_signals.py` pretrained (same shape and world) with SIP `pg`
(oracle judge, no rewrite, original + K rollouts) under each advantage option, the same windows
and seed, and prints the oracle scores of the final models on world validation prompts
(`eval_world_prompts`) and the mean group weight diagnostics. One seed: no spread; the report's
rows (docs/policy_extensions.md) are the real comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--pretrained", default="/tmp/gcpo_signals/pretrain")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--rollouts", type=int, default=6)
  ap.add_argument("--prompts", type=int, default=64)
  ap.add_argument("--workdir", default="/tmp/gcpo_runs")
  ap.add_argument("--options", default="group,token_entropy,gcpo")
  args = ap.parse_args()
  from benchmarks.gcpo_signals import small_cfg
  from earlyrl_jax import sip_job
  out = {}
  for adv in args.options.split(","):
    t0 = time.time()
    cfg = small_cfg(0, mode="sip", num_steps=args.steps, eval_world_prompts=args.prompts, **{
        "init.params_from": args.pretrained, "sip.recipe": "pg", "sip.judge": "oracle",
        "sip.rewrite": "none", "sip.num_rollouts": args.rollouts, "sip.advantage": adv,
        "data.prefix_len": 40, "data.suffix_len": 48, "opt.learning_rate": 1e-3, "opt.warmup_steps": 2,
        "log_every_steps": 1})
    wd = os.path.join(args.workdir, adv)
    res = sip_job.run(cfg, wd)
    lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    final = {k: round(float(v), 4) for k, v in lines[-1].items() if k.startswith("world/")}
    w = [l.get("gcpo/weight_max") for l in lines if "gcpo/weight_max" in l]
    out[adv] = {**final, "loss": round(float(res["metrics"]["loss"]), 4),
                "tied_frac_mean": round(sum(l.get("sip/all_tied_frac", 0) for l in lines) / len(lines), 3),
                "weight_max_mean": round(sum(w) / len(w), 3) if w else None,
                "seconds": round(time.time() - t0, 1), "load": round(os.getloadavg()[0], 2)}
    print(f"gcpo_runs {adv}: {json.dumps(out[adv])}", flush=True)
  print("gcpo_runs:", json.dumps(out))


if __name__ == "__main__":
  main()
