"""The config's `model` section: presets, and the shape read from the checkpoint a run starts from
(`model.preset='from_checkpoint'`).

Mid-training starts from someone else's checkpoint; its shape is written in its config.json, so
the user should not retype it. The convention:

- `configs.model_section('from_checkpoint')` makes every shape field None: None means "not set:
  take the checkpoint's". Any value set in the config file or on the command line is explicit;
  one that disagrees with the checkpoint is a ConfigError naming every such field.
- `max_seq_len` is not a property of the weights (RoPE has no table): None means the longest row
  the run builds, `data.seq_len` or `data.prefix_len` + the candidate length, not the
  checkpoint's 8192 or 131072 positions. A run needing more than the checkpoint's context is an
  error.
- `rope_scaling`: None = the checkpoint's; `{}` = explicitly none (on the command line
  `--config.model.rope_scaling='{}'`, which also unsets a preset's scaling).
- dtype, param_dtype, remat and init_std are settings of the run, never read from the checkpoint.
- `data.tokenizer_path` left empty with `data.tokenizer='hf'` becomes the checkpoint directory.

`resolve_model(cfg)` fills the section in place (configs.validate calls it), so everything after
validation, and the config.json a run writes, carries a complete shape: a run directory made this
way is itself a valid `init.params_from`.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from earlyrl_jax.errors import ConfigError
from earlyrl_jax.models.transformer import ModelConfig

FROM_CHECKPOINT = "from_checkpoint"
# Fields that are the weights' shape (must equal the checkpoint's); the rest are run settings.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings", "qkv_bias")


def _error(msg: str):
  return ConfigError(msg)


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
  """`cfg.model` -> ModelConfig (every ModelConfig field may be set in the config).

  `rope_scaling={}` means none (how the command line unsets a preset's scaling). A section of
  preset 'from_checkpoint' is complete only after `checkpoint_shape.resolve_model` (validate)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  raw = dict(cfg.model.to_dict())
  unknown = sorted(set(raw) - fields - {"preset"})
  if unknown:
    raise ConfigError(f"model.{unknown[0]}: unknown model field (known: {sorted(fields)})")
  preset_name = raw.pop("preset", None)
  unset = [k for k, v in raw.items() if v is None and k != "rope_scaling"]
  if unset:
    raise ConfigError(f"model.{unset[0]} is unset (model.preset={preset_name!r}): set it, or let "
                      "init.params_from supply the shape (model.preset='from_checkpoint')")
  sc = raw.get("rope_scaling")
  if not sc or sc.get("type", sc.get("rope_type")) == "default":
    raw["rope_scaling"] = None
  try:
    return ModelConfig(**raw)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None


# Field types of a 'from_checkpoint' section: every field starts None (= the checkpoint's) and
# stays overridable from the command line (a typed FieldReference).
_FIELD_TYPES = {"rope_scaling": object, "rope_theta": float, "norm_eps": float, "init_std": float,
                "tie_embeddings": bool, "qkv_bias": bool, "remat": bool, "dtype": str,
                "param_dtype": str}


def model_section(preset_name: str, **overrides) -> ml_collections.ConfigDict:
  """A `model` config section holding every field of a preset (so all are overridable).

  preset 'from_checkpoint': the shape comes from `init.params_from` and max_seq_len from the
  windows (earlyrl_jax/checkpoint_shape.py); only `overrides` are set (run settings such as
  dtype, or shape fields you want checked against the checkpoint)."""
  from earlyrl_jax.models.transformer import preset
  if preset_name == FROM_CHECKPOINT:
    run_settings = {k: v for k, v in dataclasses.asdict(ModelConfig()).items()
                    if k not in SHAPE_FIELDS and k != "max_seq_len"}
    mc = {**dict.fromkeys(SHAPE_FIELDS + ("max_seq_len",)), **run_settings, **overrides}
  else:
    mc = dataclasses.asdict(preset(preset_name, **overrides))
  section = ml_collections.ConfigDict({"preset": preset_name})
  for k, v in mc.items():
    if v is None:
      # ConfigDict fields that start as None accept any type later (typed so that the command
      # line can set them).
      section[k] = ml_collections.FieldReference(None, field_type=_FIELD_TYPES.get(k, int))
    else:
      section[k] = v
  return section


def is_run_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, "config.json"))
          and os.path.isdir(os.path.join(path, "checkpoints")))


