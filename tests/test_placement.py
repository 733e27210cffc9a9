"""Teacher placement on 8 simulated devices: the policy on some devices, the teacher on the
others ('submesh'), a SIP run end to end in that layout, and clear errors for layouts that
do not fit."""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.rewrite_job import sip_rewriter
from earlyrl_jax.teacher_setup import load_teacher_for
from earlyrl_jax.train import loop, sip
from tests.helpers import tiny_model_config


def _cfg(**kw):
  from tests.test_sip import _sip_cfg
  return _sip_cfg(**kw)


def _submesh(**kw):
  return _cfg(**{"teacher.placement": "submesh", "teacher.devices": 4, **kw})


# ------------------------------------------------------------------ the split


def test_split_gives_the_last_devices_to_the_teacher():
  devs = jax.devices()
  policy, teacher = mesh_lib.split_devices(2, devs)
  assert policy == devs[:6] and teacher == devs[6:]
  assert mesh_lib.placement_devices(None) == (None, None)
  assert mesh_lib.placement_devices(_cfg().teacher) == (None, None)  # 'shared' (the default)
  policy, teacher = mesh_lib.placement_devices(_submesh().teacher)
  assert policy == devs[:4] and teacher == devs[4:]
  for bad in (0, 8, 9):
    with pytest.raises(mesh_lib.MeshConfigError, match="teacher.devices"):
      mesh_lib.split_devices(bad, devs)


