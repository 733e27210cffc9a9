"""configs/midtrain.py (the paper's setting at pod scale) builds: config, shardings and the
whole online-DPO step (the reference's log-probs as batch fields), abstractly on 8 simulated devices.
The policy's shape comes from the checkpoint's config.json (Llama-3.2-1B's, written here: no weights
needed)."""
import json
import os
from types import SimpleNamespace

import jax
import pytest

from earlyrl_jax import configs
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import sip
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train import steps as steps_lib
from tests.helpers import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Llama-3.2-1B's config.json as transformers 5 writes it (rope parameters in one dict).
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  ckpt = tmp_path_factory.mktemp("Llama-3.2-1B")
  (ckpt / "config.json").write_text(json.dumps(LLAMA_32_1B))
  c = configs.load_config_file(os.path.join(REPO, "configs", "midtrain.py"))
  # Required on the command line (see the config's docstring).
  c.init.params_from = str(ckpt)
  c.data.train_files = "/data/corpus/*.jsonl"
  c.data.tokenizer_path = "/models/Llama-3.2-1B/tokenizer.json"
  configs.validate(c, num_devices=256, process_count=32)  # e.g. a 256-chip slice, 32 hosts
  return c


def test_midtrain_is_the_papers_setting(cfg):
  assert (cfg.data.suffix_len, cfg.sip.num_rollouts, cfg.data.batch_size) == (128, 16, 256)
  assert cfg.data.prefix_len + cfg.data.suffix_len == 2048
  assert cfg.sip.recipe == "dpo" and cfg.opt.learning_rate == 5e-6 and cfg.num_steps == 2000
  mc = configs.model_config(cfg)
  assert mc.num_params() == 1_235_814_400  # Llama-3.2-1B shape, from its config.json
  assert mc.max_seq_len == 2048 and mc.rope_scaling["factor"] == 32.0  # windows, not 131072
  assert (mc.dtype, mc.remat) == ("bfloat16", True)


def test_midtrain_step_builds_abstractly_on_8_devices(cfg):
  mc = configs.model_config(cfg)
  mesh = mesh_lib.make_mesh((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor), cpu_devices(8))
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  graphdef, abs_state, shardings = state_lib.abstract_train_state(mc, tx, mesh)
  objective = sip.objective_from_config(cfg.sip)
  assert objective.needs_reference
  # The SIP batch of one step: one row per window, the 1920-token prefix once and chosen and
  # rejected after it (no lm branch: lm_coef=0), and the reference's log-probs of that row.
  layout = sip.window_layout(cfg, objective)
  producer = SimpleNamespace(layout=layout, C=1 + cfg.sip.num_rollouts, objective=objective)
  spec = sip.batch_spec(producer, cfg.data.batch_size)
  assert spec["tokens"].shape == (256, 1919 + 2 * 129) and spec["pair_mask"].shape == (256,)
  assert spec["ref_logp"].shape == (256, layout.reference_length) and layout.lm_len == 0
  step = steps_lib.make_train_step(graphdef, tx, state_lib.lr_schedule(cfg.opt, cfg.num_steps), mesh,
                                   shardings, spec, loss_fn=objective, coefs=objective.coefs)
  with jax.set_mesh(mesh):
    new_state, metrics = jax.eval_shape(step, abs_state, spec, {})
  assert jax.tree.map(lambda a: a.shape, new_state.params) == jax.tree.map(lambda a: a.shape,
                                                                            abs_state.params)
  for k in ("loss", "dpo", "rewards/margin", "rewards/accuracy", "kl", "params_finite"):
    assert metrics[k].shape == ()
  # FSDP over all 8 devices: the embedding's d_model axis is split 8 ways.
  emb = shardings.params["embed"]
  assert emb.spec[1] == "fsdp" and mesh.shape["fsdp"] == 8
