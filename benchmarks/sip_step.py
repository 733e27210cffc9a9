"""Cost of one self-improving (SIP) step against one plain NLL step on the same windows.

  python benchmarks/sip_step.py                       # a throwaway embedded-teacher shape
  python benchmarks/sip_step.py --teacher=RUN/teacher_run/teacher --k=4 --scheme=adaptive
  python benchmarks/sip_step.py --compare-ref=main --repeat=2   # before (a git rev) and after, one run

A SIP step = rollouts (policy sampler) + rewrite (teacher sampler) + judging
(teacher forward passes over the tournament) + the update (one jitted step). The
NLL step is the same jitted step with only the LM term, on the same window rows.
Both are timed in this run; the last line is

  sip_step: ratio_vs_nll=<x> rollout=<f> rewrite=<f> judge=<f> update=<f>

with the four parts as fractions of the SIP step (update: the reference's pass, made with
the batch, plus the jitted step). Without --teacher, a teacher of the embedded teacher's
shape is trained for a handful of steps (its verdicts are poor, its cost is the real one).

`--compare-ref=REV` measures before and after in one invocation: this script runs on the
code of git revision REV (exported to a temporary directory) and on this tree, alternately,
`--repeat` times each, on the same teacher, one process per measurement (neither inherits the
other's compiled programs). The same measuring code serves both: it reads only what every
revision's SIP job has (`job.frozen`, the batch, the producer's time stats).

The timed steps follow `--warmup` whole steps (the first compiles every program; later ones
meet the few bucket shapes a new batch can still bring). Each line also gives the ratio of
CPU time (`cpu_ratio`: process CPU seconds of a SIP step over an NLL step's), which another
job's load on a shared machine distorts less than wall time, and the compilations that still
fell into the timed steps.
`--price` (on by default) prints the paper's shape priced in FLOPs and GPU-hours next to
the measured split (benchmarks/sip_cost_model.py).

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
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time

# The code measured: this tree, or (--compare-ref) another revision's, exported.
CODE = os.environ.get("SIP_STEP_CODE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, CODE)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.common import device_name, time_fn  # noqa: E402
from earlyrl_jax.configs import load_config_file  # noqa: E402
from earlyrl_jax.parallel import mesh as mesh_lib  # noqa: E402
from earlyrl_jax import teacher_setup  # noqa: E402
from earlyrl_jax.rewrite_job import sip_rewriter  # noqa: E402
from earlyrl_jax.train import losses, loop, sip  # noqa: E402
from earlyrl_jax.train import steps as steps_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("rollout", "rewrite", "judge", "update")
LINE = re.compile(r"^sip_step: ratio_vs_nll=([\d.]+) (.*)$")


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


def document_rows(batch, layout, length: int, pad_id: int):
  """The windows themselves (prefix + original suffix) as plain rows of `length` tokens, read
  back from a SIP batch (its trunk and lm branch): what an NLL step trains on."""
  docs = []
  for g in range(batch["tokens"].shape[0]):
    on, branch = batch["segment_ids"][g] > 0, batch["branch_ids"][g]
    trunk = batch["tokens"][g][on & (branch == 0)]
    lm = batch["tokens"][g][on & (branch == layout.lm_id)]
    docs.append(np.concatenate([trunk, lm]))   # lm starts with the prefix's last token
  return sip.candidate_rows([d[:1] for d in docs], [d[1:] for d in docs], length, pad_id)


# The teacher's sub-parts `--detail` times: (label, attribute path from the producer, method).
# Nested ones (the judge's surprise inside its penalties) are included in their parent's time.
DETAIL = (("rewrite/verdicts", "rewriter", "drop_probs"), ("rewrite/surprise", "rewriter.probe", "sentences"),
          ("rewrite/write_anew", "rewriter", "write_anew"), ("judge/safety", "judge", "pointwise"),
          ("judge/scored", "judge", "score_axes"), ("judge/penalties", "judge", "penalties"),
          ("judge/claims", "judge", "claim_probs"), ("judge/surprise", "judge.probe", "candidates"))


def time_parts(producer, compiles: list[float], parts=DETAIL) -> dict[str, list[tuple[float, ...]]]:
  """Wraps the named methods of the producer's teacher objects (those it has) with timers:
  {label: [(seconds, of which compiling, process CPU seconds) of each call]} (compiles: the
  run's compile times)."""
  spent: dict[str, list[tuple[float, float, float]]] = {}
  for label, path, method in parts:
    obj = producer
    for name in path.split("."):
      obj = getattr(obj, name, None)
    fn = getattr(obj, method, None) if obj is not None else None
    if fn is None:
      continue

    def timed(*a, _fn=fn, _label=label, **kw):
      t0, c0, n0 = time.perf_counter(), time.process_time(), len(compiles)
      try:
        return _fn(*a, **kw)
      finally:
        spent.setdefault(_label, []).append((time.perf_counter() - t0, sum(compiles[n0:]),
                                             time.process_time() - c0))
    setattr(obj, method, timed)
  return spent


class Digest:
  """What a run produced, hashed: every batch's fields (the rows, the judge's chosen / rejected
  as branches, masks; the reference's log-probs apart) and the rewrites' text, so --compare-ref
  can say whether two revisions made the same batches."""

  def __init__(self, producer):
    self.rows, self.ref, self.text = hashlib.sha1(), hashlib.sha1(), hashlib.sha1()
    rewriter = getattr(producer, "rewriter", None)
    if rewriter is not None:
      real = rewriter.rewrite

      def rewrite(*a, **kw):
        out = real(*a, **kw)
        self.text.update("\x00".join(out).encode())
        return out
      rewriter.rewrite = rewrite

  def add(self, batch) -> None:
    for k in sorted(batch):
      h = self.ref if k == "ref_logp" else self.rows
      h.update(k.encode())
      h.update(np.ascontiguousarray(batch[k]).tobytes())

  def line(self) -> str:
    return f"batches={self.rows.hexdigest()[:12]} rewrites={self.text.hexdigest()[:12]} ref_logp={self.ref.hexdigest()[:12]}"


def export_tree(rev: str, into: str) -> str:
  """This repository's tree at git revision `rev`, written to `into` (no checkout touched)."""
  archive = subprocess.run(["git", "-C", REPO, "archive", rev], check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
  return into


def compare(args, argv) -> None:
  """Before (the tree of --compare-ref) and after (this tree), alternately, in one invocation."""
  workdir = args.workdir or tempfile.mkdtemp(prefix="sip_step_compare_")
  teacher = args.teacher
  if not teacher:
    cfg = load_config_file(os.path.join(REPO, "configs", "tiny.py"))
    cfg.world.num_train_documents = 2000
    teacher = throwaway_teacher(cfg, os.path.join(workdir, "teacher_run"))
  before = export_tree(args.compare_ref, tempfile.mkdtemp(prefix="sip_step_ref_"))
  # The shape spelt out: a default may differ between the two trees.
  passed = [f"--windows={args.windows}", f"--k={args.k}", f"--recipe={args.recipe}",
            f"--scheme={args.scheme}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
  passed += [a for a in argv if a.startswith(("--teacher_placement", "--teacher_devices", "--detail"))]
  lines = {"before": [], "after": []}
  produced = {"before": set(), "after": set()}
  for r in range(args.repeat):
    for label, root in (("before", before), ("after", REPO)):
      cmd = [sys.executable, os.path.abspath(__file__), f"--teacher={teacher}",
             f"--workdir={os.path.join(workdir, f'{label}_{r}')}", "--no-price", *passed]
      env = {**os.environ, "PYTHONPATH": root, "SIP_STEP_CODE": root}
      out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
      found = [l for l in out.stdout.splitlines() if LINE.match(l)]
      if out.returncode or not found:
        raise RuntimeError(f"{label} ({root}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
      for l in out.stdout.splitlines():
        if l.startswith(("SIP step", "sip_step", "produced", "detail")):
          print(f"[{label} {r + 1}/{args.repeat}] {l}", flush=True)
      produced[label].update(l.split(": ", 1)[1] for l in out.stdout.splitlines() if l.startswith("produced: "))
      m = LINE.match(found[-1])
      lines[label].append((float(m.group(1)), float(re.search(r"cpu_ratio=([\d.]+)", found[-1]).group(1))))
  print(f"device: {device_name()}; before = {args.compare_ref} "
        f"({subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', args.compare_ref], capture_output=True, text=True).stdout.strip()}), "
        f"after = this tree; {args.repeat} alternating run(s) each")
  for label, v in lines.items():
    wall, cpu = [x[0] for x in v], [x[1] for x in v]
    print(f"sip_step_{label}: ratio_vs_nll median={np.median(wall):.1f} min={min(wall):.1f} "
          f"max={max(wall):.1f} runs={' '.join(f'{x:.1f}' for x in wall)}; cpu_ratio "
          f"median={np.median(cpu):.1f} runs={' '.join(f'{x:.1f}' for x in cpu)}")
  same = len(produced["before"]) == 1 and produced["before"] == produced["after"]
  print(f"sip_step_same_batches: {'yes' if same else 'NO'} (before {sorted(produced['before'])}, "
        f"after {sorted(produced['after'])})")
  b, a = lines["before"], lines["after"]
  print(f"sip_step_compare: before/after wall {np.median([x[0] for x in b]) / np.median([x[0] for x in a]):.2f}x, "
        f"cpu {np.median([x[1] for x in b]) / np.median([x[1] for x in a]):.2f}x")


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--teacher", default="", help="a trained teacher directory (default: throwaway)")
  p.add_argument("--windows", type=int, default=8, help="windows (prefixes) per step")
  p.add_argument("--k", type=int, default=4, help="rollouts per prefix")
  p.add_argument("--recipe", default="dpo")
  p.add_argument("--scheme", default="all_pairs", help="all_pairs | pivot | adaptive")
  p.add_argument("--steps", type=int, default=3, help="timed SIP steps (after the warm-up)")
  p.add_argument("--warmup", type=int, default=2, help="whole SIP steps before the timed ones")
  p.add_argument("--workdir", default="")
  p.add_argument("--teacher_placement", default="shared", choices=("shared", "submesh"),
                 help="teacher on the policy's devices, or on its own sub-mesh")
  p.add_argument("--teacher_devices", type=int, default=0,
                 help="submesh: the teacher's devices (default: half of them)")
  p.add_argument("--max_staleness", type=int, default=0, choices=(0, 1),
                 help="sip.max_staleness: 1 produces the next batch while the update runs")
  p.add_argument("--detail", action="store_true",
                 help="also time the teacher's sub-parts (the editor's verdicts, surprise; the judge's rows)")
  p.add_argument("--compare-ref", dest="compare_ref", default="",
                 help="a git revision: measure it (before) and this tree (after) in one run")
  p.add_argument("--repeat", type=int, default=2, help="--compare-ref: runs of each, alternating")
  p.add_argument("--price", dest="price", action="store_true", default=True,
                 help="print the paper's shape priced (benchmarks/sip_cost_model.py)")
  p.add_argument("--no-price", dest="price", action="store_false")
  args = p.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  if args.compare_ref:
    compare(args, argv)
    if args.price:
      from benchmarks import sip_cost_model
      sip_cost_model.main([])
    return

  workdir = args.workdir or tempfile.mkdtemp(prefix="sip_step_")
  cfg = load_config_file(os.path.join(CODE, "configs", "tiny.py"))
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
  if "max_staleness" in cfg.sip:
    cfg.sip.max_staleness = args.max_staleness
  elif args.max_staleness:
    raise SystemExit("--max_staleness=1 needs a revision that has sip.max_staleness")

  run = loop.setup(cfg, workdir)
  teacher = teacher_setup.load_teacher_for(cfg, workdir, run.mesh)
  job = sip.sip_job(run, teacher, sip_rewriter(run, teacher))
  # Frozen trees the step itself takes (none once the reference's log-probs come with the batch).
  frozen = {k: p for k, (_, p, _) in job.frozen.items()}
  step = steps_lib.make_train_step(
      run.graphdef, run.tx, run.schedule, run.mesh, run.shardings, job.batch_spec, loss_fn=job.loss_fn,
      coefs=job.coefs, frozen_graphdefs={k: g for k, (g, _, _) in job.frozen.items()},
      frozen_shardings={k: s for k, (_, _, s) in job.frozen.items()})
  state = loop.initial_state(run, seed=0)
  times = {k: [] for k in PARTS}
  waits, refs = [], []
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(secs) if event.endswith("backend_compile_duration") else None)
  with jax.set_mesh(run.mesh):
    # Warm-up: compile every program (step 0), then whole steps until the timed ones start
    # from an idle device with the programs a batch usually needs.
    digest = Digest(getattr(job.next_batch, "produce", job.next_batch))
    for i in range(args.warmup):
      batch, _ = job.next_batch(state, i)
      digest.add(batch)
      state, metrics = step(state, mesh_lib.shard_batch(batch, run.mesh), frozen)
      jax.block_until_ready(metrics)
    n_compiles = len(compiles)
    spent = time_parts(getattr(job.next_batch, "produce", job.next_batch), compiles) if args.detail else {}
    t_start, c_start = time.perf_counter(), time.process_time()
    for i in range(args.warmup, args.warmup + args.steps):
      # As the training loop: produce (waiting for the previous update's params only at the
      # rollouts), then dispatch the update without waiting for it.
      batch, stats = job.next_batch(state, i)
      digest.add(batch)
      t_dispatch = time.perf_counter()
      state, metrics = step(state, mesh_lib.shard_batch(batch, run.mesh), frozen)
      for k in PARTS[:3]:
        times[k].append(stats[f"time/{k}"])
      refs.append(stats.get("time/reference", 0.0))
      if i > args.warmup:  # time/update of batch i is the update of step i-1 (timed ones only)
        times["update"].append(stats["time/update"])
        waits.append(stats.get("time/update_wait", stats["time/update"]))
    jax.block_until_ready(metrics)
    t_end, c_end = time.perf_counter(), time.process_time()
    timed_compiles = compiles[n_compiles:]
    times["update"].append(t_end - t_dispatch)  # the last update: nothing left to overlap it
    waits.append(t_end - t_dispatch)
    totals = [(t_end - t_start) / args.steps]
    cpu_sip = (c_end - c_start) / args.steps
    times["update"] = [u + float(np.mean(refs)) for u in times["update"]]  # + the reference's pass
    # The plain NLL step on the same windows (prefix + original suffix rows, the LM term alone).
    row_len = cfg.data.prefix_len + int(cfg.sip.candidate_len or cfg.data.suffix_len)
    if "lm_tokens" in batch:   # a revision with a row per sequence: its document rows
      lm = {k[3:]: v for k, v in batch.items() if k.startswith("lm_")}
    else:
      producer = getattr(job.next_batch, "produce", job.next_batch)
      lm = document_rows(batch, producer.layout, row_len, run.tokenizer.pad_id)
    nll_step = steps_lib.make_train_step(run.graphdef, run.tx, run.schedule, run.mesh, run.shardings,
                                         steps_lib.spec_of(lm), loss_fn=losses.lm_terms,
                                         coefs={"nll": 1.0, "z_loss": 0.0})
    lm_dev = mesh_lib.shard_batch(lm, run.mesh)
    holder = [state]

    def nll():
      holder[0], m = nll_step(holder[0], lm_dev, {})
      return m["loss"]
    t_nll = time_fn(nll, warmup=1, iters=5)
    c0 = time.process_time()
    for _ in range(5):
      jax.block_until_ready(nll())
    cpu_nll = (time.process_time() - c0) / 5

  sip_s = float(np.mean(totals))
  frac = {k: float(np.mean(v)) / sip_s for k, v in times.items()}
  print(f"device: {device_name()}; code: {CODE}; {args.warmup} warm-up + {args.steps} timed steps, "
        f"{len(timed_compiles)} compilations ({sum(timed_compiles):.1f} s) in the timed ones")
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
        f"update {np.mean(times['update']) * 1e3:.0f} ms (reference pass {np.mean(refs) * 1e3:.0f} ms), "
        f"of which {np.mean(waits) * 1e3:.0f} ms not overlapped (update_wait); max_staleness "
        f"{args.max_staleness}")
  print(f"produced: {digest.line()}")
  if args.detail:
    print("detail (ms per step [of which compiling] (CPU ms); a nested part is inside its parent): " + ", ".join(
        f"{k} {sum(x[0] for x in v) / args.steps * 1e3:.0f} [{sum(x[1] for x in v) / args.steps * 1e3:.0f}] "
        f"({sum(x[2] for x in v) / args.steps * 1e3:.0f})" for k, v in spent.items()))
  print(f"sip_step: ratio_vs_nll={sip_s / t_nll:.1f} " + " ".join(f"{k}={frac[k]:.3f}" for k in PARTS)
        + f" cpu_ratio={cpu_sip / cpu_nll:.1f}")
  if args.price:
    from benchmarks import sip_cost_model
    sip_cost_model.main([], measured=frac)


if __name__ == "__main__":
  main()
