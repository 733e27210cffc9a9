"""HF interop: logits parity with transformers, greedy generation parity, export round trip,
sharded loading, converter, tokenizers and errors. Tiny random models are made here."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from earlyrl_jax.models import hf_io  # noqa: E402
from earlyrl_jax.tools import convert  # noqa: E402
from earlyrl_jax.parallel import mesh as mesh_lib  # noqa: E402
from earlyrl_jax.sampling.sampler import Sampler  # noqa: E402
from tests.helpers import cpu_devices  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
SMALL = dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

CASES = {
    "llama_gqa_rope_scaling": ("LlamaConfig", "LlamaForCausalLM",
                               dict(SMALL, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)),
    "llama_tied_linear_rope": ("LlamaConfig", "LlamaForCausalLM",
                               dict(SMALL, tie_word_embeddings=True, num_key_value_heads=4,
                                    rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(SMALL, sliding_window=None)),
    "qwen2_tied_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, tie_word_embeddings=True)),
}


def make_hf(tmp_path, case, dtype=torch.float32):
  cfg_cls, model_cls, kw = CASES[case]
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:  # HF initialises these to 0/1; make them count
        p.copy_(p + torch.randn_like(p) * 0.3)
  model = model.to(dtype)
  path = str(tmp_path / case)
  model.save_pretrained(path)
  return model.float(), path


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.float().numpy()


TOKENS = np.random.default_rng(0).integers(0, 160, (2, 48))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_parity(tmp_path, case):
  ref_model, path = make_hf(tmp_path, case)
  ours = hf_io.load_model(path)
  diff = np.abs(np.asarray(ours(jnp.asarray(TOKENS))) - hf_logits(ref_model, TOKENS)).max()
  assert diff <= 1e-4, diff


def test_bfloat16_checkpoint_is_converted_and_stated(tmp_path, capsys):
  ref_model, path = make_hf(tmp_path, "llama_gqa_rope_scaling", dtype=torch.bfloat16)
  ours = hf_io.load_model(path)
  assert "converting bfloat16 checkpoint tensors to float32" in capsys.readouterr().out
  assert ours.embed[...].dtype == jnp.float32
  diff = np.abs(np.asarray(ours(jnp.asarray(TOKENS))) - hf_logits(ref_model, TOKENS)).max()
  assert diff <= 1e-4, diff
  bf = hf_io.load_model(path, dtype="bfloat16")
  assert bf.embed[...].dtype == jnp.bfloat16


def test_greedy_generation_matches_transformers_generate(tmp_path):
  ref_model, path = make_hf(tmp_path, "llama_gqa_rope_scaling")
  ours = hf_io.load_model(path)
  prompts = [[5, 9, 13, 2, 7], [3, 3, 8]]
  out = Sampler(ours)(prompts, max_new_tokens=32, key=jax.random.key(0), temperature=0.0)
  for i, p in enumerate(prompts):
    with torch.no_grad():
      ref = ref_model.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
    assert out.tokens[i].tolist() == ref


@pytest.mark.parametrize("case", ["llama_gqa_rope_scaling", "qwen2_tied_bias"])
def test_export_round_trip(tmp_path, case):
  ref_model, path = make_hf(tmp_path, case)
  ours = hf_io.load_model(path)
  out = str(tmp_path / "exported")
  hf_io.save_pretrained(ours, out)
  cls = getattr(transformers, CASES[case][1])
  reloaded = cls.from_pretrained(out).eval()
  np.testing.assert_allclose(hf_logits(reloaded, TOKENS), hf_logits(ref_model, TOKENS), atol=1e-5)


def test_sharded_export_and_load(tmp_path):
  _, path = make_hf(tmp_path, "llama_gqa_rope_scaling")
  ours = hf_io.load_model(path)
  out = str(tmp_path / "sharded")
  hf_io.save_pretrained(ours, out, max_shard_bytes=40_000)
  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  assert len(set(index["weight_map"].values())) > 2
  again = hf_io.load_model(out)
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(TOKENS))), np.asarray(ours(jnp.asarray(TOKENS))))


def test_sharded_load_on_8_devices_equals_unsharded(tmp_path):
  _, path = make_hf(tmp_path, "qwen2_tied_bias")
  single = hf_io.load_model(path)
  mesh = mesh_lib.make_mesh((2, 2, 2), cpu_devices(8))
  sharded = hf_io.load_model(path, mesh=mesh)
  q = sharded.blocks[0].attn.q[...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (32, 2, 16)  # only this device's block was read
  for a, b in zip(jax.tree.leaves(jax.device_get(__import__("flax").nnx.state(sharded))),
                  jax.tree.leaves(jax.device_get(__import__("flax").nnx.state(single)))):
    np.testing.assert_array_equal(a, b)
  with jax.set_mesh(mesh):
    logits = jax.jit(lambda m, t: m(t))(sharded, jnp.asarray(TOKENS))
  np.testing.assert_allclose(logits, single(jnp.asarray(TOKENS)), atol=1e-5)


def test_converter_round_trip(tmp_path):
  ref_model, path = make_hf(tmp_path, "qwen2_tied_bias")
  orbax_dir, hf_dir = str(tmp_path / "orbax"), str(tmp_path / "back")
  convert.main(["hf2orbax", "--src", path, "--dst", orbax_dir])
  convert.main(["orbax2hf", "--src", orbax_dir, "--dst", hf_dir])
  restored, _ = convert.load_orbax(orbax_dir, mesh=mesh_lib.make_mesh((4, 2, 1), cpu_devices(8)))
  np.testing.assert_allclose(np.asarray(restored(jnp.asarray(TOKENS))), hf_logits(ref_model, TOKENS), atol=1e-4)
  back = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir).eval()
  np.testing.assert_allclose(hf_logits(back, TOKENS), hf_logits(ref_model, TOKENS), atol=1e-5)


def test_tokenizers_and_chat_template(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([f"the capital of place {i} is city {i % 5}" for i in range(200)], trainer)
  from tokenizers import decoders
  tok.decoder = decoders.ByteLevel()
  d = tmp_path / "tok"
  d.mkdir()
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
      "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"}))
  from earlyrl_jax.data.tokenizer import HFTokenizer
  t = HFTokenizer(str(d))
  assert (t.pad_id, t.bos_id, t.eos_id) == (0, 1, 2)
  assert t.decode(t.encode("the capital of place 7")) == "the capital of place 7"
  chat = t.apply_chat_template([{"role": "user", "content": "Judge this."}])
  assert chat == "<|user|>Judge this.</s><|assistant|>"
  # Templates ship with downloaded files: they render in a sandbox that refuses Python internals
  # and mutation of the messages.
  for bad in ("{{ messages.__class__.__mro__[1].__subclasses__() }}",
              "{% set _ = messages.append({'role': 'x'}) %}{{ messages | length }}",
              "{{ ''.__class__.__base__.__subclasses__() }}"):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=bad)))
    with pytest.raises(ValueError, match="chat_template"):
      HFTokenizer(str(d)).apply_chat_template([{"role": "user", "content": "hi"}])


def test_safetensors_reads_bfloat16_lazily_by_slice(tmp_path):
  import ml_dtypes
  from earlyrl_jax.models import safetensors_io as st
  x = (np.arange(6 * 8, dtype=np.float32).reshape(6, 8) / 7).astype(ml_dtypes.bfloat16)
  path = str(tmp_path / "model.safetensors")
  st.save_file({"w": x, "b": np.arange(3, dtype=np.int64)}, path, {"format": "pt"})
  f = st.SafetensorsFile(path)
  assert sorted(f.keys()) == ["b", "w"] and f.metadata == {"format": "pt"}
  w = f.get("w")
  assert w.shape == (6, 8) and w.dtype == np.dtype(ml_dtypes.bfloat16)
  block = w[2:4, 1:5]
  assert block.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(block, x[2:4, 1:5])
  np.testing.assert_array_equal(np.asarray(w), x)
  # Written files are read by the reference implementation (and so by transformers).
  from safetensors.numpy import load_file
  np.testing.assert_array_equal(load_file(path)["w"], x)
  (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
  with pytest.raises(ValueError, match="junk.safetensors"):
    st.SafetensorsFile(str(tmp_path / "junk.safetensors"))


def test_errors_name_the_problem(tmp_path):
  _, path = make_hf(tmp_path, "llama_gqa_rope_scaling")
  cfg = json.load(open(os.path.join(path, "config.json")))
  bad = dict(cfg, model_type="gpt2")
  with pytest.raises(hf_io.UnsupportedCheckpointError, match="model_type 'gpt2'"):
    hf_io.model_config_from_hf(bad)
  with pytest.raises(hf_io.UnsupportedCheckpointError, match="rope_scaling type 'yarn'"):
    hf_io.model_config_from_hf(dict(cfg, rope_parameters=None, rope_scaling={"rope_type": "yarn", "factor": 2}))
  # Shape mismatch names the tensor and both shapes.
  json.dump(dict(cfg, intermediate_size=96), open(os.path.join(path, "config.json"), "w"))
  with pytest.raises(ValueError, match=r"down_proj.weight' has shape \(64, 128\) but config.json implies \(64, 96\)"):
    hf_io.load_model(path)
  # Missing tensor.
  json.dump(dict(cfg, num_hidden_layers=3), open(os.path.join(path, "config.json"), "w"))
  with pytest.raises(ValueError, match=r"missing tensor 'model.layers.2"):
    hf_io.load_model(path)
  # Pickle checkpoints are refused.
  pk = tmp_path / "pickled"
  pk.mkdir()
  (pk / "config.json").write_text(json.dumps(cfg))
  (pk / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(ValueError, match="pickle"):
    hf_io.load_model(str(pk))
