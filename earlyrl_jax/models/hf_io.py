"""Hugging Face checkpoints <-> earlyrl_jax models (Llama 2/3/3.x, Mistral, Qwen2/2.5).

    model = load_model("/ckpt/Llama-3.2-1B", mesh=mesh)
    logits = model(tokens)                      # [batch, seq] -> [batch, seq, vocab]
    save_pretrained(model, "/out/my-model")

Loading reads safetensors lazily (the `safetensors` package memory-maps the file;
`get_slice` reads one block) and builds every parameter with
`jax.make_array_from_callback`, so each device receives only its own shard, read
straight from the file: an 8B model never needs a full host copy per device.
One table (`hf_name`) maps our parameter paths to HF tensor names and layouts
and serves both directions.

Layouts: HF stores Linear weights as [out, in]; we store [in, out] with heads
split out, e.g. q_proj [N*H, D] -> q [D, N, H] and o_proj [D, N*H] -> o [N, H, D].
HF's rotate-half RoPE is the layout our RoPE uses, so no permutation is needed.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.errors import CheckpointError
from earlyrl_jax.models.safetensors_io import CheckpointReader, read_json, save_sharded
from earlyrl_jax.models.transformer import ModelConfig, Transformer, split_abstract
from earlyrl_jax.parallel import mesh as mesh_lib

SUPPORTED = ("llama", "mistral", "qwen2")
_IGNORED_TENSORS = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


class UnsupportedCheckpointError(CheckpointError):
  """The checkpoint uses an architecture or field earlyrl_jax does not implement."""


# --------------------------------------------------------------------------- configs


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json", *,
                         dtype: str | None = None) -> ModelConfig:
  """HF config.json dict -> ModelConfig, naming any unsupported architecture or field."""
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    raise UnsupportedCheckpointError(f"{where}: model_type {mt!r} is not supported "
                                     f"(supported: {', '.join(SUPPORTED)})")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise UnsupportedCheckpointError(f"{where}: hidden_act={act!r} is not supported (only 'silu')")
  if hf.get("mlp_bias"):
    raise UnsupportedCheckpointError(f"{where}: mlp_bias=true is not supported")
  if mt != "qwen2" and hf.get("attention_bias"):
    raise UnsupportedCheckpointError(f"{where}: attention_bias=true (an o_proj bias) is not supported")
  if hf.get("use_sliding_window") or (mt == "mistral" and hf.get("sliding_window")):
    warnings.warn(f"{where}: sliding-window attention is not implemented; attention is full "
                  f"(exact for sequences up to sliding_window={hf.get('sliding_window')})")
  params = hf.get("rope_parameters") or {}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  scaling = hf.get("rope_scaling") or params
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  if kind in (None, "default"):
    rope_scaling = None
  elif kind == "llama3":
    rope_scaling = {"type": "llama3", **{k: float(scaling[k]) for k in (
        "factor", "low_freq_factor", "high_freq_factor")},
        "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}
  elif kind == "linear":
    rope_scaling = {"type": "linear", "factor": float(scaling["factor"])}
  else:
    raise UnsupportedCheckpointError(f"{where}: rope_scaling type {kind!r} is not supported "
                                     "(supported: default, linear, llama3)")
  try:
    heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        d_ff=int(hf["intermediate_size"]), max_seq_len=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=theta, rope_scaling=rope_scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=(mt == "qwen2"),
        dtype=dtype or "float32", param_dtype=dtype or "float32")
  except KeyError as e:
    raise CheckpointError(f"{where}: no field {e.args[0]!r} (a {mt} config needs it)") from None
  except (TypeError, ValueError, ZeroDivisionError) as e:  # a field of the wrong type, or 0 heads
    raise CheckpointError(f"{where}: {e}") from None


def hf_config_from_model(cfg: ModelConfig, tokenizer=None, dtype: str = "float32") -> dict[str, Any]:
  mt = "qwen2" if cfg.qkv_bias else "llama"
  out = {
      "architectures": ["Qwen2ForCausalLM" if mt == "qwen2" else "LlamaForCausalLM"],
      "model_type": mt, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
      "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_seq_len,
      "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
      "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": dtype, "attention_dropout": 0.0,
  }
  if mt == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  if cfg.rope_scaling:
    sc = dict(cfg.rope_scaling)
    sc["rope_type"] = sc.pop("type", sc.get("rope_type"))
    out["rope_scaling"] = sc
  if tokenizer is not None:
    out.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  return out


# --------------------------------------------------------------------------- the mapping


def hf_name(path: tuple) -> tuple[str, str]:
  """Our nnx state path -> (HF tensor name, layout kind)."""
  if path == ("embed",):
    return "model.embed_tokens.weight", "copy"
  if path == ("lm_head",):
    return "lm_head.weight", "T"
  if path == ("final_norm", "scale"):
    return "model.norm.weight", "copy"
  if path[0] == "blocks":
    i, rest = path[1], path[2:]
    pre = f"model.layers.{i}."
    table = {
        ("attn_norm", "scale"): ("input_layernorm.weight", "copy"),
        ("mlp_norm", "scale"): ("post_attention_layernorm.weight", "copy"),
        ("attn", "q"): ("self_attn.q_proj.weight", "heads_in"),
        ("attn", "k"): ("self_attn.k_proj.weight", "heads_in"),
        ("attn", "v"): ("self_attn.v_proj.weight", "heads_in"),
        ("attn", "o"): ("self_attn.o_proj.weight", "heads_out"),
        ("attn", "q_bias"): ("self_attn.q_proj.bias", "heads_bias"),
        ("attn", "k_bias"): ("self_attn.k_proj.bias", "heads_bias"),
        ("attn", "v_bias"): ("self_attn.v_proj.bias", "heads_bias"),
        ("mlp", "gate"): ("mlp.gate_proj.weight", "T"),
        ("mlp", "up"): ("mlp.up_proj.weight", "T"),
        ("mlp", "down"): ("mlp.down_proj.weight", "T"),
    }
    if rest in table:
      name, kind = table[rest]
      return pre + name, kind
  raise KeyError(f"no HF name for parameter {'/'.join(map(str, path))}")


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape for one of our parameters of `shape`."""
  if kind == "copy":
    return shape
  if kind == "T":
    return shape[::-1]
  if kind == "heads_in":      # [D, N, H] <- [N*H, D]
    return (shape[1] * shape[2], shape[0])
  if kind == "heads_out":     # [N, H, D] <- [D, N*H]
    return (shape[2], shape[0] * shape[1])
  if kind == "heads_bias":    # [N, H] <- [N*H]
    return (shape[0] * shape[1],)
  raise ValueError(kind)


