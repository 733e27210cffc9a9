"""End-to-end pretraining: falling loss, metrics, checkpoints, resume after SIGKILL, NaN stop,
restore onto another mesh, config errors."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import loop
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train.checkpoint import Checkpointer
from tests.helpers import set_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_WORLD = {"world.num_train_documents": 300, "world.num_eval_documents": 20,
               "world.num_preference_pairs": 10, "world.num_rewrite_examples": 10,
               "world.num_factual_probes": 10, "world.num_unsafe_bait": 6}


def tiny_cfg(**overrides):
  from configs import tiny  # noqa: the repository's configs/ directory
  cfg = tiny.get_config()
  base = {"mode": "pretrain", "num_steps": 20, "log_every_steps": 5, "eval_every_steps": 0, "checkpoint.every_steps": 5,
          "eval_world_prompts": 0,
          "data.tokenizer": "byte", "model.vocab_size": 384, "data.batch_size": 8, "data.seq_len": 64,
          **SMALL_WORLD}
  base.update(overrides)
  return set_fields(cfg, base)





def _final_params(workdir, step):
  _, params, _ = loop.load_run_params(workdir, step=step)
  return jax.device_get(params)


def test_pretrain_loss_falls_and_metrics_are_written(tmp_path):
  cfg = tiny_cfg(num_steps=40, **{"opt.warmup_steps": 5, "eval_every_steps": 20, "eval_world_prompts": 6})
  out = loop.train(cfg, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert [l["step"] for l in lines if "loss" in l] == [5, 10, 15, 20, 25, 30, 35, 40]
  assert losses[-1] < losses[0] - 1.0, losses
  assert any("eval/loss" in l for l in lines)
  assert [l for l in lines if "loss" in l][-1]["data/documents"] > 0
  assert "40" in os.listdir(tmp_path / "checkpoints")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert np.isfinite(out["metrics"]["loss"])
  # The end-of-run world evaluation samples continuations and scores them with the oracles.
  world = [l for l in lines if "world/false_claim_rate" in l]
  assert len(world) == 1 and 0.0 <= world[0]["world/unsafe_rate_on_bait"] <= 1.0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny_cfg(num_steps=30, **{"opt.learning_rate": 1e35, "opt.warmup_steps": 0, "opt.grad_clip": 0.0,
                                  "checkpoint.every_steps": 1, "checkpoint.async_save": False})
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite values at step \d+") as e:
    loop.train(cfg, str(tmp_path))
  bad_step = int(str(e.value).split("at step ")[1].split(":")[0])
  ck = Checkpointer(str(tmp_path / "checkpoints"))
  last = ck.latest_step()
  ck.close()
  assert last is not None and last < bad_step
  params = _final_params(str(tmp_path), last)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_restore_onto_a_different_mesh(tmp_path):
  cfg = tiny_cfg(num_steps=5, **{"mesh.data": 8})
  out = loop.train(cfg, str(tmp_path))
  saved = jax.device_get(out["state"].params)
  model_cfg = configs.model_config(cfg)
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  for shape, n in (((1, 1, 1), 1), ((2, 4, 1), 8), ((1, 4, 2), 8)):
    mesh = mesh_lib.make_mesh(shape, jax.devices()[:n])
    _, abstract, _ = state_lib.abstract_train_state(model_cfg, tx, mesh)
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    state, step = ck.restore(abstract)
    ck.close()
    assert step == 5
    emb = state.params["embed"][...]
    assert emb.sharding.mesh.devices.shape == shape
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(saved)):
      np.testing.assert_array_equal(a, b)


CLI_ARGS = ["--config.mode=pretrain", "--config.num_steps=60", "--config.eval_world_prompts=0", "--config.checkpoint.every_steps=5", "--config.log_every_steps=5",
            "--config.eval_every_steps=0", "--config.data.tokenizer=byte", "--config.model.vocab_size=384",
            "--config.data.batch_size=8", "--config.data.seq_len=64"] + [
                f"--config.{k}={v}" for k, v in SMALL_WORLD.items()]


def _cli(workdir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fast
  return subprocess.Popen([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={workdir}",
                           "--config=" + os.path.join(REPO, "configs", "tiny.py"), *CLI_ARGS, *extra],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _complete_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  ref_dir, crash_dir = str(tmp_path / "ref"), str(tmp_path / "crash")
  ref = _cli(ref_dir)
  crash = _cli(crash_dir)
  rng = random.Random(os.getpid())
  deadline = time.time() + 240
  while not any(s >= 15 for s in _complete_steps(crash_dir)):
    assert crash.poll() is None, crash.communicate()[0]
    assert time.time() < deadline
    time.sleep(0.05)
  time.sleep(rng.uniform(0.0, 0.4))
  assert crash.poll() is None, "the run finished before it could be killed"
  os.kill(crash.pid, signal.SIGKILL)
  crash.wait()
  killed_at = max(_complete_steps(crash_dir))
  assert killed_at < 60
  resumed = _cli(crash_dir)
  log = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, log
  assert f"resumed from step {killed_at}" in log
  ref_log = ref.communicate(timeout=300)[0]
  assert ref.returncode == 0, ref_log

  a, b = _final_params(ref_dir, 60), _final_params(crash_dir, 60)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise
  # Same data position at the end: nothing skipped, nothing seen twice.
  ref_iter = open(os.path.join(ref_dir, "checkpoints", "60", "data_iter", "process_0-of-1.json")).read()
  crash_iter = open(os.path.join(crash_dir, "checkpoints", "60", "data_iter", "process_0-of-1.json")).read()
  assert json.loads(ref_iter) == json.loads(crash_iter)
  steps = [json.loads(l)["step"] for l in open(os.path.join(crash_dir, "metrics.jsonl"))]
  assert steps == list(range(5, 61, 5))  # rolled-back records moved aside, none duplicated


def test_config_errors_name_the_field():
  with pytest.raises(configs.ConfigError, match="data.batch_size"):
    configs.validate(tiny_cfg(**{"data.batch_size": 12}), num_devices=8)
  with pytest.raises(configs.ConfigError, match="needs 3 devices"):
    configs.validate(tiny_cfg(**{"mesh.data": 3}), num_devices=8)
  with pytest.raises(configs.ConfigError, match="model.n_kv_heads"):
    configs.validate(tiny_cfg(**{"mesh.data": 2, "mesh.tensor": 4}), num_devices=8)
  with pytest.raises(configs.ConfigError, match="mode"):
    configs.validate(tiny_cfg(mode="finetune"), num_devices=1)
  with pytest.raises(configs.ConfigError, match="data.seq_len"):
    configs.validate(tiny_cfg(**{"data.seq_len": 4096}), num_devices=1)


def test_cli_rejects_unknown_field_and_bad_data(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={tmp_path}/a",
                      "--config.no_such_field=3"], cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode != 0 and "no_such_field" in r.stderr
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  r = subprocess.run([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={tmp_path}/b",
                      "--config.data.corpus=files", f"--config.data.train_files={bad}",
                      "--config.data.tokenizer=byte", "--config.model.vocab_size=384", "--config.num_steps=2"],
                     cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 2
  assert f"{bad}:2: malformed JSON" in r.stderr


# ----------------------------------------------------------------------------- the optimizer


def _opt_cfg(**kw):
  from ml_collections import ConfigDict
  base = dict(learning_rate=0.1, warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.95, eps=1e-8,
              weight_decay=0.5, grad_clip=0.0)
  base.update(kw)
  return ConfigDict(base)


def test_weight_decay_applies_to_matrices_only_not_biases_or_norms():
  from flax import nnx
  from tests.helpers import tiny_model
  params = nnx.state(tiny_model(qkv_bias=True), nnx.Param)
  mask = {"/".join(map(str, p)): m for p, m in nnx.to_flat_state(state_lib.weight_decay_mask(params))}
  mask = {k: (v.get_value() if hasattr(v, "get_value") else v) for k, v in mask.items()}
  assert mask["blocks/0/attn/q"] and mask["blocks/0/mlp/down"] and mask["embed"]
  assert not mask["blocks/0/attn/q_bias"]  # [N, H]: 2-D, but a bias
  assert not mask["blocks/0/attn/k_bias"] and not mask["final_norm/scale"]
  # With zero gradients AdamW only decays: matrices shrink, biases and norm scales stay put.
  tx = state_lib.make_optimizer(_opt_cfg(), num_steps=10)
  params = jax.tree.map(lambda x: x + 1.0, params)  # non-zero biases
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  upd = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(updates)}
  assert np.all(upd["blocks/0/attn/q_bias"] == 0) and np.all(upd["final_norm/scale"] == 0)
  assert np.all(upd["blocks/0/attn/q"] != 0)


def test_tree_all_finite_is_jittable():
  tree = {"a": jnp.ones((3, 2)), "b": {"c": jnp.zeros(4)}, "n": jnp.arange(3)}
  f = jax.jit(state_lib.tree_all_finite)
  assert bool(f(tree))
  tree["b"]["c"] = tree["b"]["c"].at[2].set(jnp.inf)
  assert not bool(f(tree))
  assert not bool(f({"x": jnp.array([jnp.nan], jnp.bfloat16)}))


# ----------------------------------------------------------------------------- gradient accumulation


def _ragged_batch(rows=8, seq=32, vocab=64, seed=0):
  """Rows with very different token counts: full, a few tokens, none, and in between."""
  from tests.helpers import random_lm_batch
  b = random_lm_batch(rows, seq, vocab, seed=seed, packed=False)
  counts = [seq - 1, 1, 0, 3, seq - 1, 17, 2, 9][:rows]
  mask = np.zeros((rows, seq), np.float32)
  for r, c in enumerate(counts):
    mask[r, :c] = 1.0
  b["loss_mask"] = mask
  return b


def test_gradient_accumulation_with_ragged_masks_equals_one_big_batch():
  """SGD(lr=1) makes the update equal to the gradient, so any per-micro-batch averaging shows.

  The reference is computed directly (jax.grad of Σ nll / Σ tokens over the whole batch),
  not by another accumulation setting.
  """
  import optax
  from flax import nnx
  from earlyrl_jax.train import losses
  from earlyrl_jax.train import steps as steps_lib
  from tests.helpers import tiny_model_config
  model_cfg = tiny_model_config(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
  mesh = mesh_lib.make_mesh((2, 1, 1), jax.devices()[:2])
  tx = optax.sgd(1.0)
  schedule = lambda step: 1.0
  batch = _ragged_batch()
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  graphdef, state0, shardings = state_lib.init_train_state(model_cfg, tx, mesh, seed=0)
  params0 = jax.device_get(state0.params)

  def reference_grads(params):
    model = nnx.merge(graphdef, params)
    logits = model(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp, _ = losses.token_logprobs(logits, batch["targets"])
    return -jnp.sum(logp * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])
  ref_loss, ref_g = jax.jit(jax.value_and_grad(reference_grads))(params0)

  @jax.jit
  def naive_grads(params, mbs):
    """Averaging per micro-batch means (the bug this guards against)."""
    def mean_nll(p, mb):
      logits = nnx.merge(graphdef, p)(mb["tokens"], positions=mb["positions"],
                                      segment_ids=mb["segment_ids"])
      logp, _ = losses.token_logprobs(logits, mb["targets"])
      return -jnp.sum(logp * mb["loss_mask"]) / jnp.maximum(mb["loss_mask"].sum(), 1.0)
    g = jax.vmap(jax.grad(mean_nll), in_axes=(None, 0))(params, mbs)
    return jax.tree.map(lambda x: x.mean(0), g)
  mbs = {k: np.stack([v[i::4] for i in range(4)]) for k, v in batch.items()}
  naive = naive_grads(params0, mbs)
  gap = optax.tree.norm(jax.tree.map(jnp.subtract, naive, ref_g)) / optax.tree.norm(ref_g)
  assert gap > 0.05, gap

  for accum in (4,):  # (accum=1 is the same code path with one micro-batch)
    step = steps_lib.make_train_step(graphdef, tx, schedule, mesh, shardings, spec,
                                     loss_fn=losses.lm_terms, coefs={"nll": 1.0, "z_loss": 0.0},
                                     grad_accum_steps=accum)
    _, state, _ = state_lib.init_train_state(model_cfg, tx, mesh, seed=0)
    with jax.set_mesh(mesh):
      new, metrics = step(state, mesh_lib.shard_batch(batch, mesh), {})
    got = jax.tree.map(lambda a, b: a - b, params0, jax.device_get(new.params))  # = the gradient
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref_g)):
      np.testing.assert_allclose(g, r, atol=2e-6, rtol=2e-4)
    assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
    assert float(metrics["tokens"]) == batch["loss_mask"].sum()


# ----------------------------------------------------------------------------- grain workers


def test_grain_worker_processes_give_the_worker_count_0_batches(tmp_path):
  """Worker processes must not change the data: compared with the in-process pipeline."""
  from ml_collections import ConfigDict
  from earlyrl_jax.data import pipeline as PL
  from earlyrl_jax.data import tokenizer as TK
  path = tmp_path / "d.jsonl"
  with open(path, "w") as f:
    for i in range(60):
      f.write(json.dumps({"text": f"document {i} " + "lorem ipsum " * (i % 9 + 1)}) + "\n")
  def make(workers):
    cfg = ConfigDict(dict(format="jsonl", train_files=str(path), text_field="text", text_split="file",
                          on_error="raise", encoding_errors="replace", min_doc_tokens=2, shuffle=True,
                          num_epochs=0, worker_count=workers))
    return iter(PL.make_lm_dataset(cfg, TK.ByteTokenizer(), seq_len=48, host_batch_size=2, seed=3))
  arrays = lambda b: {k: np.asarray(v) for k, v in b.items() if k != "stats"}
  ref = make(0)
  expected = [arrays(next(ref)) for _ in range(10)]
  workers = make(2)
  got = [arrays(next(workers)) for _ in range(6)]
  for g, e in zip(got, expected[:6]):
    assert g.keys() == e.keys()
    for k in e:
      np.testing.assert_array_equal(g[k], e[k], err_msg=k)
  # The worker iterator's state, restored into a fresh worker pipeline, continues exactly
  # where the in-process pipeline does.
  state = workers.get_state()
  resumed = make(2)
  resumed.set_state(state)
  for e in expected[6:]:
    g = arrays(next(resumed))
    for k in e:
      np.testing.assert_array_equal(g[k], e[k], err_msg=k)


# ----------------------------------------------------------------------------- checkpoints, CI


def test_checkpoint_paths_go_through_epath(tmp_path, monkeypatch):
  from etils import epath
  from earlyrl_jax.train import checkpoint as ck
  remote = ck.checkpoint_path("gs://bucket/run/checkpoints")
  assert isinstance(remote, epath.Path) and str(remote) == "gs://bucket/run/checkpoints"
  monkeypatch.chdir(tmp_path)
  local = ck.checkpoint_path("run/checkpoints")
  assert isinstance(local, epath.Path) and str(local) == str(tmp_path / "run" / "checkpoints")
  c = Checkpointer(epath.Path(tmp_path) / "ck", every_steps=1, async_save=False)
  c.save(1, {"x": np.arange(3)}, force=True)
  c.wait()
  assert c.latest_step() == 1 and (tmp_path / "ck" / "1").is_dir()
  c.close()


def test_single_process_preemption_flag(tmp_path):
  c = Checkpointer(str(tmp_path / "ck"))
  with c.watch_preemption():
    assert not c.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, does not kill the test
    time.sleep(0.05)
    assert c.reached_preemption(2)
  c.close()


def test_ci_fails_when_pytest_collects_no_tests(tmp_path):
  (tmp_path / "test_nothing_here.py").write_text("x = 1\n")
  env = dict(os.environ, CI_SKIP_INSTALL="1", CI_TESTS=str(tmp_path))
  r = subprocess.run(["bash", os.path.join(REPO, ".ci", "run")], env=env, capture_output=True, text=True)
  assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
  assert "collected no tests" in r.stderr
