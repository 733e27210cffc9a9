"""One training loop for every job: compile ahead, step, metrics, checkpoints, resume.

A job (pretraining, self-improving pretraining) supplies a `Job`: its batch
producer, its loss function and coefficients, its frozen trees (a reference
policy) and its evaluation hooks; `train_loop` does the rest, the same way for all:

- compiles the step ahead of time and prints compile time and memory;
- never blocks the device on the hot path: step N is dispatched before step
  N-1's scalars are fetched; those scalars are checked every step, and a NaN or
  inf loss, gradient norm or *updated* parameter stops the run naming the step;
- never writes a checkpoint from a state that has not been checked, so the
  newest checkpoint is always good; the data iterator position is saved with it;
- SIGTERM (preemption; SIGUSR1 alike) saves a checkpoint, prints "preempted ...: saved
  step N" and returns with `preempted=True`, also while the job is waiting for data; all
  hosts stop at the same step. `earlyrl_jax.main` then exits with code 75
  (errors.STOPPED), so a scheduler requeues the job instead of taking it for finished;
- a finished run returns at once when started again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from earlyrl_jax import configs
from earlyrl_jax.data import pipeline
from earlyrl_jax.data import tokenizer as tok_lib
from earlyrl_jax.errors import STOP_SIGNALS
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import losses
from earlyrl_jax.train import metrics as metrics_lib
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train import steps as steps_lib
from earlyrl_jax.train.checkpoint import Checkpointer


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; the message names the step and the last good checkpoint."""


class Preempted(Exception):
  """A stop signal arrived while the job was waiting for data (raised out of the wait)."""


def is_main() -> bool:
  return jax.process_index() == 0


def log(msg: str) -> None:
  if is_main():
    print(msg, flush=True)


def sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
  """What every job shares: config, mesh, corpus, tokenizer, model and optimizer shapes."""
  cfg: Any
  workdir: str
  mesh: Any
  train_files: str
  eval_files: str
  tokenizer: Any
  model_cfg: Any
  tx: Any
  schedule: Any
  graphdef: Any
  abs_state: state_lib.TrainState
  shardings: state_lib.TrainState
  ckpt: Checkpointer


def checkpoint_dir(cfg, workdir: str) -> str:
  """`checkpoint.dir` (local or remote, e.g. gs://bucket/run) or WORKDIR/checkpoints."""
  return cfg.checkpoint.get("dir") or os.path.join(workdir, "checkpoints")


def world_dir_of(cfg, workdir: str) -> str:
  """Where the synthetic world lives: `world_dir`, or WORKDIR/world (shared by sub-runs)."""
  return cfg.get("world_dir") or os.path.join(workdir, "world")


def check_world_matches(world_cfg, manifest_path: str) -> None:
  """An existing world is reused only when it was generated from this `world` section: a run
  on another world than its config says would be silently wrong (fields a world written
  before they existed lacks count as their defaults)."""
  from earlyrl_jax import world
  with open(manifest_path, encoding="utf-8") as f:
    written = json.load(f).get("config", {})
  defaults = world.default_world_config().to_dict()
  for k, v in sorted(world_cfg.to_dict().items()):
    old = written.get(k, defaults.get(k))
    if old != v:
      raise configs.ConfigError(
          f"world.{k}={v!r}, but the world in {os.path.dirname(manifest_path)} was generated with "
          f"{old!r}: use another --workdir (or world_dir), delete that world, or set world.{k}={old!r}")


