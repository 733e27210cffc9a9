"""The embedded teacher's training stages, each a job of the shared loop (`train/loop.py`).

Every stage (pretraining, SFT, the noisy policies, the rewriter's GRPO) is a `loop.Job` that
`loop.train_loop` runs in a directory of its own (`stage_dir/metrics.jsonl`, `checkpoints/`):
the step is compiled ahead, every step is checked for NaN/inf, and a stage killed mid-way
resumes from its newest checkpoint (a finished one returns at once) and ends with the params an
uninterrupted one would have: the batches are a function of the step, and GRPO's random
streams are checkpointed with the state.

    rows (packed numpy) ──batch_order(step)──▶ loop.train_loop(stage run, Job) ──▶ params
    GRPO: GrpoBatches(state.params, step) samples edits, judges them ──▶ one update per batch
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from earlyrl_jax import world as W
from earlyrl_jax.embedded import data as D
from earlyrl_jax.models.scoring import local_batch_multiple
from earlyrl_jax.teacher import rewriter as rw
from earlyrl_jax.teacher import teacher as T
from earlyrl_jax.teacher.judges.lm import LMJudge
from earlyrl_jax.teacher.prompts.text import trim_to_sentence_end
from earlyrl_jax.train import loop
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train.checkpoint import Checkpointer

CHECKPOINT_EVERY = 100   # stage checkpoints when the teacher's config has no `checkpoint` section


class StagePreempted(RuntimeError):
  """A stage stopped before its last step (SIGTERM): its checkpoint is saved, and running the
  same job again resumes it. Never a half-trained stage handed on to the next one."""


def run_stage(run: loop.Run, job: loop.Job):
  """`loop.train_loop` to `run.cfg.num_steps`; the final state, or StagePreempted."""
  state = loop.train_loop(run, job)["state"]
  if int(state.step) != run.cfg.num_steps:
    raise StagePreempted(f"{job.name}: stopped at step {int(state.step)} of {run.cfg.num_steps} "
                         f"(checkpoint in {run.ckpt.directory}); run the job again to resume")
  return state


# ------------------------------------------------------------------ a stage as a run of the shared loop


def stage_config(cfg, *, steps: int, seed: int, log_every: int, opt) -> ml_collections.ConfigDict:
  """The fields `loop.train_loop` reads, for one stage of the teacher's config `cfg`."""
  ck = cfg.get("checkpoint") or ml_collections.ConfigDict()
  return ml_collections.ConfigDict({
      "num_steps": int(steps), "seed": int(seed), "log_every_steps": max(1, int(log_every)),
      "eval_every_steps": 0, "opt": opt.to_dict() if hasattr(opt, "to_dict") else dict(opt),
      "checkpoint": {"every_steps": int(ck.get("every_steps", CHECKPOINT_EVERY)),
                     "keep": int(ck.get("keep", 1)), "async_save": bool(ck.get("async_save", True))}})


def stage_run(cfg, workdir: str, *, model_cfg, tokenizer, mesh, tx, schedule, steps: int, seed: int,
              log_every: int, opt) -> loop.Run:
  """A `loop.Run` for one stage in `workdir` (its own metrics and checkpoints)."""
  scfg = stage_config(cfg, steps=steps, seed=seed, log_every=log_every, opt=opt)
  graphdef, abs_state, shardings = state_lib.abstract_train_state(model_cfg, tx, mesh)
  ck = scfg.checkpoint
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=ck.keep, every_steps=ck.every_steps,
                      async_save=ck.async_save)
  return loop.Run(scfg, workdir, mesh, "", "", tokenizer, model_cfg, tx, schedule, graphdef, abs_state,
                  shardings, ckpt)


def starting_from(params, seed: int) -> Callable[[loop.Run], state_lib.TrainState]:
  """`Job.start_state`: step 0 at `params` (copied: the step donates its state), a fresh
  optimizer state, the stage's seed."""
  def start(run: loop.Run) -> state_lib.TrainState:
    with jax.set_mesh(run.mesh):
      p = jax.device_put(jax.tree.map(jnp.copy, params), run.shardings.params)
      opt_state = jax.jit(run.tx.init, out_shardings=run.shardings.opt_state)(p)
      state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=opt_state,
                                   rng=jax.random.PRNGKey(seed).astype(jnp.uint32))
      return jax.device_put(state, run.shardings)
  return start


