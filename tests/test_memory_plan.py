"""benchmarks/memory.py: the per-device plan agrees with real sharded arrays, and its verdict line
parses and flips when the run cannot fit."""
from __future__ import annotations

import math
import os
import re

import jax
import pytest

from benchmarks import memory
from earlyrl_jax import configs
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import state as state_lib
from tests.helpers import cpu_devices, tiny_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST = re.compile(r"^memory: per_device_gib=(\d+\.\d+) fits=(true|false)$")


def _bytes_on(tree, device) -> int:
  """Bytes of `tree`'s shards that live on `device` (what that device really holds)."""
  return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
             if s.device == device)


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_state_bytes_equal_a_real_sharded_state(shape):
  # The plan's exact part: shapes x shardings must be what init_train_state (the loop's
  # initial_state) really puts on a device, for FSDP and for data x fsdp x tensor.
  mc = tiny_model_config()
  opt = configs.load_config_file(os.path.join(REPO, "configs", "tiny.py")).opt
  tx = state_lib.make_optimizer(opt, 10)
  mesh = mesh_lib.make_mesh(shape, cpu_devices(8))
  planned = memory.state_bytes(mc, tx, mesh)
  _, state, _ = state_lib.init_train_state(mc, tx, mesh, seed=0)
  dev0 = mesh.devices.flat[0]
  assert planned["params"] == _bytes_on(state.params, dev0)
  assert planned["opt_state"] == _bytes_on(state.opt_state, dev0)
  assert planned["step_rng"] == _bytes_on((state.step, state.rng), dev0)
  # Sharding really splits: FSDP x tensor leave each device a fraction of the f32 params.
  assert planned["params"] < 4 * mc.num_params() / (shape[1] * shape[2]) * 1.1


def _run(capsys, *argv):
  p = memory.main(["--quick", *argv])
  lines = capsys.readouterr().out.strip().splitlines()
  return p, lines


def test_quick_plan_prints_the_table_and_a_parsable_verdict(capsys):
  p, lines = _run(capsys, "--measure=none")
  m = LAST.match(lines[-1])
  assert m, lines[-1]
  assert m.group(2) == "true" and float(m.group(1)) == pytest.approx(p["peak"] / memory.GiB, abs=0.01)
  # The other target's verdict comes before the final line, --target's just above it.
  assert lines[-3].startswith("memory: target=tpu_v5p ") and lines[-2].startswith("memory: target=h100_80gb ")
  names = [ln.name for ln in p["lines"]]
  for want in ("params", "optimizer state", "DPO reference", "teacher params", "rollout KV cache",
               "judge KV cache", "rewrite KV cache"):
    assert any(n.startswith(want) for n in names), (want, names)
  # The rollout cache is the sampler's layout: windows padded to dp, x K, prompt + decode buckets.
  mc, cfg = p["mc"], p["cfg"]
  roll = p["roll"]
  assert (roll.prompts, roll.samples, roll.prompt_len, roll.new_tokens) == (16, 4, 64, 32)
  per_token = 2 * mc.n_layers * mc.n_kv_heads * mc.head_dim * 4 + 4  # k, v (f32) + segment id
  kv = next(ln.bytes for ln in p["lines"] if ln.name == "rollout KV cache")
  assert kv == 16 * 4 // 8 * (64 + 32) * per_token
  assert cfg.sip.num_rollouts == 4


def test_fits_flips_for_a_tiny_device_or_a_huge_model(capsys):
  _, lines = _run(capsys, "--measure=none", "--capacity_gib=0.0001")
  assert LAST.match(lines[-1]).group(2) == "false"
  assert "fits=true" in lines[-3]  # the other target still fits: only --target's capacity changed
  p, lines = _run(capsys, "--measure=none", "--set=model.d_model=16384", "--set=model.d_ff=65536",
                  "--set=model.n_layers=32")
  m = LAST.match(lines[-1])
  assert m.group(2) == "false" and float(m.group(1)) > 100
  assert p["mc"].num_params() > 1e11


def test_bad_flags_name_themselves():
  with pytest.raises(memory.PlanError, match="--mesh"):
    memory.parse_mesh("fsdp=-1")
  with pytest.raises(memory.PlanError, match="model.nope"):
    memory.main(["--quick", "--measure=none", "--set=model.nope=3"])


@pytest.mark.slow
def test_quick_plan_compiles_the_step_and_samplers(capsys):
  # The measured part: compiled step and sampler programs at one proxy layer; the compiled
  # step's arguments must equal the planned state + reference (+ the batch it reads).
  p, lines = _run(capsys, "--layers=1")
  assert LAST.match(lines[-1]).group(2) == "true"
  assert any("check at 1 layer(s)" in ln and ln.endswith("agree") for ln in lines), lines
  acts = next(ln for ln in p["lines"] if ln.name.startswith("train-step activations"))
  assert acts.bytes > 0
  for label in ("rollout", "judge", "rewrite"):
    assert next(ln for ln in p["lines"] if ln.name == f"{label} prefill/decode buffers").bytes > 0
  assert math.isfinite(p["peak"])


def test_a_served_teacher_leaves_only_the_policy_on_the_mesh(capsys):
  local, _ = _run(capsys, "--measure=none")
  served, lines = _run(capsys, "--measure=none", "--teacher_backend=openai")
  names = [ln.name for ln in served["lines"]]
  assert not any(n.startswith(("teacher params", "judge", "rewrite")) for n in names), names
  assert any(n.startswith("rollout KV cache") for n in names)
  policy = sum(ln.bytes for ln in local["lines"] if not ln.name.startswith(("teacher", "judge",
                                                                            "rewrite")))
  assert served["peak"] < local["peak"] and served["peak"] <= policy
  assert "served over HTTP" in lines[0]


def test_midtrain_plans_from_the_checkpoint_shape_of_a_preset(capsys):
  """configs/midtrain.py takes its shape from the checkpoint; the plan takes --policy's."""
  p = memory.main(["--measure=none", "--mesh=fsdp=8", "--policy=1b", "--teacher_backend=openai"])
  capsys.readouterr()
  assert p["mc"].num_params() == 1_235_814_400 and p["mc"].max_seq_len == 2048