def _span(s: slice, n: int) -> tuple[int, int]:
  start, stop, step = s.indices(n)
  assert step == 1
  return start, stop


def read_slice(src: np.ndarray, kind: str, shape: tuple[int, ...], idx: tuple[slice, ...]) -> np.ndarray:
  """The block `idx` of our parameter, read from the HF tensor `src` (a lazy slice or an array)."""
  if kind == "copy":
    return np.asarray(src[idx])
  if kind == "T":
    return np.asarray(src[idx[1], idx[0]]).T
  if kind == "heads_bias":        # [N*H] is small: read whole, then take the block
    return np.asarray(src[:]).reshape(shape)[idx]
  if kind == "heads_in":
    (d0, d1), (n0, n1), (h0, h1) = (_span(s, n) for s, n in zip(idx, shape))
    H = shape[2]
    block = np.asarray(src[n0 * H:n1 * H, d0:d1]).T.reshape(d1 - d0, n1 - n0, H)
    return block[:, :, h0:h1]
  if kind == "heads_out":
    (n0, n1), (h0, h1), (d0, d1) = (_span(s, n) for s, n in zip(idx, shape))
    H = shape[1]
    block = np.asarray(src[d0:d1, n0 * H:n1 * H]).T.reshape(n1 - n0, H, d1 - d0)
    return block[:, h0:h1, :]
  raise ValueError(kind)


