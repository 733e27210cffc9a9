"""Typed access to ml_collections configs and validation with clear errors.

Configs are plain `get_config()` files (see `configs/`). Everything here turns a
ConfigDict into the typed objects the code uses and checks it against the
devices before any compilation starts, naming the offending field.
"""
from __future__ import annotations

import dataclasses
import os

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


# Every enum-like field and its allowed values; checked (when the field exists) before
# anything slow runs, so a typo never surfaces after tokenizer training or compilation.
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "data.corpus": ("world", "files"),
    "data.format": ("jsonl", "text", "parquet", "arrayrecord", "arrayrecord_text"),
    "data.tokenizer": ("sentencepiece", "hf", "byte"),
    "data.text_split": ("file", "line", "paragraph"),
    "data.on_error": ("raise", "skip"),
    "data.encoding_errors": ("replace", "raise", "skip"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "sip.recipe": ("dpo", "rf_nll", "pg"),
    "sip.rewrite": ("online", "precomputed", "none"),
    "sip.judge": ("teacher", "oracle", "none"),
    "sip.judge_scheme": ("all_pairs", "pivot", "adaptive"),
    "sip.aggregate": ("win_rate", "bradley_terry"),
    "sip.rf_fallback": ("original", "skip"),
    "sip.factuality_reference": ("original", "next_span"),
    "sip.lm_target": ("window", "suffix", "rewrite"),
    "report.split": ("validation", "test"),
    "rewrite_job.judge": ("none", "teacher", "oracle"),
    "generate.dtype": ("", "float32", "bfloat16"),
    "teacher.placement": mesh_lib.PLACEMENTS,
    "teacher.judge_format": ("scored", "pairwise"),
}


_MISSING = object()


def _get(cfg, path: str, default=None):
  node = cfg
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return default
    node = node[part]
  return node


def check_workdir(workdir: str) -> None:
  """The workdir is a directory or can become one (no parent is a regular file)."""
  if not workdir:
    raise ConfigError("--workdir: is empty; give a run directory")
  if "://" in workdir:
    return  # remote (gs://...): checked by the storage library when first written
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir: {workdir} is a regular file, not a directory; "
                      "choose another run directory")
  parent = path
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
  if parent and not os.path.isdir(parent):
    raise ConfigError(f"--workdir: {workdir} cannot be created: {parent} is a regular file")


