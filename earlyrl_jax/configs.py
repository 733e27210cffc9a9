"""Typed access to ml_collections configs and validation with clear errors.

Configs are plain `get_config()` files (see `configs/`). Everything here turns a
ConfigDict into the typed objects the code uses and checks it against the
devices before any compilation starts, naming the offending field.
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections

from earlyrl_jax.models.transformer import ModelConfig
from earlyrl_jax.parallel import mesh as mesh_lib



class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
  """`cfg.model` -> ModelConfig (every ModelConfig field may be set in the config)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  raw = dict(cfg.model.to_dict())
  unknown = sorted(set(raw) - fields - {"preset"})
  if unknown:
    raise ConfigError(f"model.{unknown[0]}: unknown model field (known: {sorted(fields)})")
  raw.pop("preset", None)
  try:
    return ModelConfig(**raw)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None


def model_section(preset_name: str, **overrides) -> ml_collections.ConfigDict:
  """A `model` config section holding every field of a preset (so all are overridable)."""
  from earlyrl_jax.models.transformer import preset
  mc = dataclasses.asdict(preset(preset_name, **overrides))
  section = ml_collections.ConfigDict({"preset": preset_name})
  for k, v in mc.items():
    if v is None:
      # ConfigDict fields that start as None accept any type later.
      section[k] = ml_collections.FieldReference(None, field_type=dict)
    else:
      section[k] = v
  return section


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs a config file's get_config() (for notebooks, and configs built on other configs)."""
  import importlib.util
  import os
  name = "earlyrl_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"cannot load config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _require(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"{field}: {msg}")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int | None = None) -> None:
  """Checks the config against itself and the available devices; raises ConfigError."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  from earlyrl_jax.modes import MODES
  _require(cfg.mode in MODES, "mode", f"{cfg.mode!r} is not one of {sorted(MODES)}")
  _require(cfg.num_steps >= 0, "num_steps", f"must be >= 0, got {cfg.num_steps}")
  if not MODES[cfg.mode].trains:
    return
  mc = model_config(cfg)
  try:
    shape = mesh_lib.resolve_mesh_shape((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor), num_devices)
  except mesh_lib.MeshConfigError as e:
    raise ConfigError(str(e)) from None
  data, fsdp, tensor = shape
  dp = data * fsdp
  d = cfg.data
  _require(d.batch_size > 0, "data.batch_size", "must be positive")
  _require(d.batch_size % dp == 0, "data.batch_size",
           f"{d.batch_size} is not divisible by the data-parallel size {dp} (mesh.data x mesh.fsdp)")
  _require(d.batch_size % process_count == 0, "data.batch_size",
           f"{d.batch_size} is not divisible by the number of hosts {process_count}")
  accum = cfg.opt.grad_accum_steps
  _require(accum >= 1, "opt.grad_accum_steps", "must be >= 1")
  _require(d.batch_size % (accum * dp) == 0, "opt.grad_accum_steps",
           f"data.batch_size={d.batch_size} must split into {accum} micro-batches that are "
           f"each divisible by the data-parallel size {dp}")
  _require(d.seq_len >= 2, "data.seq_len", "must be >= 2")
  _require(d.seq_len <= mc.max_seq_len, "data.seq_len",
           f"{d.seq_len} exceeds model.max_seq_len={mc.max_seq_len}")
  for value, axis_size, field in (
      (mc.n_heads, tensor, "model.n_heads"), (mc.n_kv_heads, tensor, "model.n_kv_heads"),
      (mc.d_ff, tensor, "model.d_ff"), (mc.vocab_size, tensor, "model.vocab_size"),
      (mc.d_model, fsdp, "model.d_model")):
    axis = "mesh.tensor" if axis_size == tensor else "mesh.fsdp"
    _require(value % axis_size == 0, field, f"{value} is not divisible by {axis}={axis_size}")
  o = cfg.opt
  _require(o.learning_rate > 0, "opt.learning_rate", "must be positive")
  _require(o.warmup_steps >= 0, "opt.warmup_steps", "must be >= 0")
  _require(0.0 <= o.min_lr_ratio <= 1.0, "opt.min_lr_ratio", "must be in [0, 1]")
  _require(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be positive")
  _require(cfg.checkpoint.keep > 0, "checkpoint.keep", "must be positive")
  _require(cfg.log_every_steps > 0, "log_every_steps", "must be positive")
  _require(d.corpus in ("world", "files"), "data.corpus", f"{d.corpus!r}: expected 'world' or 'files'")
  if d.corpus == "files":
    _require(bool(d.train_files), "data.train_files", "is empty; give file globs (or data.corpus='world')")
  _require(d.tokenizer in ("sentencepiece", "hf", "byte"), "data.tokenizer",
           f"{d.tokenizer!r}: expected 'sentencepiece', 'hf' or 'byte'")
  if d.tokenizer == "hf":
    _require(bool(d.tokenizer_path), "data.tokenizer_path", "an HF tokenizer needs a path")
