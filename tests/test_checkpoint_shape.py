"""The policy's shape from its checkpoint (`model.preset='from_checkpoint'`,
earlyrl_jax/checkpoint_shape.py): filled from an HF or run directory, max_seq_len from the windows,
explicit disagreements named, rope scaling settable and unsettable from the command line."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax import configs
from earlyrl_jax.checkpoint_shape import checkpoint_model_config, resolve_model
from earlyrl_jax.models import hf_io
from earlyrl_jax.models.transformer import Transformer
from launch.jobspec import load_with_overrides
from tests.helpers import set_fields, tiny_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
SHAPE = dict(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
             max_seq_len=4096, rope_theta=100_000.0, tie_embeddings=True, norm_eps=1e-5)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random tiny Llama written as an HF directory (its config says 4096 positions)."""
  path = str(tmp_path_factory.mktemp("hf"))
  hf_io.save_pretrained(Transformer(tiny_model_config(**SHAPE), rngs=nnx.Rngs(3)), path)
  return path


def _cfg(params_from: str, **fields):
  c = configs.load_config_file(TINY)
  c.model = configs.model_section("from_checkpoint")
  c.init.params_from = params_from
  return set_fields(c, {"mode": "pretrain", "data.seq_len": 64, "data.tokenizer": "byte",
                        "data.batch_size": 8, "mesh.data": 1, **fields})


def test_shape_comes_from_an_hf_checkpoint_and_length_from_the_windows(hf_dir):
  c = _cfg(hf_dir)
  configs.validate(c, num_devices=1)
  mc = configs.model_config(c)
  for k, v in SHAPE.items():
    if k != "max_seq_len":
      assert getattr(mc, k) == v, k
  assert mc.max_seq_len == 64   # data.seq_len; not the checkpoint's 4096 positions
  assert mc.rope_scaling is None
  c = _cfg(hf_dir, mode="sip", **{"data.prefix_len": 96, "data.suffix_len": 32, "sip.candidate_len": 48})
  resolve_model(c)
  assert c.model.max_seq_len == 96 + 48      # the longest SIP row


def test_explicit_fields_that_disagree_are_named(hf_dir):
  c = _cfg(hf_dir, **{"model.n_layers": 4, "model.d_model": 64, "model.n_heads": 4})
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(c, num_devices=1)
  msg = str(e.value)
  assert "model.n_layers=4 (checkpoint: 2)" in msg and "model.d_model=64 (checkpoint: 32)" in msg
  assert "n_heads" not in msg and hf_dir in msg       # agreeing fields are fine
  c = _cfg(hf_dir, **{"model.rope_scaling": {"type": "linear", "factor": 2.0}})
  with pytest.raises(configs.ConfigError, match=r"model.rope_scaling=.*linear.*\(checkpoint: None\)"):
    configs.validate(c, num_devices=1)
  with pytest.raises(configs.ConfigError, match="exceed the checkpoint's context of 4096"):
    configs.validate(_cfg(hf_dir, **{"data.seq_len": 8192}), num_devices=1)
  with pytest.raises(configs.ConfigError, match="init.params_from, which is empty"):
    configs.validate(_cfg(""), num_devices=1)
  with pytest.raises(configs.ConfigError, match="neither a run directory"):
    configs.validate(_cfg(os.path.dirname(hf_dir)), num_devices=1)


def test_a_preset_that_differs_from_the_checkpoint_is_named_at_load(hf_dir):
  """A fixed preset (not from_checkpoint) against another checkpoint: the fields are named."""
  from earlyrl_jax.train import loop
  with pytest.raises(configs.ConfigError, match=r"model.n_layers=3 \(checkpoint: 2\)"):
    loop.load_init_params(hf_dir, tiny_model_config(**dict(SHAPE, n_layers=3)), None)


def test_rope_scaling_is_settable_and_unsettable_on_the_command_line(hf_dir):
  pretrain = os.path.join(REPO, "configs", "pretrain.py")   # the 1B preset carries llama3 scaling
  assert configs.model_config(load_with_overrides(pretrain, [])).rope_scaling["type"] == "llama3"
  off = load_with_overrides(pretrain, ["--config.model.rope_scaling={}"])
  assert configs.model_config(off).rope_scaling is None
  linear = load_with_overrides(pretrain, ["--config.model.rope_scaling.factor=8.0"])
  assert configs.model_config(linear).rope_scaling["factor"] == 8.0
  midtrain = os.path.join(REPO, "configs", "midtrain.py")
  c = load_with_overrides(midtrain, [f"--config.init.params_from={hf_dir}",
                                     "--config.model.rope_scaling={'type': 'linear', 'factor': 2.0}",
                                     "--config.model.n_layers=2"])
  assert c.model.n_layers == 2 and c.model.rope_scaling["factor"] == 2.0


def test_transformers5_config_with_rope_parameters():
  """The converted SmolLM2 config.json (transformers 5: no rope_theta, a rope_parameters dict)."""
  hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "rms_norm_eps": 9.999999747378752e-06,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        "tie_word_embeddings": True, "hidden_act": "silu"}
  mc = hf_io.model_config_from_hf(hf)
  assert (mc.rope_theta, mc.rope_scaling, mc.n_kv_heads, mc.tie_embeddings) == (100000.0, None, 3, True)
  assert mc.num_params() == 134_515_008


def test_a_run_from_a_checkpoint_is_itself_a_checkpoint(hf_dir, tmp_path, jsonl_file):
  """Pretrain 1 step from the HF directory, then start a second run from the first run's
  directory: both with the shape left to the checkpoint; the params start where they were."""
  from earlyrl_jax.train import loop
  corpus = jsonl_file([{"text": "the quick brown fox jumps over the lazy dog " * 6}] * 40)
  over = {"data.corpus": "files", "data.train_files": corpus, "num_steps": 1, "eval_every_steps": 0,
          "eval_world_prompts": 0, "log_every_steps": 1, "checkpoint.async_save": False,
          "opt.learning_rate": 1e-9, "opt.warmup_steps": 0, "mesh.data": -1}
  first = str(tmp_path / "first")
  out = loop.train(_cfg(hf_dir, **over), first)
  want = nnx.state(hf_io.load_model(hf_dir))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(out["state"].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  saved = json.load(open(os.path.join(first, "config.json")))["model"]
  assert saved["n_layers"] == 2 and saved["max_seq_len"] == 64     # complete, resolved shape
  assert checkpoint_model_config(first).d_model == 32
  out2 = loop.train(_cfg(first, **over), str(tmp_path / "second"))
  assert out2["model_config"].n_layers == 2
