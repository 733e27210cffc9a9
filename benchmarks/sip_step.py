"""Cost of one self-improving (SIP) step against one plain NLL step on the same windows.

  python benchmarks/sip_step.py                       # a throwaway embedded-teacher shape
  python benchmarks/sip_step.py --teacher=RUN/teacher_run/teacher --k=4 --scheme=adaptive

A SIP step = rollouts (policy sampler) + rewrite (teacher sampler) + judging
(teacher forward passes over the tournament) + the update (one jitted step). The
NLL step is the same jitted step with only the LM term, on the same window rows.
Both are timed in this run; the last line is

  sip_step: ratio_vs_nll=<x> rollout=<f> rewrite=<f> judge=<f> update=<f>

with the four parts as fractions of the SIP step. Without --teacher, a teacher of the
embedded teacher's shape is trained for a handful of steps (its verdicts are poor, its
cost is the real one).

Steps run as in training: the update is dispatched and the next batch is produced while
it runs (the rewrite first: it needs no policy params). `--teacher_placement=submesh` puts
the teacher on its own `--teacher_devices` devices, so the rewrite can overlap the update;
the line before the last gives the part of the update nothing overlapped (update_wait).
The parts can then add up to more than the step. On CPU, simulate devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sip_step.py \
      --teacher_placement=submesh --teacher_devices=4
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.common import device_name, time_fn  # noqa: E402
from earlyrl_jax.configs import load_config_file  # noqa: E402
from earlyrl_jax.parallel import mesh as mesh_lib  # noqa: E402
from earlyrl_jax import teacher_setup  # noqa: E402
from earlyrl_jax.rewrite_job import sip_rewriter  # noqa: E402
from earlyrl_jax.train import loop, sip  # noqa: E402
from earlyrl_jax.train import steps as steps_lib  # noqa: E402
from earlyrl_jax.train.objectives import Objective  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("rollout", "rewrite", "judge", "update")


def throwaway_teacher(cfg, workdir: str) -> str:
  """Trains a teacher of the embedded shape for a few steps; returns its directory."""
  from earlyrl_jax.embedded import job as embedded_job
  tcfg = teacher_setup.teacher_config(cfg)
  t = tcfg.teacher
  t.pretrain.steps, t.sft.steps, t.grpo.steps, t.policy.steps = 2, 2, 0, 0
  t.pretrain.num_documents, t.sft.num_documents, t.tokenizer_documents = 400, 300, 400
  t.eval.num_documents, t.eval.num_rewrites, t.eval.num_rollout_prefixes = 30, 10, 0
  embedded_job.run(tcfg, workdir)
  return os.path.join(workdir, "teacher")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--teacher", default="", help="a trained teacher directory (default: throwaway)")
  p.add_argument("--windows", type=int, default=16, help="windows (prefixes) per step")
  p.add_argument("--k", type=int, default=4, help="rollouts per prefix")
  p.add_argument("--recipe", default="dpo")
  p.add_argument("--scheme", default="all_pairs", help="all_pairs | pivot | adaptive")
  p.add_argument("--steps", type=int, default=3, help="timed SIP steps (after one warm-up)")
  p.add_argument("--workdir", default="")
  p.add_argument("--teacher_placement", default="shared", choices=("shared", "submesh"),
                 help="teacher on the policy's devices, or on its own sub-mesh")
  p.add_argument("--teacher_devices", type=int, default=0,
                 help="submesh: the teacher's devices (default: half of them)")
  args = p.parse_args(argv)
  flags.FLAGS.mark_as_parsed()

  workdir = args.workdir or tempfile.mkdtemp(prefix="sip_step_")
  cfg = load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  cfg.mode = "sip"
  cfg.num_steps = args.steps + 1
  cfg.world.num_train_documents = 2000
  cfg.data.batch_size = args.windows
  cfg.sip.num_rollouts = args.k
  cfg.sip.recipe = args.recipe
  cfg.sip.judge_scheme = args.scheme
  cfg.teacher.path = args.teacher or throwaway_teacher(cfg, os.path.join(workdir, "teacher_run"))
  cfg.teacher.placement = args.teacher_placement
  cfg.teacher.devices = args.teacher_devices or jax.device_count() // 2

  run = loop.setup(cfg, workdir)
  teacher = teacher_setup.load_teacher_for(cfg, workdir, run.mesh)
  job = sip.sip_job(run, teacher, sip_rewriter(run, teacher))
  frozen = {k: p for k, (_, p, _) in job.frozen.items()}
  step = steps_lib.make_train_step(
      run.graphdef, run.tx, run.schedule, run.mesh, run.shardings, job.batch_spec, loss_fn=job.loss_fn,
      coefs=job.coefs, frozen_graphdefs={k: g for k, (g, _, _) in job.frozen.items()},
      frozen_shardings={k: s for k, (_, _, s) in job.frozen.items()})
  state = loop.initial_state(run, seed=0)
  times = {k: [] for k in PARTS}
  waits = []
  with jax.set_mesh(run.mesh):
    # Warm-up: compile every program (step 0), and run one whole step so that the timed
    # ones start from an idle device.
    batch, _ = job.next_batch(state, 0)
    state, metrics = step(state, mesh_lib.shard_batch(batch, run.mesh), frozen)
    jax.block_until_ready(metrics)
    t_start = time.perf_counter()
    for i in range(1, args.steps + 1):
      # As the training loop: produce (waiting for the previous update's params only at the
      # rollouts), then dispatch the update without waiting for it.
      batch, stats = job.next_batch(state, i)
      t_dispatch = time.perf_counter()
      state, metrics = step(state, mesh_lib.shard_batch(batch, run.mesh), frozen)
      for k in PARTS[:3]:
        times[k].append(stats[f"time/{k}"])
      if i > 1:  # time/update of batch i is the update of step i-1 (step 0's was not timed)
        times["update"].append(stats["time/update"])
        waits.append(stats.get("time/update_wait", stats["time/update"]))
    jax.block_until_ready(metrics)
    t_end = time.perf_counter()
    times["update"].append(t_end - t_dispatch)  # the last update: nothing left to overlap it
    waits.append(t_end - t_dispatch)
    totals = [(t_end - t_start) / args.steps]
    # The plain NLL step on the same window rows (the LM term alone).
    lm = {k: v for k, v in batch.items() if k.startswith("lm_")}
    nll_obj = Objective("rf_nll", lm_coef=1.0, coef=0.0)
    nll_step = steps_lib.make_train_step(run.graphdef, run.tx, run.schedule, run.mesh, run.shardings,
                                         steps_lib.spec_of(lm), loss_fn=nll_obj, coefs=nll_obj.coefs)
    lm_dev = mesh_lib.shard_batch(lm, run.mesh)
    holder = [state]

    def nll():
      holder[0], m = nll_step(holder[0], lm_dev, {})
      return m["loss"]
    t_nll = time_fn(nll, warmup=1, iters=5)

  sip_s = float(np.mean(totals))
  frac = {k: float(np.mean(v)) / sip_s for k, v in times.items()}
  print(f"device: {device_name()}")
  print(f"shape: {args.windows} windows x (1 original + 1 rewrite + {args.k} rollouts), "
        f"prefix {cfg.data.prefix_len} / suffix {cfg.data.suffix_len} tokens, recipe {args.recipe}, "
        f"judge {args.scheme}; policy {run.model_cfg.num_params() / 1e6:.2f}M, teacher "
        f"{teacher.model_cfg.num_params() / 1e6:.2f}M params")
  print(f"SIP step {sip_s * 1e3:.0f} ms (" + ", ".join(
      f"{k} {np.mean(v) * 1e3:.0f} ms" for k, v in times.items()) + f"); NLL step {t_nll * 1e3:.1f} ms; "
      f"judge calls/step {stats['sip/judge_calls']:.0f}")
  n_teacher = teacher.mesh.devices.size
  print(f"placement: {args.teacher_placement} (policy {run.mesh.devices.size} devices "
        f"{dict(run.mesh.shape)}, teacher {n_teacher} devices {dict(teacher.mesh.shape)}); "
        f"update {np.mean(times['update']) * 1e3:.0f} ms, of which {np.mean(waits) * 1e3:.0f} ms "
        f"not overlapped (update_wait)")
  print(f"sip_step: ratio_vs_nll={sip_s / t_nll:.1f} " + " ".join(f"{k}={frac[k]:.3f}" for k in PARTS))


if __name__ == "__main__":
  main()