def validate_fields(cfg: ml_collections.ConfigDict) -> None:
  """Checks values that need no devices: the mode, every enum-like field, generate knobs."""
  from earlyrl_jax.modes import MODES
  if cfg.mode not in MODES:
    known = "; ".join(f"{name} ({m.help})" for name, m in MODES.items())
    raise ConfigError(f"mode: {cfg.mode!r} is not a mode of this version; known modes: {known}")
  for field, allowed in ENUM_FIELDS.items():
    value = _get(cfg, field, _MISSING)
    if value is _MISSING:
      continue
    _require(value in allowed, field,
             f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")
  if cfg.mode == "generate":
    generate_config(cfg)  # raises ConfigError naming the generate.* field
  oracle_axes(cfg)


def oracle_axes(cfg) -> list[str]:
  """`sip.oracle_axes` ('factuality,safety': axes the world's oracles judge instead of the
  teacher) as a list; an axis the judge lacks is a ConfigError."""
  from earlyrl_jax.teacher.prompts import AXES
  axes = [x.strip() for x in str(_get(cfg, "sip.oracle_axes", "") or "").split(",") if x.strip()]
  bad = [x for x in axes if x not in AXES]
  _require(not bad, "sip.oracle_axes", f"{bad} are not judge axes {list(AXES)}")
  return axes



def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int | None = None) -> None:
  """Checks the config against itself and the available devices; raises ConfigError."""
  validate_fields(cfg)
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  from earlyrl_jax.modes import MODES
  _require(cfg.num_steps >= 0, "num_steps", f"must be >= 0, got {cfg.num_steps}")
  if not MODES[cfg.mode].trains:
    return
  mc = model_config(cfg)
  left = check_placement(cfg, num_devices, process_count)
  try:
    shape = mesh_lib.resolve_mesh_shape((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor), left)
  except mesh_lib.MeshConfigError as e:
    where = "" if left == num_devices else (
        f" (the policy's mesh: the {left} devices that teacher.devices={num_devices - left} "
        f"leaves of {num_devices})")
    raise ConfigError(f"{e}{where}") from None
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
  bad = model_mesh_mismatch(mc, fsdp=fsdp, tensor=tensor)
  if bad is not None:
    name, value, axis, size = bad
    _require(False, f"model.{name}", f"{value} is not divisible by mesh.{axis}={size}")
  o = cfg.opt
  _require(o.learning_rate > 0, "opt.learning_rate", "must be positive")
  _require(o.warmup_steps >= 0, "opt.warmup_steps", "must be >= 0")
  _require(0.0 <= o.min_lr_ratio <= 1.0, "opt.min_lr_ratio", "must be in [0, 1]")
  _require(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be positive")
  _require(cfg.checkpoint.keep > 0, "checkpoint.keep", "must be positive")
  _require(cfg.log_every_steps > 0, "log_every_steps", "must be positive")
  if d.corpus == "files":
    _require(bool(d.train_files), "data.train_files", "is empty; give file globs (or data.corpus='world')")
  if d.tokenizer == "hf":
    _require(bool(d.tokenizer_path), "data.tokenizer_path", "an HF tokenizer needs a path")


def model_mesh_mismatch(mc, *, fsdp: int, tensor: int) -> tuple[str, int, str, int] | None:
  """The first model size the mesh does not split evenly, as (model field, value, mesh axis,
  axis size); None when all fit. For the policy (`mesh`) and the teacher (`teacher.mesh`)."""
  for name, value, axis, size in (("n_heads", mc.n_heads, "tensor", tensor),
                                  ("n_kv_heads", mc.n_kv_heads, "tensor", tensor),
                                  ("d_ff", mc.d_ff, "tensor", tensor),
                                  ("vocab_size", mc.vocab_size, "tensor", tensor),
                                  ("d_model", mc.d_model, "fsdp", fsdp)):
    if value % size:
      return name, value, axis, size
  return None


def check_placement(cfg: ml_collections.ConfigDict, num_devices: int, process_count: int) -> int:
  """Checks `teacher.placement` / `teacher.devices` / `teacher.mesh` against the devices;
  returns how many devices the policy's mesh gets (all of them unless 'submesh')."""
  t = _get(cfg, "teacher")
  if t is None or t.get("placement", "shared") == "shared":
    return num_devices
  n = t.get("devices", 0)
  _require(isinstance(n, int) and n >= 1, "teacher.devices",
           f"teacher.placement='submesh' needs the number of devices the teacher gets (>= 1), "
           f"got {n!r}")
  _require(n % process_count == 0, "teacher.devices",
           f"{n} is not a multiple of the {process_count} processes: the teacher's sub-mesh takes "
           "an equal share of every host's devices")
  _require(n < num_devices, "teacher.devices",
           f"{n} of the {num_devices} devices leaves the policy none; lower it or use "
           "teacher.placement='shared'")
  try:
    mesh_lib.resolve_mesh_shape(mesh_lib.teacher_mesh_shape(t), n)
  except mesh_lib.MeshConfigError as e:
    raise ConfigError(f"teacher.mesh: {e} (the teacher's sub-mesh is teacher.devices={n} "
                      "devices)") from None
  return num_devices - n


def check_data(cfg: ml_collections.ConfigDict, train_files: str | None = None,
               eval_files: str | None = None, *, num_records: int = 8) -> None:
  """Up-front data check for a training run; raises DataError naming glob, file:line and field.

  Every glob of the train and eval files must match, and the first `num_records`
  records of each file must parse and carry `data.text_field`. Runs in seconds,
  before tokenizer training and compilation. `train_files` / `eval_files` default to
  the config's (checked only when data.corpus='files'; the loop passes the resolved
  globs of a generated world).
  """
  from earlyrl_jax.data import sources
  from earlyrl_jax.modes import MODES
  mode = MODES.get(cfg.mode)
  if mode is None or not mode.trains:
    return
  d = cfg.data
  if train_files is None and eval_files is None:
    if d.corpus != "files":
      return
    train_files, eval_files = d.train_files, d.eval_files
  opts = dict(fmt=d.format, text_field=d.text_field, text_split=d.text_split,
              on_error=d.on_error, encoding_errors=d.encoding_errors, num_records=num_records)
  if train_files:
    sources.preflight(train_files, field="data.train_files", **opts)
  if eval_files and cfg.get("eval_every_steps", 1):
    sources.preflight(eval_files, field="data.eval_files", **opts)


def nonfinite_hint(cfg: ml_collections.ConfigDict) -> str:
  """What to try after a NaN/inf stop, given what the config already does."""
  o = cfg.opt
  tips = [f"lower opt.learning_rate (now {o.learning_rate:g})"]
  if o.get("grad_clip", 0):
    tips.append(f"lower opt.grad_clip (now {o.grad_clip:g})")
  else:
    tips.append("enable opt.grad_clip (e.g. 1.0)")
  if o.get("warmup_steps", 1) < 100:
    tips.append(f"raise opt.warmup_steps (now {o.warmup_steps})")
  if _get(cfg, "model.dtype") in ("bfloat16", "float16"):
    tips.append(f"compute in float32 (model.dtype={cfg.model.dtype!r})")
  return ", ".join(tips) + ", or inspect the data near this step"


# --------------------------------------------------------------------------- generate


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """`c.generate` (mode='generate'); missing fields take these defaults."""
  model_path: str = ""        # '' = WORKDIR's newest checkpoint; a run dir or an HF model dir
  step: int = -1              # checkpoint step of a run (-1 = newest)
  prompt: str = ""            # one prompt given on the command line
  prompt_file: str = ""       # JSONL, one {"prompt": ...} per line (other fields are copied out)
  prompt_field: str = "prompt"  # key of the prompt in prompt_file records
  output_file: str = ""       # '' = WORKDIR/generations.jsonl; '-' = JSONL on stdout only
  max_new_tokens: int = 64    # tokens generated per completion
  temperature: float = 1.0    # 0 = greedy
  top_k: int = 0              # 0 = off
  top_p: float = 1.0          # 1 = off
  num_samples: int = 1        # K completions per prompt
  batch_size: int = 16        # prompts per sampler call
  seed: int = 0               # sampling key
  add_bos: bool = True        # prepend BOS, as training documents start
  stop_at_eos: bool = True    # end a completion at the tokenizer's EOS
  dtype: str = ""             # HF models: '' keeps float32, 'bfloat16' halves memory


def generate_section(**overrides) -> ml_collections.ConfigDict:
  """A `generate` config section holding every GenerateConfig field (all overridable)."""
  return ml_collections.ConfigDict(dataclasses.asdict(GenerateConfig(**overrides)))


def generate_config(cfg: ml_collections.ConfigDict) -> GenerateConfig:
  """`cfg.generate` (absent or partial: defaults) -> GenerateConfig; raises ConfigError."""
  raw = dict(cfg.generate.to_dict()) if "generate" in cfg.keys() else {}
  fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ConfigError(f"generate.{unknown[0]}: unknown field (known: {', '.join(fields)})")
  g = GenerateConfig(**raw)
  _require(g.max_new_tokens > 0, "generate.max_new_tokens", f"must be positive, got {g.max_new_tokens}")
  _require(g.temperature >= 0, "generate.temperature", f"must be >= 0, got {g.temperature}")
  _require(g.top_k >= 0, "generate.top_k", f"must be >= 0, got {g.top_k}")
  _require(0.0 < g.top_p <= 1.0, "generate.top_p", f"must be in (0, 1], got {g.top_p}")
  _require(g.num_samples >= 1, "generate.num_samples", f"must be >= 1, got {g.num_samples}")
  _require(g.batch_size >= 1, "generate.batch_size", f"must be >= 1, got {g.batch_size}")
  _require(g.dtype in ENUM_FIELDS["generate.dtype"], "generate.dtype",
           f"{g.dtype!r} is not one of {ENUM_FIELDS['generate.dtype']}")
  _require(bool(g.prompt) != bool(g.prompt_file), "generate.prompt",
           "give exactly one of generate.prompt (one prompt) and generate.prompt_file (JSONL)"
           if g.prompt else "no prompt: set generate.prompt='...' or generate.prompt_file=PATH.jsonl")
  return g