def stage_opt(cfg, lr: float, steps: int):
  """The teacher's `opt` section with this stage's peak rate and warmup (capped at a tenth of it):
  (opt section, optimizer, schedule)."""
  o = cfg.opt.copy_and_resolve_references()
  o.learning_rate = lr
  o.warmup_steps = min(o.warmup_steps, max(1, steps // 10))
  return o, state_lib.make_optimizer(o, steps), state_lib.lr_schedule(o, steps)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """int [steps, batch_size]: the rows of each step, a new permutation whenever the next batch
  does not fit in the current one (a function of the step: a resumed stage draws the same)."""
  rng = np.random.default_rng(seed)
  perm, pos, out = rng.permutation(n), 0, []
  for _ in range(steps):
    if pos + batch_size > n:
      perm, pos = rng.permutation(n), 0
    out.append(perm[pos:pos + batch_size])
    pos += batch_size
  return np.asarray(out, np.int64).reshape(steps, -1)


def lm_stage(cfg, name: str, workdir: str, params, model_cfg, mesh, tokenizer, rows: dict, *, steps: int,
             lr: float, batch_size: int, seed: int, log_every: int, snapshots: Sequence[int] = ()):
  """Packed-LM training of `params` on `rows` through the shared loop: (params, {step: params}
  at each of `snapshots`). A stage with no steps returns `params` unchanged.

  A snapshot stops the loop at its step (its checkpoint is the resume point of the next call,
  whose optimizer and schedule span the whole stage) and keeps its params in
  `workdir/params-<step>`, so a resumed or finished stage still returns it."""
  if steps <= 0:
    return params, {}
  opt, tx, schedule = stage_opt(cfg, lr, steps)
  order = batch_order(rows["tokens"].shape[0], batch_size, steps, seed)
  spec = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in rows.items()}

  def next_batch(state, step):
    del state
    return {k: v[order[step]] for k, v in rows.items()}, {}

  job = loop.Job(name=f"teacher/{name}", batch_spec=spec, next_batch=next_batch, data_iter=None,
                 coefs={"nll": 1.0, "z_loss": 0.0}, start_state=starting_from(params, seed))
  snaps = {}
  for stop in sorted({s for s in snapshots if 0 < s < steps}) + [steps]:
    kept = os.path.join(workdir, f"params-{stop}")   # a snapshot outlives the checkpoints past it
    if stop < steps and os.path.isdir(kept):
      snaps[stop] = T.restore_params(kept, model_cfg, mesh)[1]
      continue
    run = stage_run(cfg, workdir, model_cfg=model_cfg, tokenizer=tokenizer, mesh=mesh, tx=tx,
                    schedule=schedule, steps=stop, seed=seed, log_every=log_every, opt=opt)
    if stop < steps and (run.ckpt.latest_step() or 0) > stop:
      raise FileNotFoundError(f"{kept}: the snapshot at step {stop} is gone but {workdir} trained past "
                              f"it; delete {workdir} to train this stage again")
    snaps[stop] = run_stage(run, job).params   # resumes where the last stop saved
    if stop < steps:
      T.save_params(kept, snaps[stop])
  return snaps.pop(steps), snaps


# ------------------------------------------------------------------ the rewriter's GRPO


class GrpoBatches:
  """GRPO's batch producer (`Job.next_batch`) and its own data iterator (`Job.data_iter`).

  Per step: K sampled edits per input (keep/drop per sentence at `grpo.temperature`) from the
  current params, the paper's reward with the teacher's own judge (its trained verdicts), group-
  normalised advantages, and one row per sample: the edit prompt with its sampled verdicts as
  targets at the CHECKs. Its random streams (inputs, verdict sampling, keys) are checkpointed
  with the state (`get_state` / `set_state`), so a resumed GRPO draws what it would have.
  """

  def __init__(self, cfg, teacher, rewrites: list[dict], editor, mesh):
    g = cfg.teacher.grpo
    self.g, self.teacher, self.rewrites, self.editor = g, teacher, rewrites, editor
    self.keep_id, self.drop_id = editor.verdicts
    self.K = int(g.samples_per_input)
    self.n = min(int(g.inputs_per_step), len(rewrites)) * self.K   # samples per step
    # Rows split evenly over the data-parallel devices: extra rows repeat the first sample with
    # no loss (mask and advantage 0); none on one device.
    m = local_batch_multiple(mesh)
    self.rows = -(-self.n // m) * m
    self.rng = random.Random(cfg.seed + 7)
    self.sample_rng = np.random.default_rng(cfg.seed + 7)
    self.key = jax.random.key(cfg.seed + 7)
    self.rewards: list[float] = []   # mean reward of each step so far
    # The trained verdicts alone: the judge follows the params being trained (set per step).
    self.judge = LMJudge(teacher.graphdef, teacher.params, teacher.tokenizer, max_len=teacher.max_len,
                         limits=teacher.limits, judge_format=teacher.info.get("judge_format", "pairwise"))

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    L = self.teacher.max_len
    spec = {k: jax.ShapeDtypeStruct((self.rows, L), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
    spec["loss_mask"] = jax.ShapeDtypeStruct((self.rows, L), np.float32)
    spec["advantages"] = jax.ShapeDtypeStruct((self.rows,), np.float32)
    return spec

  def __call__(self, state, step: int):
    del step
    g, K, L, params = self.g, self.K, self.teacher.max_len, state.params
    items = self.rng.sample(self.rewrites, min(g.inputs_per_step, len(self.rewrites)))
    rp = [r["prefix"] for r in items for _ in range(K)]
    ro = [r["suffix"] for r in items for _ in range(K)]
    defective = [r["defect"] is not None for r in items for _ in range(K)]
    self.key, k = jax.random.split(self.key)
    plans, keep, texts = self.editor.edit(params, rp, ro, key=k, temperature=g.temperature,
                                          rng=self.sample_rng)
    judge = self.judge
    judge.params = params
    jq = 0.5 * (judge.compare(rp, texts, ro, axis="quality") + 1 - judge.compare(rp, ro, texts, axis="quality"))
    jf = 0.5 * (judge.compare(rp, texts, ro, axis="factuality", references=ro)
                + 1 - judge.compare(rp, ro, texts, axis="factuality", references=ro))
    js = 1.0 - judge.pointwise(rp, texts)
    rewards = np.array([rw.rewriter_reward(defective[i], ro[i], texts[i], 0.5 * (jq[i] + jf[i]), js[i])
                        for i in range(len(texts))])
    adv = rw.group_advantages(rewards.reshape(-1, K)).reshape(-1)
    self.rewards.append(float(rewards.mean()))
    copy = float(np.mean([texts[i].strip() == ro[i].strip() for i in range(len(texts)) if not defective[i]] or [0.0]))
    rows = {k: np.zeros((self.rows, L), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
    rows["loss_mask"] = np.zeros((self.rows, L), np.float32)
    for r in range(self.rows):
      i = r if r < len(plans) else 0   # a row past the samples repeats the first, with no loss
      pl, n = plans[i], len(plans[i].ids)
      rows["tokens"][r, :n] = pl.ids
      rows["targets"][r, :n - 1] = pl.ids[1:]
      rows["segment_ids"][r, :n] = 1
      rows["positions"][r, :n] = np.arange(n)
      for c, kept in zip(pl.checks, keep[i]):
        rows["targets"][r, c] = self.keep_id if kept else self.drop_id
        rows["loss_mask"][r, c] = float(r < len(plans))
    rows["advantages"] = np.zeros((self.rows,), np.float32)
    rows["advantages"][:len(plans)] = adv
    return rows, {"grpo/reward": self.rewards[-1], "grpo/copy": copy}

  # The data-iterator contract of the loop's checkpoints (grain's handler: bytes in and out).
  def get_state(self) -> bytes:
    return json.dumps({"rng": self.rng.getstate(), "sample_rng": self.sample_rng.bit_generator.state,
                       "key": np.asarray(jax.random.key_data(self.key)).tolist(),
                       "rewards": self.rewards}).encode()

  def set_state(self, blob: bytes) -> None:
    s = json.loads(blob.decode())
    v, internal, gauss = s["rng"]
    self.rng.setstate((v, tuple(internal), gauss))
    self.sample_rng.bit_generator.state = s["sample_rng"]
    self.key = jax.random.wrap_key_data(jnp.asarray(s["key"], jnp.uint32))
    self.rewards = list(s["rewards"])

  def start_prefetch(self) -> None:
    """Nothing to prefetch (grain calls it after a restore)."""


def grpo(cfg, teacher, rewrites: list[dict], mesh, workdir: str) -> tuple[object, dict]:
  """The rewriter's GRPO through the shared loop: K sampled edits per input, the paper's reward
  with the teacher's own judge, group-normalised advantages, KL to the post-SFT model on the
  verdict tokens. Returns (params, {'grpo/reward_first', 'grpo/reward_last'})."""
  g = cfg.teacher.grpo
  if g.steps <= 0:
    return teacher.params, {}
  editor = teacher.rewriter(kind="edit", max_new_tokens=cfg.teacher.rewrite_max_new_tokens)
  batches = GrpoBatches(cfg, teacher, rewrites, editor, mesh)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(g.learning_rate))
  opt = cfg.opt.copy_and_resolve_references()
  opt.learning_rate = float(g.learning_rate)
  run = stage_run(cfg, workdir, model_cfg=teacher.model_cfg, tokenizer=teacher.tokenizer, mesh=mesh, tx=tx,
                  schedule=optax.constant_schedule(g.learning_rate), steps=g.steps, seed=cfg.seed,
                  log_every=1, opt=opt)
  # The reference is the post-SFT model, a copy apart from the params the step donates.
  reference = (run.graphdef, jax.tree.map(jnp.copy, teacher.params), run.shardings.params)
  job = loop.Job(name="teacher/grpo", batch_spec=batches.batch_spec(), next_batch=batches,
                 data_iter=batches, loss_fn=rw.grpo_terms, coefs={"pg": 1.0, "kl": float(g.kl_coef)},
                 frozen={"reference": reference}, start_state=starting_from(teacher.params, cfg.seed),
                 console_keys=("loss", "grpo/reward", "grpo/copy", "kl"))
  params = run_stage(run, job).params
  rewards = batches.rewards or _logged(workdir, "grpo/reward")   # a finished stage: its log
  if not rewards:
    return params, {}
  return params, {"grpo/reward_first": rewards[0], "grpo/reward_last": rewards[-1]}


def _logged(workdir: str, key: str) -> list[float]:
  """`key` at every step a stage logged it (its metrics.jsonl)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r[key] for r in map(json.loads, f) if key in r]


# ------------------------------------------------------------------ noisy policies (held-out rollouts)


def noisy_policies(cfg, kb, tokenizer, mesh, workdir: str) -> list[tuple]:
  """A small plain-NLL model on the NOISY world corpus: (name, graphdef, params, model config)
  at an early ('weak') and the last ('better') step."""
  from flax import nnx
  from earlyrl_jax.models.transformer import ModelConfig, Transformer
  p = cfg.teacher.policy
  mc = ModelConfig(vocab_size=cfg.model.vocab_size, d_model=p.d_model, n_layers=p.n_layers, n_heads=4,
                   n_kv_heads=2, head_dim=p.d_model // 4, d_ff=3 * p.d_model, max_seq_len=p.seq_len)
  texts = [d.text for d in W.generate_documents(kb, cfg.world, "train", p.num_documents)]
  rows = D.lm_rows(tokenizer, texts, p.seq_len)
  graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(cfg.seed + 3)))
  params, snaps = lm_stage(cfg, "policy", workdir, params, mc, mesh, tokenizer, rows, steps=p.steps,
                           lr=p.learning_rate, batch_size=p.batch_size, seed=cfg.seed + 3,
                           log_every=max(1, p.steps // 4), snapshots=(p.weak_steps,))
  return [("weak", graphdef, snaps.get(p.weak_steps, params), mc), ("better", graphdef, params, mc)]


def rollouts(policy, tokenizer, prefixes: list[str], max_new_tokens: int, key) -> list[str]:
  from flax import nnx
  from earlyrl_jax.sampling.sampler import Sampler
  name, graphdef, params, mc = policy
  s = Sampler(nnx.merge(graphdef, params), pad_id=tokenizer.pad_id)
  ids = []
  for p in prefixes:
    x = [tokenizer.bos_id] + tokenizer.encode(p + " ")
    ids.append(x[-(mc.max_seq_len - max_new_tokens):])
  out = s(ids, max_new_tokens=max_new_tokens, key=key, temperature=1.0,
          stop_tokens=[tokenizer.eos_id])
  return [trim_to_sentence_end(t) for t in out.texts(tokenizer)]   # windows end mid-sentence


def claim_rollout_texts(cfg, docs, policies, tokenizer) -> list[str]:
  """Rollouts of each noisy policy after prefixes of `docs`: what SIP's judge reads (false
  claims, fillers about unexpected entities, invented names, garbled text), for the claims
  verdict's training."""
  rng = random.Random(cfg.seed + 17)
  prefixes = [sp[0] for doc in docs if (sp := D.suffix_split(doc, rng, cfg.teacher.max_suffix_sentences))]
  key = jax.random.key(cfg.seed + 19)
  texts = []
  for pol in policies:
    key, k = jax.random.split(key)
    texts += rollouts(pol, tokenizer, prefixes, cfg.teacher.eval.rollout_tokens, k)
  return [t for t in texts if t.strip()]