def checkpoint_model_config(path: str, field: str = "init.params_from") -> ModelConfig:
  """The ModelConfig written beside a checkpoint: an earlyrl_jax run directory (its config.json's
  `model`) or an HF directory (config.json); reads no weights."""
  if is_run_dir(path):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
      return model_config(ml_collections.ConfigDict(json.load(f)))
  if os.path.isfile(os.path.join(path, "config.json")):
    from earlyrl_jax.models import hf_io
    try:
      return hf_io.model_config_from_hf(hf_io.read_hf_config(path), os.path.join(path, "config.json"))
    except (KeyError, ValueError) as e:
      raise _error(f"{field}={path!r}: config.json cannot be read as a model ({e})") from None
  raise _error(f"{field}={path!r}: neither a run directory (config.json + checkpoints/) nor an "
               "HF model directory (config.json + *.safetensors)")


def norm_rope_scaling(value) -> dict | None:
  """None, {} and type 'default' all mean no scaling; numbers compare as floats."""
  if value is None:
    return None
  d = dict(value.to_dict() if hasattr(value, "to_dict") else value)
  kind = d.pop("type", d.pop("rope_type", None))
  if not d and kind in (None, "default") or kind == "default":
    return None
  return {"type": kind, **{k: float(v) for k, v in d.items()}}


def _same(field: str, a, b) -> bool:
  if field == "rope_scaling":
    return norm_rope_scaling(a) == norm_rope_scaling(b)
  if isinstance(a, float) or isinstance(b, float):
    return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
  return a == b


def shape_mismatch(given: dict, ckpt: ModelConfig) -> list[str]:
  """`field=given (checkpoint: value)` for every shape field of `given` that differs."""
  out = []
  for f in SHAPE_FIELDS:
    if f in given and given[f] is not None and not _same(f, given[f], getattr(ckpt, f)):
      out.append(f"model.{f}={given[f]!r} (checkpoint: {getattr(ckpt, f)!r})")
  return out


WINDOW_MODES = ("sip", "rewrite")   # jobs that cut documents into (prefix, suffix) windows


def window_len(cfg) -> int:
  """The longest row a run builds: packed LM rows (`data.seq_len`) and, in the window jobs,
  `data.prefix_len` + the longer of `data.suffix_len` and `sip.candidate_len`."""
  d = cfg.data
  need = int(d.get("seq_len", 0) or 0)
  if cfg.get("mode") in WINDOW_MODES and "prefix_len" in d:
    cand = max(int(d.get("suffix_len", 0) or 0), int(cfg.get("sip", {}).get("candidate_len", 0) or 0))
    need = max(need, int(d.prefix_len) + cand)
  return need


def resolve_model(cfg) -> None:
  """Fills `cfg.model` from `init.params_from` when `model.preset='from_checkpoint'` (in place;
  idempotent). Raises ConfigError naming the fields set explicitly that disagree."""
  if cfg.get("model", {}).get("preset") != FROM_CHECKPOINT:
    return
  path = (cfg.get("init") or {}).get("params_from", "")
  if not path:
    unset = [k for k, v in cfg.model.items() if v is None and k in SHAPE_FIELDS]
    if unset:
      raise _error(f"model.preset='from_checkpoint' takes the shape from init.params_from, which is "
                   f"empty: set init.params_from (an HF or run directory) or the fields "
                   f"{', '.join('model.' + k for k in unset)}")
    ckpt = None
  else:
    ckpt = checkpoint_model_config(path)
    bad = shape_mismatch({k: cfg.model[k] for k in SHAPE_FIELDS if k in cfg.model}, ckpt)
    if bad:
      raise _error(f"init.params_from={path!r}: " + ", ".join(bad) + " set explicitly, but the "
                   "checkpoint differs; drop them (model.preset='from_checkpoint' takes the "
                   "checkpoint's shape) or point init.params_from at a matching checkpoint")
    for k in SHAPE_FIELDS:
      if cfg.model.get(k) is None:
        v = getattr(ckpt, k)
        cfg.model[k] = {} if (k == "rope_scaling" and v is None) else v
  if cfg.model.get("max_seq_len") is None:
    need = window_len(cfg)
    if ckpt is not None and need > ckpt.max_seq_len:
      raise _error(f"data: rows of {need} tokens (data.seq_len / data.prefix_len + candidate length) "
                   f"exceed the checkpoint's context of {ckpt.max_seq_len} positions ({path})")
    cfg.model.max_seq_len = need
  d = cfg.get("data")
  if (path and d is not None and d.get("tokenizer") == "hf" and not d.get("tokenizer_path")
      and os.path.isfile(os.path.join(path, "tokenizer.json"))):
    d.tokenizer_path = path   # the checkpoint's own tokenizer