def resolve_corpus(cfg, workdir: str) -> tuple[str, str]:
  """(train globs, eval globs) for `data.corpus`; generates the synthetic world if needed."""
  d = cfg.data
  if d.corpus == "files":
    return d.train_files, d.eval_files
  if d.corpus == "python_docs":   # real English prose shipped with CPython (data/python_docs.py)
    from earlyrl_jax.data import python_docs
    corpus_dir = os.path.join(workdir, "python_docs")
    if is_main():
      python_docs.ensure_corpus(corpus_dir)
    sync("python_docs")
    # Training reads the train topics only; held-out NLL (if asked) reads the held-out topics.
    return (d.train_files or os.path.join(corpus_dir, python_docs.TRAIN_FILE),
            d.eval_files or os.path.join(corpus_dir, python_docs.HELDOUT_FILE))
  from earlyrl_jax import world
  world_dir = world_dir_of(cfg, workdir)
  manifest_path = os.path.join(world_dir, world.MANIFEST)
  if is_main() and not os.path.exists(manifest_path):
    t0 = time.time()
    manifest = world.write_world(cfg.world, world_dir)
    log(f"wrote the synthetic world to {world_dir}: {manifest['num_train_documents']} train "
        f"documents in {time.time() - t0:.1f}s")
  sync("world")
  check_world_matches(cfg.world, manifest_path)
  # Held-out loss reads the validation documents: the test split scores the report's final table only.
  return (d.train_files or os.path.join(world_dir, world.TRAIN_GLOB),
          d.eval_files or world.split_file(world_dir, world.VALIDATION, "docs"))


def setup(cfg, workdir: str) -> Run:
  """Validates the config, then builds what every job needs (no compilation yet)."""
  configs.validate(cfg)
  os.makedirs(workdir, exist_ok=True)
  if is_main():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))
  mesh = mesh_lib.policy_mesh(cfg)  # teacher.placement='submesh': the devices the teacher leaves
  train_files, eval_files = resolve_corpus(cfg, workdir)
  configs.check_data(cfg, train_files, eval_files)  # first records parse, before anything slow
  tokenizer = tok_lib.resolve_tokenizer(cfg.data, workdir, train_files, cfg.model.vocab_size)
  model_cfg = configs.model_config(cfg)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise configs.ConfigError(
        f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
        f"({tokenizer.vocab_size})")
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  schedule = state_lib.lr_schedule(cfg.opt, cfg.num_steps)
  graphdef, abs_state, shardings = state_lib.abstract_train_state(model_cfg, tx, mesh)
  ckpt = Checkpointer(checkpoint_dir(cfg, workdir), keep=cfg.checkpoint.keep,
                      every_steps=cfg.checkpoint.every_steps, async_save=cfg.checkpoint.async_save)
  return Run(cfg, workdir, mesh, train_files, eval_files, tokenizer, model_cfg, tx, schedule,
             graphdef, abs_state, shardings, ckpt)


@dataclasses.dataclass
class Job:
  """What a job gives the shared loop.

  next_batch(state, step) -> (host-local batch of numpy arrays, stats): may use
  `state.params` (self-improving jobs sample rollouts from the current policy).
  Only stats are logged as `data/<name>` (skip counters) or `<name>` (already
  slash-named job metrics, e.g. 'sip/win_share_rollout').
  """
  name: str
  batch_spec: dict[str, jax.ShapeDtypeStruct]      # global shapes and dtypes
  next_batch: Callable[[state_lib.TrainState, int], tuple[dict, dict]]
  data_iter: Any                                   # checkpointed with the state (grain iterator)
  loss_fn: steps_lib.LossFn = losses.lm_terms
  coefs: dict[str, float] = dataclasses.field(default_factory=lambda: {"nll": 1.0})
  frozen: dict[str, tuple[Any, Any, Any]] = dataclasses.field(default_factory=dict)  # name -> (graphdef, params, shardings)
  evaluate: Callable[[state_lib.TrainState, int], dict[str, float]] | None = None
  at_end: Callable[[state_lib.TrainState, metrics_lib.MetricsLogger], dict[str, float]] | None = None
  console_keys: tuple[str, ...] = ("loss",)
  # A fresh run's first state (a stage that starts from given params); None: `initial_state`
  # from cfg.seed and init.params_from. Ignored when the run resumes from a checkpoint.
  start_state: Callable[[Run], state_lib.TrainState] | None = None