def to_hf_layout(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "copy":
    return x
  if kind == "T":
    return x.T
  if kind == "heads_in":
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_out":
    return x.reshape(-1, x.shape[2]).T
  if kind == "heads_bias":
    return x.reshape(-1)
  raise ValueError(kind)


# --------------------------------------------------------------------------- load / save


def read_hf_config(path: str) -> dict[str, Any]:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
  return read_json(cfg_path)


def check_model_dir(path: str, *, dtype: str | None = None) -> ModelConfig:
  """What `load_model` would read, checked in well under a second and before any weight is:
  config.json (JSON, a supported architecture) and every safetensors header (a truncated or
  corrupt file fails here). Returns the ModelConfig; raises CheckpointError naming the file."""
  model_cfg = model_config_from_hf(read_hf_config(path), os.path.join(path, "config.json"),
                                   dtype=dtype)
  CheckpointReader(path)
  return model_cfg


def load_params(path: str, model_cfg: ModelConfig, mesh=None):
  """(graphdef, nnx.State) read from an HF directory into their shardings on `mesh`."""
  reader = CheckpointReader(path)
  mesh = mesh or mesh_lib.single_device_mesh()
  graphdef, abstract = split_abstract(model_cfg)
  shardings = mesh_lib.state_shardings(abstract, mesh)
  flat_abs = dict(nnx.to_flat_state(abstract))
  flat_sh = dict(nnx.to_flat_state(shardings))
  used, converted = set(), set()
  arrays = {}
  for p, var in flat_abs.items():
    name, kind = hf_name(p)
    if name not in reader:
      raise CheckpointError(f"{path}: missing tensor {name!r} (needed for {'/'.join(map(str, p))})")
    shape = tuple(var.shape)
    expected = hf_shape(kind, shape)
    if reader.shape(name) != expected:
      raise CheckpointError(f"{path}: tensor {name!r} has shape {reader.shape(name)} but "
                            f"config.json implies {expected}")
    src = reader.get(name)
    target = np.dtype(var.dtype)
    if src.dtype != target:
      converted.add((str(src.dtype), str(target)))
    cb = lambda idx, src=src, kind=kind, shape=shape, target=target: (
        read_slice(src, kind, shape, idx).astype(target))
    arrays[p] = jax.make_array_from_callback(shape, flat_sh[p].get_value(), cb)
    used.add(name)
  for frm, to in sorted(converted):
    print(f"load_model: converting {frm} checkpoint tensors to {to}", flush=True)
  extra = [n for n in reader.names() if n not in used and not n.endswith(_IGNORED_TENSORS)
           and not (model_cfg.tie_embeddings and n == "lm_head.weight")]
  if extra:
    warnings.warn(f"{path}: {len(extra)} checkpoint tensors were not used, e.g. {extra[:3]}")
  state = nnx.from_flat_state({p: flat_abs[p].replace(arrays[p]) for p in flat_abs})
  return graphdef, state


def load_model(path: str, *, mesh=None, dtype: str | None = None) -> Transformer:
  """Loads the model of an HF Llama/Mistral/Qwen2 directory (its tokenizer:
  `earlyrl_jax.data.tokenizer.load_tokenizer_dir(path)`).

  dtype: None keeps float32 params and compute (exact); 'bfloat16' stores and
  computes in bf16 (halves memory, e.g. for a frozen teacher).
  """
  model_cfg = model_config_from_hf(read_hf_config(path), os.path.join(path, "config.json"), dtype=dtype)
  graphdef, state = load_params(path, model_cfg, mesh)
  return nnx.merge(graphdef, state)


def save_pretrained(model: Transformer, path: str, tokenizer=None, *, dtype: str = "float32",
                    max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `model` as an HF directory (config.json + safetensors, sharded when large).

  `tokenizer` only supplies the special token ids of config.json; its files are
  written by `earlyrl_jax.data.tokenizer.save_tokenizer_files`.
  """
  os.makedirs(path, exist_ok=True)
  np_dtype = jnp.dtype(dtype)
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  names = {p: hf_name(p) for p in flat}

  def load(p):
    name, kind = names[p]
    return np.ascontiguousarray(
        to_hf_layout(np.asarray(jax.device_get(flat[p].get_value())), kind).astype(np_dtype))

  plan = [(names[p][0], int(np.prod(var.get_value().shape)) * np_dtype.itemsize, p)
          for p, var in flat.items()]
  save_sharded(plan, load, path, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config_from_model(model.cfg, tokenizer, dtype), f, indent=1)
