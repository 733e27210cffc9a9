"""GGUF -> HF directory (models/gguf_io.py, `earlyrl-convert gguf`) against transformers' own GGUF
reader, on tiny files written here the way llama.cpp writes them: quantized tensors, Q/K permuted
for interleaved RoPE, GQA, tied or untied head, a byte-level BPE with control tokens. The real
SmolLM2 file is checked in tests/test_real_model.py."""
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers reads GGUF files only with accelerate

from earlyrl_jax.models import gguf_io, hf_io  # noqa: E402
from earlyrl_jax.tools import convert  # noqa: E402

D, F, LAYERS, HEADS, KV, HD = 64, 96, 2, 4, 2, 16
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
            "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}"
            "{% endif %}")
TEXTS = ["Hello world, hello there.", "the 2024 heat: 31.5 degrees\n\nand  spaces",
         "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"]


def _llama_cpp_permute(w, n_head):
  """convert_hf_to_gguf.py's `permute` (what our converter must undo)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab():
  """A byte-level BPE: control tokens, the 256 byte symbols, and merges learnt on a few words."""
  from tokenizers.pre_tokenizers import ByteLevel
  alphabet = ByteLevel.alphabet()
  tokens = CONTROL + sorted(alphabet)
  merges = []
  for word in ("Ġhello", "Ġworld", "Ġthe", "Ġthere", "he", "ll", "er"):
    parts = list(word)
    while len(parts) > 1:
      a, b = parts[0], parts[1]
      if f"{a} {b}" not in merges:
        merges.append(f"{a} {b}")
      if a + b not in tokens:
        tokens.append(a + b)
      parts = [a + b] + parts[2:]
  return tokens, merges


def write_gguf(path, *, tied: bool, pre: str = "smollm", arch: str = "llama", seed: int = 0):
  """A llama.cpp-style GGUF of a random tiny Llama; returns the HF-layout weights it encodes."""
  rng = np.random.default_rng(seed)
  tokens, merges = _vocab()
  V = len(tokens) + (-len(tokens)) % 32   # Q8_0 blocks of 32 along D; V rows are free
  tokens += [f"[PAD{i}]" for i in range(V - len(tokens))]
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(LAYERS)
  w.add_context_length(512)
  w.add_embedding_length(D)
  w.add_feed_forward_length(F)
  w.add_head_count(HEADS)
  w.add_head_count_kv(KV)
  w.add_rope_freq_base(50_000.0)
  w.add_rope_dimension_count(HD)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types([3 if t in CONTROL else 1 for t in tokens])
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_add_bos_token(False)
  w.add_chat_template(TEMPLATE)
  hf = {}

  def put(gname, hname, x, quantize=True):
    hf[hname] = x
    stored = x
    if gname.endswith("attn_q.weight"):
      stored = _llama_cpp_permute(x, HEADS)
    elif gname.endswith("attn_k.weight"):
      stored = _llama_cpp_permute(x, KV)
    if quantize and x.ndim == 2:
      q = gguf.quants.quantize(stored.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
      hf[hname] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(x.shape)
      if gname.endswith("attn_q.weight"):   # what the file encodes, in HF layout
        hf[hname] = gguf_io._unpermute(hf[hname], HEADS)
      elif gname.endswith("attn_k.weight"):
        hf[hname] = gguf_io._unpermute(hf[hname], KV)
      w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(gname, stored.astype(np.float32))

  r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  put("token_embd.weight", "model.embed_tokens.weight", r(V, D))
  put("output_norm.weight", "model.norm.weight", 1 + r(D))
  if not tied:
    put("output.weight", "lm_head.weight", r(V, D))
  for i in range(LAYERS):
    b = f"blk.{i}."
    h = f"model.layers.{i}."
    put(b + "attn_norm.weight", h + "input_layernorm.weight", 1 + r(D))
    put(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", 1 + r(D))
    put(b + "attn_q.weight", h + "self_attn.q_proj.weight", r(HEADS * HD, D))
    put(b + "attn_k.weight", h + "self_attn.k_proj.weight", r(KV * HD, D))
    put(b + "attn_v.weight", h + "self_attn.v_proj.weight", r(KV * HD, D))
    put(b + "attn_output.weight", h + "self_attn.o_proj.weight", r(D, HEADS * HD))
    put(b + "ffn_gate.weight", h + "mlp.gate_proj.weight", r(F, D))
    put(b + "ffn_up.weight", h + "mlp.up_proj.weight", r(F, D))
    put(b + "ffn_down.weight", h + "mlp.down_proj.weight", r(D, F))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return hf


def _hf_from_gguf(path):
  d, f = os.path.split(str(path))
  model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
  return model, transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)


def _logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("tied", [True, False])
def test_converted_model_matches_transformers_reading_the_gguf(tmp_path, tied):
  src = tmp_path / "m.gguf"
  written = write_gguf(src, tied=tied)
  dst = str(tmp_path / "hf")
  convert.main(["gguf", f"--src={src}", f"--dst={dst}"])
  cfg = json.load(open(os.path.join(dst, "config.json")))
  assert cfg["tie_word_embeddings"] is tied and cfg["num_key_value_heads"] == KV
  assert os.path.isfile(os.path.join(dst, "chat_template.jinja"))

  # Tensors: exactly the HF-layout weights the file encodes (the Q/K permutation undone).
  from safetensors import safe_open
  with safe_open(os.path.join(dst, "model.safetensors"), "np") as f:
    assert set(f.keys()) == set(written)
    for k in written:
      np.testing.assert_allclose(f.get_tensor(k), written[k], atol=1e-6, err_msg=k)

  # Logits: transformers reading our directory = transformers reading the GGUF = our JAX loader.
  ref, ref_tok = _hf_from_gguf(src)
  ours_hf = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
  ours_tok = transformers.AutoTokenizer.from_pretrained(dst)
  import jax.numpy as jnp
  jax_model = hf_io.load_model(dst)
  for text in TEXTS:
    ids = ref_tok(text)["input_ids"]
    assert ours_tok(text)["input_ids"] == ids, text
    want = _logits(ref, ids)
    np.testing.assert_allclose(_logits(ours_hf, ids), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax_model(jnp.asarray([ids])))[0], want, atol=1e-4)


def test_a_wrong_permutation_would_be_caught(tmp_path):
  """The check above is not vacuous: skipping the un-permute changes the logits."""
  src = tmp_path / "m.gguf"
  write_gguf(src, tied=True)
  ref, tok = _hf_from_gguf(src)
  dst = str(tmp_path / "hf")
  original = gguf_io._unpermute
  try:
    gguf_io._unpermute = lambda w, n: w
    gguf_io.convert_gguf(str(src), dst)
  finally:
    gguf_io._unpermute = original
  wrong = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
  ids = tok(TEXTS[0])["input_ids"]
  assert np.abs(_logits(wrong, ids) - _logits(ref, ids)).max() > 1e-2


@pytest.mark.parametrize("pre", ["smollm", "gpt2", "llama-bpe"])
def test_tokenizer_ids_equal_transformers_gguf_tokenizer(tmp_path, pre):
  src = tmp_path / "m.gguf"
  write_gguf(src, tied=True, pre=pre)
  dst = str(tmp_path / "hf")
  gguf_io.convert_gguf(str(src), dst)
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
  ours = transformers.AutoTokenizer.from_pretrained(dst)
  from earlyrl_jax.data.tokenizer import HFTokenizer
  mine = HFTokenizer(dst)
  for text in TEXTS + ["x 12345 y", "don't STOP  \n\n  ok"]:
    ids = ref(text)["input_ids"]
    assert ours(text)["input_ids"] == ids, (pre, text)
    assert mine.encode(text) == ids and mine.decode(ids) == text.replace("<|im_start|>", "").replace(
        "<|im_end|>", "")
  assert (mine.bos_id, mine.eos_id, mine.pad_id) == (1, 2, 2)


def test_unsupported_files_are_named(tmp_path):
  src = tmp_path / "m.gguf"
  write_gguf(src, tied=True, arch="gemma")
  with pytest.raises(gguf_io.GGUFError, match="general.architecture='gemma'"):
    gguf_io.convert_gguf(str(src), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "config.json")
  write_gguf(src, tied=True, pre="falcon")
  with pytest.raises(gguf_io.GGUFError, match="tokenizer.ggml.pre='falcon'"):
    gguf_io.convert_gguf(str(src), str(tmp_path / "out"))
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(SystemExit, match="bad.gguf: not a readable GGUF file"):
    convert.main(["gguf", f"--src={bad}", f"--dst={tmp_path / 'o2'}"])
  with pytest.raises(SystemExit, match="no such file"):
    convert.main(["gguf", f"--src={tmp_path / 'missing.gguf'}", f"--dst={tmp_path / 'o3'}"])