def initial_state(run: Run, *, seed: int, params_from: str = ""):
  """A fresh TrainState: initialised from `seed`, or with params from a run / HF directory."""
  _, state, _ = state_lib.init_train_state(run.model_cfg, run.tx, run.mesh, seed)
  if not params_from:
    return state
  params = load_init_params(params_from, run.model_cfg, run.mesh)
  params = jax.device_put(params, run.shardings.params)
  return state.replace(params=params, opt_state=jax.jit(run.tx.init, out_shardings=run.shardings.opt_state)(params))


def load_init_params(path: str, model_cfg, mesh):
  """Params of an earlyrl_jax run directory (newest checkpoint) or an HF directory, checked
  against the configured model shape (earlyrl_jax/checkpoint_shape.py) and cast to its
  param_dtype. max_seq_len, dtype and remat are run settings, not compared."""
  from earlyrl_jax.checkpoint_shape import checkpoint_model_config, is_run_dir, shape_mismatch
  bad = shape_mismatch(dataclasses.asdict(model_cfg), checkpoint_model_config(path))
  if bad:
    raise configs.ConfigError(
        f"init.params_from={path!r}: its model shape differs from the config's `model` section: "
        f"{', '.join(bad)}; model.preset='from_checkpoint' takes the checkpoint's shape")
  if is_run_dir(path):
    _, params, _ = load_run_params(path, mesh)
    return jax.tree.map(lambda x: x.astype(model_cfg.param_dtype), params)
  from earlyrl_jax.models import hf_io
  _, params = hf_io.load_params(path, model_cfg, mesh)
  return params


# --------------------------------------------------------------------------- the loop


