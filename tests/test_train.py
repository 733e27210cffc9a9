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
import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import loop
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_WORLD = {"world.num_train_documents": 300, "world.num_eval_documents": 20,
               "world.num_preference_pairs": 10, "world.num_rewrite_examples": 10,
               "world.num_factual_probes": 10, "world.num_unsafe_bait": 6}


def tiny_cfg(**overrides):
  from configs import tiny  # noqa: the repository's configs/ directory
  cfg = tiny.get_config()
  base = {"num_steps": 20, "log_every_steps": 5, "eval_every_steps": 0, "checkpoint.every_steps": 5,
          "eval_world_prompts": 0,
          "data.tokenizer": "byte", "model.vocab_size": 384, "data.batch_size": 8, "data.seq_len": 64,
          **SMALL_WORLD}
  base.update(overrides)
  for k, v in base.items():
    node = cfg
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return cfg





def _final_params(workdir, step):
  _, params, _ = loop.load_params(workdir, step=step)
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


CLI_ARGS = ["--config.num_steps=60", "--config.eval_world_prompts=0", "--config.checkpoint.every_steps=5", "--config.log_every_steps=5",
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