def test_multi_host_split_takes_an_equal_share_of_every_host():
  class Dev:  # what split_devices reads of a device
    def __init__(self, i, p):
      self.id, self.process_index = i, p

    def __repr__(self):
      return f"d{self.id}@{self.process_index}"
  devs = [Dev(i, i // 4) for i in range(8)]  # 2 hosts x 4 devices
  policy, teacher = mesh_lib.split_devices(2, devs)
  assert [d.id for d in policy] == [0, 1, 2, 4, 5, 6] and [d.id for d in teacher] == [3, 7]
  with pytest.raises(mesh_lib.MeshConfigError, match="multiple of the 2 processes"):
    mesh_lib.split_devices(3, devs)
  with pytest.raises(mesh_lib.MeshConfigError, match="same number of devices"):
    mesh_lib.split_devices(2, devs[:7])


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("overrides, field, match", [
    ({"teacher.placement": "sub_mesh"}, "teacher.placement", "not one of"),
    ({"teacher.placement": "submesh", "teacher.devices": 0}, "teacher.devices", ">= 1"),
    ({"teacher.placement": "submesh", "teacher.devices": 8}, "teacher.devices", "leaves the policy none"),
    ({"teacher.placement": "submesh", "teacher.devices": 2, "teacher.mesh.data": 4},
     "teacher.mesh", "needs 4 devices but 2"),
    ({"teacher.placement": "submesh", "teacher.devices": 2, "mesh.data": 8},
     "mesh", "the 6 devices that teacher.devices=2 leaves"),
    ({"teacher.placement": "submesh", "teacher.devices": 2},  # 6 policy devices
     "data.batch_size", "divisible by the data-parallel size 6"),
])
def test_layouts_that_do_not_fit_name_the_field(overrides, field, match):
  cfg = _cfg(**overrides)
  with pytest.raises(configs.ConfigError, match=match) as e:
    configs.validate(cfg)
  assert str(e.value).startswith(field), str(e.value)


def test_teacher_devices_must_split_evenly_over_hosts():
  cfg = _cfg(**{"teacher.placement": "submesh", "teacher.devices": 3, "data.batch_size": 10})
  with pytest.raises(configs.ConfigError, match="multiple of the 2 processes"):
    configs.validate(cfg, num_devices=8, process_count=2)
  configs.validate(_submesh(), num_devices=8, process_count=2)  # 2 teacher devices per host


# ------------------------------------------------------------------ a SIP run on the split


def write_tiny_teacher(root: str, judge_format: str = "pairwise") -> str:
  """A tiny embedded-format teacher in ROOT/teacher (random weights: its verdicts are noise,
  its costs real); returns its directory."""
  from flax import nnx
  from earlyrl_jax import world as W
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.teacher.prompts import markup as P
  from earlyrl_jax.teacher import teacher as T
  from earlyrl_jax.embedded import data as D
  wcfg = W.default_world_config()
  texts = [d.text for d in W.generate_documents(W.build_kb(wcfg), wcfg, "t", 120, clean=True)]
  tok_path = D.train_tokenizer(texts + [P.pair_prompt("p", "a", "b", "quality")] * 5,
                                os.path.join(root, "tokenizer.model"), 400)
  sp = SentencePieceTokenizer(tok_path)
  mc = tiny_model_config(vocab_size=sp.vocab_size, max_seq_len=256)
  graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  path = os.path.join(root, "teacher")
  T.save_teacher(path, T.Teacher(graphdef, params, sp, mc, None, P.PromptLimits(60, 60, 60)), "test",
                 {"judge_format": judge_format})
  shutil.copy(tok_path, os.path.join(path, T.TOKENIZER_FILE))
  return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return write_tiny_teacher(str(tmp_path_factory.mktemp("teacher")))


def _device_ids(tree) -> set[int]:
  return {d.id for x in jax.tree.leaves(tree) for d in x.sharding.device_set}


def _setup(tmp_path, teacher_dir, **kw):
  cfg = _submesh(**{"num_steps": 2, "checkpoint.every_steps": 2, "sip.judge": "teacher",
                    "sip.rewrite": "online", "sip.judge_scheme": "pivot", "sip.num_rollouts": 2,
                    "teacher.path": teacher_dir, "teacher.mesh.data": 2, "teacher.mesh.fsdp": 2,
                    "data.batch_size": 4, **kw})
  workdir = str(tmp_path / "run")
  run = loop.setup(cfg, workdir)
  return workdir, run, load_teacher_for(cfg, workdir, run.mesh)


def test_policy_and_teacher_params_live_on_their_own_devices(tmp_path, teacher_dir):
  _, run, teacher = _setup(tmp_path, teacher_dir)
  assert dict(run.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 1}
  assert dict(teacher.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}
  assert _device_ids(teacher.params) == {4, 5, 6, 7}
  emb = teacher.params["embed"][...]  # [vocab, embed]: embed split over the teacher's fsdp axis
  assert emb.sharding.shard_shape(emb.shape) == (emb.shape[0], emb.shape[1] // 2)
  state = loop.initial_state(run, seed=0)
  assert _device_ids(state.params) == {0, 1, 2, 3}
  assert _device_ids(state.opt_state) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_sip_steps_with_the_teacher_on_its_own_sub_mesh(tmp_path, teacher_dir):
  """Rollouts on the policy's 4 devices, rewrites and LM judging on the teacher's 4, two updates."""
  workdir, run, teacher = _setup(tmp_path, teacher_dir)
  out = loop.train_loop(run, sip.sip_job(run, teacher, sip_rewriter(run, teacher)))
  assert _device_ids(out["state"].params) == {0, 1, 2, 3}
  assert _device_ids(teacher.params) == {4, 5, 6, 7}
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2]
  last = lines[-1]
  assert last["sip/judge_calls"] > 0 and last["time/rewrite"] > 0 and np.isfinite(last["loss"])
  shares = sum(last[f"sip/win_share_{s}"] for s in sip.SOURCES) + last["sip/all_tied_frac"]
  assert shares == pytest.approx(1.0)


def test_a_scored_teacher_judges_each_candidate_once_per_axis_in_a_sip_step(tmp_path):
  """The saved judge_format reaches SIP: C rows per pairwise axis (+ C for safety) per window,
  where pivot in both orders asks 4(C-1) + C, and no candidate order to disagree on."""
  (tmp_path / "scored").mkdir()
  path = write_tiny_teacher(str(tmp_path / "scored"), judge_format="scored")
  workdir, run, teacher = _setup(tmp_path, path, num_steps=1)
  assert teacher.judge().judge_format == "scored"
  loop.train_loop(run, sip.sip_job(run, teacher, sip_rewriter(run, teacher)))
  last = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  windows, C = 4, 2 + 2
  assert 0 < last["sip/judge_calls"] <= windows * C * 3 < windows * (4 * (C - 1) + C)
  assert last["sip/position_consistency"] == 1.0


def test_teacher_shape_must_split_over_its_mesh(tmp_path, teacher_dir):
  """The tiny teacher has 2 kv heads: tensor=4 cannot split them (said before any weight is read)."""
  cfg = _submesh(**{"teacher.path": teacher_dir, "teacher.mesh.data": 1, "teacher.mesh.tensor": 4})
  mesh = mesh_lib.make_mesh((-1, 1, 1), jax.devices()[:4])
  with pytest.raises(configs.ConfigError, match=r"teacher.mesh.tensor=4: .* n_kv_heads=2"):
    load_teacher_for(cfg, str(tmp_path), mesh)