class _Preemption:
  """A stop signal -> a flag checked between steps; raises Preempted out of a data wait."""

  def __init__(self):
    self.requested = False
    self.name = "SIGTERM"
    self.waiting_for_data = False
    self._old = {}

  def __enter__(self):
    if jax.process_count() > 1:  # JAX's preemption service owns SIGTERM (its C++ handler)
      return self
    try:
      for sig in STOP_SIGNALS:  # Ctrl-C (SIGINT) stays an immediate interrupt
        self._old[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook runners)
      pass
    return self

  def _handle(self, signum, _frame):
    self.requested, self.name = True, signal.Signals(signum).name
    if self.waiting_for_data:
      raise Preempted()

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def check_finite(step: int, scalars: dict[str, float], ckpt: Checkpointer, cfg=None) -> None:
  bad = {k: v for k, v in scalars.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if scalars.get("params_finite", 1.0) < 1.0:
    bad["updated params"] = "non-finite"
  if bad:
    ckpt.wait()
    last = ckpt.latest_step()
    where = f"step {last} in {ckpt.directory}" if last is not None else "none written yet"
    hint = configs.nonfinite_hint(cfg) if cfg is not None else (
        "lower opt.learning_rate or inspect the data near this step")
    raise NonFiniteLossError(
        f"non-finite values at step {step}: {bad}; training stopped, last good checkpoint: "
        f"{where}; {hint}")


def train_loop(run: Run, job: Job) -> dict[str, Any]:
  """Runs (or resumes) `job` to `cfg.num_steps`. Returns the final state and last metrics."""
  cfg, mesh, ckpt = run.cfg, run.mesh, run.ckpt
  metrics_path = os.path.join(run.workdir, "metrics.jsonl")
  latest = ckpt.latest_step()
  if latest is not None and latest >= cfg.num_steps:
    log(f"{job.name}: already complete at step {latest} in {run.workdir}; nothing to do")
    state, _ = ckpt.restore(run.abs_state)
    ckpt.close()
    return _result(run, state, {}, preempted=False)
  if latest is not None:
    t0 = time.time()
    state, start = ckpt.restore(run.abs_state, job.data_iter)
    if is_main():
      moved = metrics_lib.roll_back_jsonl(metrics_path, start)
      log(f"resumed from step {start} ({time.time() - t0:.1f}s)"
          + (f"; {moved} metric records past it moved to metrics.rolled_back.jsonl" if moved else ""))
  else:
    state = (job.start_state(run) if job.start_state is not None
             else initial_state(run, seed=cfg.seed, params_from=params_from(cfg)))
    start = 0
  log(f"{job.name}: model {run.model_cfg.num_params() / 1e6:.2f}M params | mesh {dict(mesh.shape)} | "
      f"vocab {run.tokenizer.vocab_size} | batch " + ", ".join(
          f"{k} {'x'.join(map(str, s.shape))}" for k, s in job.batch_spec.items() if k.endswith("tokens")))

  frozen_graphdefs = {k: g for k, (g, _, _) in job.frozen.items()}
  frozen_params = {k: p for k, (_, p, _) in job.frozen.items()}
  frozen_shardings = {k: s for k, (_, _, s) in job.frozen.items()}
  step_fn = steps_lib.make_train_step(
      run.graphdef, run.tx, run.schedule, mesh, run.shardings, job.batch_spec, loss_fn=job.loss_fn,
      coefs=job.coefs, frozen_graphdefs=frozen_graphdefs, frozen_shardings=frozen_shardings,
      grad_accum_steps=cfg.opt.grad_accum_steps)
  abs_frozen = {k: mesh_lib.with_shardings(jax.eval_shape(lambda x: x, p), frozen_shardings[k])
                for k, p in frozen_params.items()}
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = step_fn.lower(run.abs_state, job.batch_spec, abs_frozen).compile()
  log(f"compiled train step in {time.time() - t0:.1f}s{_memory_summary(compiled)}")

  logger = metrics_lib.MetricsLogger(run.workdir, is_main=is_main(), num_steps=cfg.num_steps,
                                     every_steps=cfg.log_every_steps,
                                     wandb_project=cfg.metrics.wandb_project if "metrics" in cfg else "",
                                     wandb_config=cfg.to_dict())
  progress = metrics_lib.Progress(cfg.num_steps, start)
  pending = None  # (step, device metrics, host stats) awaiting the finite check
  last: dict[str, float] = {}
  stopped_by = None  # the signal that stopped the run (multi-host: JAX's preemption notice)

  def settle(item):
    """Fetches a finished step's scalars, checks them, logs at the log interval."""
    nonlocal last
    step, dev_metrics, stats = item
    scalars = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    check_finite(step, scalars, ckpt, cfg)
    progress.add_tokens(scalars["tokens"])
    last = scalars
    if step % cfg.log_every_steps == 0 or step == cfg.num_steps:
      out = dict(scalars)
      out.update({(k if "/" in k else f"data/{k}"): float(v) for k, v in stats.items()})
      extra = {k: out[k] for k in job.console_keys if k in out}
      skips = {k: v for k, v in out.items() if k.startswith(("data/skipped", "data/replaced")) and v}
      if is_main():
        out.update(progress.report(step, {**extra, **skips}))
      logger.write(step, out)

  try:
    with _Preemption() as preempt, jax.set_mesh(mesh):
      for step in range(start, cfg.num_steps):
        preempt.waiting_for_data = True
        try:
          batch, stats = job.next_batch(state, step)
        except Preempted:
          log(f"{preempt.name} while waiting for data for step {step + 1}")
          break
        except Exception:   # e.g. a teacher that fails (TeacherFailure): the last step is logged first
          if pending is not None:
            settle(pending)
            pending = None
          raise
        finally:
          preempt.waiting_for_data = False
        state, dev_metrics = compiled(state, mesh_lib.shard_batch(batch, mesh), frozen_params)
        if pending is not None:
          settle(pending)
        pending = (step + 1, dev_metrics, stats)
        logger.tick(step + 1)
        done = step + 1 == cfg.num_steps
        # One host: the SIGTERM flag. Several: every process asks orbax's preemption sync at
        # every step, so all of them stop and save at the same step.
        stop = (preempt.requested if jax.process_count() == 1
                else ckpt.reached_preemption(step + 1))
        if (step + 1) % cfg.checkpoint.every_steps == 0 or done or stop:
          settle(pending)
          pending = None
          ckpt.save(step + 1, state, job.data_iter, force=True)
        if job.evaluate is not None and cfg.eval_every_steps and (
            (step + 1) % cfg.eval_every_steps == 0 or done):
          ev = job.evaluate(state, step + 1)
          logger.write(step + 1, ev)
          log(f"step {step + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
          last.update(ev)
        if stop and not done:
          stopped_by = preempt.name if preempt.requested else "a preemption notice"
          break
      if pending is not None:
        settle(pending)
        pending = None
      if preempt.requested and int(state.step) < cfg.num_steps:  # also a stop in a data wait
        stopped_by = preempt.name
        if int(state.step) > (ckpt.latest_step() or 0):
          ckpt.save(int(state.step), state, job.data_iter, force=True)
      if job.at_end is not None and int(state.step) == cfg.num_steps:
        last.update(job.at_end(state, logger))
      saved = ckpt.latest_step()
  finally:
    ckpt.close()  # waits for the last save to complete
    logger.close()
  if stopped_by is not None:
    sync("stopped")  # every host has written its part of the checkpoint before any exits
    log(f"preempted ({stopped_by}): saved step {saved} in {ckpt.directory}; rerun the same "
        "command to resume from it" if saved is not None else
        f"preempted ({stopped_by}) before the first step: nothing to save; rerun the same "
        "command to start")
  return _result(run, state, last, preempted=stopped_by is not None)


def _result(run: Run, state, last, *, preempted: bool) -> dict[str, Any]:
  """preempted: a stop signal ended the run before num_steps (its checkpoint is written)."""
  return {"state": state, "graphdef": run.graphdef, "metrics": last, "tokenizer": run.tokenizer,
          "model_config": run.model_cfg, "mesh": run.mesh, "preempted": preempted}


def params_from(cfg) -> str:
  """`init.params_from` when the config has an `init` section ('' = from scratch)."""
  init = cfg.get("init")
  return init.params_from if init is not None else ""


def _memory_summary(compiled) -> str:
  try:
    m = compiled.memory_analysis()
    if m is None:
      return ""
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return f" (memory per device: {total / 2**20:.1f} MiB, temp {m.temp_size_in_bytes / 2**20:.1f} MiB)"
  except Exception:  # not every backend implements it
    return ""


# --------------------------------------------------------------------------- pretraining


def lm_batch_spec(global_batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  ints = ("tokens", "targets", "segment_ids", "positions")
  spec = {k: jax.ShapeDtypeStruct((global_batch, seq_len), np.int32) for k in ints}
  spec["loss_mask"] = jax.ShapeDtypeStruct((global_batch, seq_len), np.float32)
  return spec


def _next_from(data_iter):
  def next_batch(state, step):
    del state, step
    batch = next(data_iter)
    return batch, batch.pop("stats")
  return next_batch


def pretrain_job(run: Run) -> Job:
  cfg, d = run.cfg, run.cfg.data
  host_batch = d.batch_size // jax.process_count()
  data_iter = iter(pipeline.make_lm_dataset(
      d, run.tokenizer, seq_len=d.seq_len, host_batch_size=host_batch, seed=cfg.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), files=run.train_files))
  spec = lm_batch_spec(d.batch_size, d.seq_len)
  return Job(name="pretrain", batch_spec=spec, next_batch=_next_from(data_iter), data_iter=data_iter,
             coefs={"nll": 1.0, "z_loss": cfg.opt.z_loss}, evaluate=heldout_eval(run, spec),
             at_end=world_eval_at_end(run), console_keys=("loss",))


def heldout_eval(run: Run, spec) -> Callable | None:
  """Held-out NLL over the first `eval_batches` packed batches of the eval files (same every time)."""
  cfg, d = run.cfg, run.cfg.data
  if not (cfg.eval_every_steps and run.eval_files):
    return None
  eval_step = steps_lib.make_eval_step(run.graphdef, run.mesh, run.shardings.params, spec)
  eval_ds = pipeline.make_lm_dataset(d, run.tokenizer, seq_len=d.seq_len,
                                     host_batch_size=d.batch_size // jax.process_count(), seed=0,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), files=run.eval_files,
                                     field="data.eval_files", shuffle=False)

  def evaluate(state, step):
    del step
    total, count = 0.0, 0.0
    it = iter(eval_ds)
    for _ in range(cfg.eval_batches):
      batch = next(it)
      batch.pop("stats")
      s, c = jax.device_get(eval_step(state.params, mesh_lib.shard_batch(batch, run.mesh)))
      total, count = total + float(s), count + float(c)
    loss = total / max(count, 1.0)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}
  return evaluate


def world_eval_at_end(run: Run) -> Callable | None:
  """Oracle scores of the final model's continuations of held-out world prompts (the validation
  split: only the report's final stage reads test, world/splits.py)."""
  cfg = run.cfg
  if cfg.data.corpus != "world" or not cfg.eval_world_prompts:
    return None

  def at_end(state, logger):
    from flax import nnx
    from earlyrl_jax.eval.evaluate import world_eval
    t0 = time.time()
    res = world_eval(nnx.merge(run.graphdef, state.params), run.tokenizer,
                     world_dir_of(cfg, run.workdir), split="validation",
                     num_prompts=cfg.eval_world_prompts, key=jax.random.key(cfg.seed), mesh=run.mesh)
    example = res.pop("example")
    logger.write(cfg.num_steps, res)
    log(f"world eval ({time.time() - t0:.1f}s): " + ", ".join(f"{k[6:]} {v:.3f}" for k, v in res.items()))
    if example:
      log(f"  prefix: ...{example['prefix'][-120:]!r}\n  model:  {example['continuation'][:200]!r}")
    return res
  return at_end


def world_eval_during(run: Run) -> Callable | None:
  """Held-out NLL plus oracle scores of sampled continuations (validation prompts): the curves
  over training."""
  cfg = run.cfg
  heldout = heldout_eval(run, lm_batch_spec(cfg.data.batch_size, cfg.data.seq_len))
  n = int(cfg.get("eval_world_prompts_during", 0) or 0)
  if heldout is None and not (cfg.data.corpus == "world" and n):
    return None

  def evaluate(state, step):
    out = heldout(state, step) if heldout is not None else {}
    if cfg.data.corpus == "world" and n:
      from flax import nnx
      from earlyrl_jax.eval.evaluate import world_eval
      res = world_eval(nnx.merge(run.graphdef, state.params), run.tokenizer,
                       world_dir_of(cfg, run.workdir), split="validation", num_prompts=n,
                       key=jax.random.key(cfg.seed), mesh=run.mesh)
      res.pop("example")
      out.update(res)
    return out
  return evaluate


def train(cfg, workdir: str) -> dict[str, Any]:
  """`mode='pretrain'`: next-token pretraining (runs or resumes)."""
  run = setup(cfg, workdir)
  return train_loop(run, pretrain_job(run))


def load_run_params(workdir: str, mesh=None, step: int | None = None):
  """(graphdef, params, ModelConfig) of a run's checkpoint, shape from WORKDIR/config.json."""
  import ml_collections
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  model_cfg = configs.model_config(cfg)
  mesh = mesh or mesh_lib.single_device_mesh()
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  graphdef, abs_state, _ = state_lib.abstract_train_state(model_cfg, tx, mesh)
  ckpt = Checkpointer(checkpoint_dir(cfg, workdir))
  try:
    state, _ = ckpt.restore(abs_state, step=step)
  finally:
    ckpt.close()
  return graphdef, state.params, model_cfg
