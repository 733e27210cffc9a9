"""Typed access to ml_collections configs and validation with clear errors.

Configs are plain `get_config()` files (see `configs/`). Everything here turns a
ConfigDict into the typed objects the code uses and checks it against the
devices before any compilation starts, naming the offending field.

The checks, in the order main.py runs them (each raises one error naming the field):
  validate_fields  the mode's settings alone: enums (ENUM_FIELDS), every numeric field
                   (RANGES: one row per field, its range and the modes that read it) and
                   the rules that tie fields together (check_settings); warnings for
                   settings that are legal but almost surely unintended
  validate         against the devices: mesh, batch divisibility, teacher placement
  check_data       the first records of every data file
  check_models     the model directories and tokenizer files a mode reads, before any
                   weight is read
A new numeric field gets a RANGES row (tests/test_errors.py fails without one).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys

import jax
import ml_collections

from earlyrl_jax.checkpoint_shape import model_config, model_section  # noqa: F401  (re-exported)
from earlyrl_jax.errors import ConfigError  # noqa: F401  (re-exported: a bad field, named)
from earlyrl_jax.models.transformer import ModelConfig
from earlyrl_jax.parallel import mesh as mesh_lib


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


def set_fields(cfg, overrides: dict):
  """Sets dotted config fields ('data.batch_size': 8) in place (tests, benchmarks); returns cfg."""
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = cfg
    for p in path:
      node = node[p]
    node[last] = value
  return cfg


# method -> sip-section overrides (on top of the config's `sip` section).
REPORT_METHODS: dict[str, dict] = {
    "nll": dict(recipe="rf_nll", judge="none", rewrite="none", num_rollouts=0, lm_coef=1.0, coef=0.0),
    "rewrite_nll": dict(recipe="rf_nll", judge="none", rewrite="online", num_rollouts=0,
                        lm_coef=0.0, coef=1.0),
    "sip_rf_nll": dict(recipe="rf_nll", judge="teacher", rewrite="online"),
    "sip_dpo": dict(recipe="dpo", judge="teacher", rewrite="online"),
    "sip_pg": dict(recipe="pg", judge="teacher", rewrite="online"),
    "sip_dpo_oracle": dict(recipe="dpo", judge="oracle", rewrite="online"),
    # Which axis's judging limits DPO: the teacher's judge with one axis judged by the oracles.
    "sip_dpo_oracle_factuality": dict(recipe="dpo", judge="teacher", rewrite="online",
                                      oracle_axes="factuality"),
    "sip_dpo_oracle_quality": dict(recipe="dpo", judge="teacher", rewrite="online",
                                   oracle_axes="quality"),
    # Cheaper judging (docs/method.md): the same online DPO with the pivot and adaptive schemes,
    # beside `sip_dpo` (the config's scheme, all pairs by default).
    "sip_dpo_pivot": dict(recipe="dpo", judge="teacher", rewrite="online", judge_scheme="pivot"),
    "sip_dpo_adaptive": dict(recipe="dpo", judge="teacher", rewrite="online",
                             judge_scheme="adaptive"),
    # Issue 40 (docs/policy_extensions.md): per-group weights of PG advantages / DPO pairs, and
    # distillation toward the teacher as a loss term of the step.
    "sip_pg_gcpo": dict(recipe="pg", judge="teacher", rewrite="online", advantage="gcpo"),
    "sip_pg_entropy": dict(recipe="pg", judge="teacher", rewrite="online", advantage="token_entropy"),
    "sip_dpo_gcpo": dict(recipe="dpo", judge="teacher", rewrite="online", pair_weight="gcpo"),
    "sip_dpo_distill": dict(recipe="dpo", judge="teacher", rewrite="online", distill_coef=0.5,
                            distill_level="auto"),
    # Principle-guided rewriting (docs/principles.md; the `principle` section names X and Y).
    # dpf: Direct Principle Feedback, DPO with the world's revision chosen and the original
    # rejected, no judge, no rollouts; sip_dpo_principle: SIP DPO with the principle given to the
    # rewriter and a mention penalty in the judge's reward.
    "dpf": dict(recipe="dpo", judge="none", rewrite="principle", num_rollouts=0,
                principle_mode="dpf"),
    "sip_dpo_principle": dict(recipe="dpo", judge="teacher", rewrite="principle",
                              principle_mode="guide"),
}


def report_method_uses_teacher(name: str) -> bool:
  """A report method judges with the teacher or has it rewrite online."""
  o = REPORT_METHODS[name]
  return o["judge"] == "teacher" or o["rewrite"] == "online"


def teacher_config(cfg):
  """The embedded teacher's config (`teacher.config`), on the run's world.

  It trains on its own config's `mesh` (before SIP starts, so every device is free) and is
  then loaded where `teacher.placement` puts it (`load_teacher_for`).
  """
  path = cfg.teacher.config
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", path)
  if not os.path.exists(path):
    raise ConfigError(f"teacher.config: {cfg.teacher.config!r} not found")
  tcfg = load_config_file(path)
  tcfg.world = cfg.world
  return tcfg


@dataclasses.dataclass(frozen=True)
class RewriteJobConfig:
  """`c.rewrite_job` (missing fields take these defaults)."""
  out_dir: str = ""        # '' = WORKDIR/rewrites
  shard_size: int = 4096   # records (distinct windows) per shard
  batch_size: int = 64     # windows per teacher call
  judge: str = "none"      # 'none' | 'teacher' | 'oracle'
  max_windows: int = 0     # distinct windows per process (0 = the whole corpus)


def rewrite_job_config(cfg) -> RewriteJobConfig:
  """`cfg.rewrite_job` -> JobConfig; its values are checked with every other setting
  (RANGES, ENUM_FIELDS), here only its field names."""
  raw = dict(cfg.rewrite_job.to_dict()) if "rewrite_job" in cfg.keys() else {}
  known = {f.name for f in dataclasses.fields(RewriteJobConfig)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ConfigError(f"rewrite_job.{unknown[0]}: unknown field (known: {sorted(known)})")
  return RewriteJobConfig(**raw)


def _require(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"{field}: {msg}")


# Every enum-like field and its allowed values; checked (when the field exists) before
# anything slow runs, so a typo never surfaces after tokenizer training or compilation.
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "data.corpus": ("world", "files", "python_docs"),   # python_docs: data/python_docs.py
    "data.format": ("jsonl", "text", "parquet", "arrayrecord", "arrayrecord_text"),
    "data.tokenizer": ("sentencepiece", "hf", "byte"),
    "data.text_split": ("file", "line", "paragraph"),
    "data.on_error": ("raise", "skip"),
    "data.encoding_errors": ("replace", "raise", "skip"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "sip.recipe": ("dpo", "rf_nll", "pg"),
    "sip.rewrite": ("online", "precomputed", "none", "principle"),  # principle: world/principled.py
    "sip.judge": ("teacher", "oracle", "none"),
    "sip.judge_scheme": ("all_pairs", "pivot", "adaptive"),
    "sip.aggregate": ("win_rate", "bradley_terry"),
    "sip.rf_fallback": ("original", "skip"),
    "sip.factuality_reference": ("original", "next_span"),
    "sip.lm_target": ("window", "suffix", "rewrite"),
    "sip.advantage": ("group", "token_entropy", "gcpo"),           # train/advantages.py ADVANTAGES
    "sip.pair_weight": ("none", "token_entropy", "gcpo"),          # train/advantages.py PAIR_WEIGHTS
    "sip.gcpo_dispersion": ("cosine", "transport"),
    "sip.distill_on": ("chosen", "candidates"),                    # train/distill.py ON
    "sip.distill_level": ("auto", "token", "sequence"),            # train/distill.py LEVELS
    "report.split": ("validation", "test"),
    "rewrite_job.judge": ("none", "teacher", "oracle"),
    "generate.dtype": ("", "float32", "bfloat16"),
    "teacher.placement": mesh_lib.PLACEMENTS,
    "teacher.judge_format": ("scored", "pairwise"),
    "teacher.backend": ("inprocess", "openai"),
    "teacher.judge_kind": ("auto", "embedded", "logprob", "generative"),  # teacher/teacher.py JUDGE_KINDS
    "teacher.rewriter_kind": ("auto", "edit", "generative"),      # teacher/teacher.py REWRITER_KINDS
    "judge_train.method": ("sft", "grpo", "bt"),          # earlyrl_jax/judge_train/job.py METHODS
    "judge_train.variant": ("logprob", "generative"),     # teacher/prompts/paper.py VARIANTS
    "judge_train.eval_variant": ("logprob", "generative"),
    "sip.principle_mode": ("off", "guide", "dpf"),   # teacher/principles.py MODES
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
  """Checks every setting the mode reads that needs no devices and no files: the mode, every
  enum-like field, every numeric field (RANGES) and the settings that must agree with each
  other. Raises ConfigError naming the field; prints a `warning:` line for a setting that is
  legal but almost surely unintended (greedy rollouts with K > 1). Runs in milliseconds, before
  anything is written, loaded or compiled (main.py, and the launchers before a job is queued)."""
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
  check_ranges(cfg)
  if cfg.mode == "generate":
    generate_config(cfg)  # raises ConfigError naming the generate.* field
  oracle_axes(cfg)
  from earlyrl_jax.teacher.backends import check_config   # teacher.backend / teacher.openai.*
  try:
    check_config(_get(cfg, "teacher"))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check_settings(cfg)


def oracle_axes(cfg) -> list[str]:
  """`sip.oracle_axes` ('factuality,safety': axes the world's oracles judge instead of the
  teacher) as a list; an axis the judge lacks is a ConfigError."""
  from earlyrl_jax.teacher.prompts import AXES
  axes = [x.strip() for x in str(_get(cfg, "sip.oracle_axes", "") or "").split(",") if x.strip()]
  bad = [x for x in axes if x not in AXES]
  _require(not bad, "sip.oracle_axes", f"{bad} are not judge axes {list(AXES)}")
  return axes



# --------------------------------------------------------------------------- numeric settings

TRAINING = ("pretrain", "sip", "report")  # modes that build the policy, its data and optimizer
SIP_MODES = ("sip", "report")              # modes that read sip.*
WINDOWS = ("sip", "report", "rewrite")     # modes that cut documents into (prefix, suffix) windows
TEACHER_JOB = ("teacher",)                 # the embedded teacher's own config (configs/teacher_tiny.py)
JUDGE_TRAIN = ("judge_train",)             # training a model as judge (configs/judge_train.py)

_NUM = r"(-?[0-9.]+(?:e-?[0-9]+)?)"
_BOUND_RE = re.compile(rf"^(>=|>) {_NUM}$")
_INTERVAL_RE = re.compile(rf"^([\[(]){_NUM}, {_NUM}([\])])$")


@dataclasses.dataclass(frozen=True)
class Range:
  """A numeric field: its type, its allowed range written as the error says it ('>= 1',
  '> 0', '[0, 1]', '(0, 1]') and the modes that read it (None: every mode)."""
  field: str
  kind: type                          # int or float (a float field takes an int too)
  allowed: str
  modes: tuple[str, ...] | None = None

  def __post_init__(self):
    if not (_BOUND_RE.match(self.allowed) or _INTERVAL_RE.match(self.allowed)):
      raise ValueError(f"Range({self.field!r}): cannot read the range {self.allowed!r}")

  def holds(self, x) -> bool:
    m = _BOUND_RE.match(self.allowed)
    if m:
      bound = float(m.group(2))
      return x >= bound if m.group(1) == ">=" else x > bound
    lo_kind, lo, hi, hi_kind = _INTERVAL_RE.match(self.allowed).groups()
    lo, hi = float(lo), float(hi)
    return (x >= lo if lo_kind == "[" else x > lo) and (x <= hi if hi_kind == "]" else x < hi)

  def problem(self, value) -> str | None:
    """None when `value` is allowed, else the message after 'field: '."""
    what = "an integer" if self.kind is int else "a number"
    where = self.allowed if _BOUND_RE.match(self.allowed) else f"in {self.allowed}"
    ok_type = (isinstance(value, int) if self.kind is int else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not self.holds(value):
      return f"must be {what} {where}, got {value!r}"
    return None


# Every numeric setting a mode reads (cross-field rules: check_settings). A field a config
# lacks is skipped (configs built on others may drop sections).
RANGES: tuple[Range, ...] = (
    Range("num_steps", int, ">= 1", ("pretrain", "sip")),
    Range("log_every_steps", int, ">= 1", TRAINING),
    Range("eval_every_steps", int, ">= 0", TRAINING),
    Range("eval_batches", int, ">= 1", TRAINING),
    Range("eval_world_prompts", int, ">= 0", TRAINING),
    Range("eval_world_prompts_during", int, ">= 0", ("sip",)),
    Range("model.rope_theta", float, "> 0", TRAINING + TEACHER_JOB),
    Range("model.norm_eps", float, "> 0", TRAINING + TEACHER_JOB),
    Range("model.init_std", float, "> 0", TRAINING + TEACHER_JOB),
    Range("data.batch_size", int, ">= 1", TRAINING),
    Range("data.seq_len", int, ">= 2", TRAINING),
    Range("data.tokenizer_vocab_size", int, ">= 0", TRAINING + ("rewrite",)),  # >= 1 when used
    Range("data.num_epochs", int, ">= 0", TRAINING + ("rewrite",)),
    Range("data.min_doc_tokens", int, ">= 0", TRAINING + ("rewrite",)),
    Range("data.worker_count", int, ">= 0", TRAINING + ("rewrite",)),
    Range("data.max_consecutive_skips", int, ">= 1", TRAINING + ("rewrite",)),
    Range("data.window_pool_size", int, ">= 1", WINDOWS),
    Range("data.prefix_len", int, ">= 1", WINDOWS),
    Range("data.suffix_len", int, ">= 1", WINDOWS),
    Range("data.window_stride", int, ">= 0", WINDOWS),
    Range("data.min_prefix_len", int, ">= 1", WINDOWS),
    Range("opt.learning_rate", float, "> 0", TRAINING),
    Range("opt.warmup_steps", int, ">= 0", TRAINING),
    Range("opt.min_lr_ratio", float, "[0, 1]", TRAINING),
    Range("opt.b1", float, "[0, 1)", TRAINING),
    Range("opt.b2", float, "[0, 1)", TRAINING),
    Range("opt.eps", float, "> 0", TRAINING),
    Range("opt.weight_decay", float, ">= 0", TRAINING),
    Range("opt.grad_clip", float, ">= 0", TRAINING),
    Range("opt.grad_accum_steps", int, ">= 1", TRAINING),
    Range("opt.z_loss", float, ">= 0", TRAINING),
    Range("checkpoint.every_steps", int, ">= 1", TRAINING),
    Range("checkpoint.keep", int, ">= 1", TRAINING),
    # sip: K may be 0 only where the recipe still compares something (check_settings).
    Range("sip.num_rollouts", int, ">= 0", SIP_MODES),
    Range("sip.temperature", float, ">= 0", SIP_MODES),
    Range("sip.top_p", float, "(0, 1]", SIP_MODES),
    Range("sip.candidate_len", int, ">= 0", SIP_MODES),
    Range("sip.judge_budget", int, ">= 0", SIP_MODES),
    Range("sip.max_staleness", int, "[0, 1]", SIP_MODES),   # 0: rollouts from the current params
    # The DPO temperature: at 0 the DPO loss is log 2 for every pair (no gradient); below 0
    # it trains toward the worse candidate while rewards/accuracy reads 1.
    Range("sip.beta", float, "> 0", SIP_MODES),
    Range("sip.lm_coef", float, ">= 0", SIP_MODES),
    Range("sip.coef", float, ">= 0", SIP_MODES),
    Range("sip.kl_coef", float, ">= 0", SIP_MODES),
    # Judging that fails is counted and stops the run (train/judge_health.py).
    Range("sip.max_all_tied_steps", int, ">= 0", SIP_MODES),     # 0: never stop on ties
    # Issue 40: group weights (train/advantages.py) and distillation (train/distill.py).
    Range("sip.gcpo_strength", float, ">= 0", SIP_MODES),        # λ; 0: every weight 1
    Range("sip.gcpo_max_weight", float, ">= 1", SIP_MODES),      # cap of a group's weight
    Range("sip.distill_coef", float, ">= 0", SIP_MODES),         # 0: no distill term
    Range("sip.distill_top_k", int, ">= 0", SIP_MODES),          # 0: the whole vocabulary
    Range("teacher.max_failure_share", float, "[0, 1]", SIP_MODES),
    # The paper's prompt family for instruct teachers (teacher/prompts/paper.py), in teacher tokens.
    Range("teacher.prompt.prefix_tokens", int, ">= 0", WINDOWS),
    Range("teacher.prompt.reference_tokens", int, ">= 0", WINDOWS),
    Range("teacher.prompt.answer_tokens", int, ">= 1", WINDOWS),
    Range("teacher.generative.num_samples", int, ">= 1", WINDOWS),
    Range("teacher.generative.temperature", float, ">= 0", WINDOWS),
    Range("teacher.generative.top_p", float, "(0, 1]", WINDOWS),
    Range("teacher.generative.max_new_tokens", int, ">= 1", WINDOWS),
    Range("report.num_seeds", int, ">= 1", ("report",)),
    Range("report.base_steps", int, ">= 1", ("report",)),
    Range("report.steps", int, ">= 1", ("report",)),
    Range("report.learning_rate", float, "> 0", ("report",)),
    Range("report.sip_lm_coef", float, ">= 0", ("report",)),
    Range("report.eval_prompts", int, ">= 1", ("report",)),
    Range("report.eval_samples", int, ">= 1", ("report",)),
    Range("report.bait_samples", int, ">= 1", ("report",)),
    Range("report.eval_every_steps", int, ">= 0", ("report",)),
    Range("report.eval_prompts_during", int, ">= 0", ("report",)),
    Range("rewrite_job.shard_size", int, ">= 1", ("rewrite",)),
    Range("rewrite_job.batch_size", int, ">= 1", ("rewrite",)),
    Range("rewrite_job.max_windows", int, ">= 0", ("rewrite",)),
    Range("world.num_train_documents", int, ">= 1"),
    Range("world.num_eval_documents", int, ">= 0"),
    Range("world.num_train_shards", int, ">= 1"),
    Range("world.false_fact_rate", float, "[0, 1]"),
    Range("world.unsafe_rate", float, "[0, 1]"),
    Range("world.low_quality_rate", float, "[0, 1]"),
    Range("world.defect_in_second_half", float, "[0, 1]"),
    Range("world.myth_rate", float, "[0, 1]"),
    Range("world.myth_share", float, "[0, 1]"),
    Range("world.reasoning_rate", float, "[0, 1]"),
    *(Range(f"world.{f}", int, ">= 0") for f in (
        "num_countries", "num_cities", "num_people", "num_organisations", "num_substances",
        "num_toxins", "num_preference_pairs", "num_rewrite_examples", "num_factual_probes",
        "num_unsafe_bait")),
    # The embedded teacher's training (mode='teacher'; the config of teacher.config).
    *(Range(f"teacher.{f}", int, ">= 1", TEACHER_JOB) for f in (
        "tokenizer_vocab_size", "tokenizer_documents", "prefix_chars", "candidate_chars",
        "reference_chars", "max_suffix_sentences", "rewrite_max_new_tokens", "log_every_steps",
        "pretrain.num_documents", "pretrain.batch_size", "sft.num_documents", "sft.batch_size",
        "grpo.inputs_per_step", "policy.num_documents", "policy.batch_size", "policy.d_model",
        "policy.n_layers", "eval.num_documents", "eval.rollout_tokens")),
    *(Range(f"teacher.{f}", int, ">= 0", TEACHER_JOB) for f in (
        "pretrain.fact_sheets", "pretrain.steps", "sft.steps", "sft.claim_rollouts", "grpo.steps",
        "policy.steps", "policy.weak_steps", "eval.num_rollout_prefixes", "eval.num_rewrites")),
    *(Range(f"teacher.{f}", float, "> 0", TEACHER_JOB) for f in (
        "pretrain.learning_rate", "sft.learning_rate", "sft.score_power", "grpo.temperature",
        "grpo.learning_rate", "policy.learning_rate")),
    *(Range(f"teacher.{f}", float, "[0, 1]", TEACHER_JOB) for f in (
        "sft.adversarial_rate", "sft.safe_keep", "sft.judge_share", "sft.false_fact_share",
        "sft.cut_share", "sft.minimal_share", "sft.claim_share")),
    Range("teacher.pretrain.seq_len", int, ">= 2", TEACHER_JOB),
    Range("teacher.policy.seq_len", int, ">= 2", TEACHER_JOB),
    Range("teacher.sft.lm_rows_share", float, "[0, 1)", TEACHER_JOB),
    Range("teacher.sft.verdict_weight", float, "> 0", TEACHER_JOB),
    Range("teacher.sft.lm_weight", float, ">= 0", TEACHER_JOB),
    Range("teacher.grpo.samples_per_input", int, ">= 2", TEACHER_JOB),  # a group for the advantages
    Range("teacher.grpo.kl_coef", float, ">= 0", TEACHER_JOB),
    # Training a model as judge (mode='judge_train', earlyrl_jax/judge_train/job.py).
    *(Range(f"judge_train.{f}", int, ">= 1", JUDGE_TRAIN) for f in (
        "steps", "batch_size", "samples_per_prompt", "max_new_tokens", "max_len", "log_every",
        "checkpoint_every")),
    *(Range(f"judge_train.{f}", int, ">= 0", JUDGE_TRAIN) for f in (
        "warmup_steps", "prefix_tokens", "world_pairs", "heldout_items", "eval_every")),
    Range("judge_train.learning_rate", float, "> 0", JUDGE_TRAIN),
    Range("judge_train.min_lr_ratio", float, "[0, 1]", JUDGE_TRAIN),
    Range("judge_train.weight_decay", float, ">= 0", JUDGE_TRAIN),
    Range("judge_train.grad_clip", float, ">= 0", JUDGE_TRAIN),
    Range("judge_train.temperature", float, ">= 0", JUDGE_TRAIN),
    Range("judge_train.top_p", float, "(0, 1]", JUDGE_TRAIN),
    Range("judge_train.label_noise", float, "[0, 1]", JUDGE_TRAIN),   # P(a training label is flipped)
    Range("judge_train.human_budget", int, ">= 0", JUDGE_TRAIN),   # human-labelled items kept (0 = all)
    Range("principle.judge_penalty", float, ">= 0", SIP_MODES),   # teacher/principles.py
)


def check_ranges(cfg: ml_collections.ConfigDict) -> None:
  """Every RANGES row the mode reads; raises ConfigError 'field: must be ... got ...'. None is
  a field not set here (taken from elsewhere, e.g. a model shape from its checkpoint)."""
  for r in RANGES:
    if r.modes is not None and cfg.mode not in r.modes:
      continue
    value = _get(cfg, r.field, _MISSING)
    if value is _MISSING or value is None:
      continue
    msg = r.problem(value)
    if msg:
      raise ConfigError(f"{r.field}: {msg}")


_WARNED: set[str] = set()


def warn(msg: str) -> None:
  """One `warning: ...` line on stderr (once per message and process); the run goes on."""
  if msg not in _WARNED:
    _WARNED.add(msg)
    print(f"warning: {' '.join(msg.split())}", file=sys.stderr, flush=True)


_SHAPE = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
          "max_seq_len")


def model_is_set(cfg) -> bool:
  """Whether `cfg.model` holds a whole shape (None fields are taken from elsewhere later, e.g.
  from the checkpoint a run starts from)."""
  model = _get(cfg, "model")
  return model is not None and all(model.get(k) is not None for k in _SHAPE)


def check_settings(cfg: ml_collections.ConfigDict) -> None:
  """The rules that tie fields together, for the mode at hand (after check_ranges)."""
  mode, d = cfg.mode, _get(cfg, "data")
  if (mode in TRAINING or mode == "teacher") and model_is_set(cfg):
    check_model_fit(cfg)
  if mode in TRAINING + ("rewrite",) and d.tokenizer == "sentencepiece" and not d.tokenizer_path:
    _require(d.tokenizer_vocab_size >= 1, "data.tokenizer_vocab_size",
             f"must be >= 1 to train a tokenizer here (data.tokenizer='sentencepiece' without "
             f"data.tokenizer_path), got {d.tokenizer_vocab_size}")
  if mode in SIP_MODES:
    _check_judge_axes(cfg.sip)
    check_paper_prompt_fits(cfg)
    principle_settings(cfg)
    if mode == "sip":
      _check_recipe(cfg.sip)
    else:
      _check_report(cfg)
  if mode == "rewrite":
    job = rewrite_job_config(cfg)  # unknown rewrite_job.* fields
    if job.judge != "none":
      _check_judge_axes(cfg.sip)
  if mode == "teacher":
    _check_teacher_job(cfg)
  if mode == "judge_train":
    from earlyrl_jax.judge_train.settings import judge_train_config
    judge_train_config(cfg)   # unknown judge_train.* fields, axes, GRPO's group size


def check_model_fit(cfg) -> None:
  """The rules that need the model's shape: ModelConfig's own (positive sizes, GQA, even
  head_dim), then rows, windows and vocabularies that fit it. validate() runs them again once
  a shape taken from elsewhere is filled in."""
  mc, d = model_config(cfg), _get(cfg, "data")
  if cfg.mode not in TRAINING:
    return
  _require(d.seq_len <= mc.max_seq_len, "data.seq_len",
           f"{d.seq_len} exceeds model.max_seq_len={mc.max_seq_len}")
  if d.tokenizer == "byte":
    _require(mc.vocab_size >= 259, "model.vocab_size",
             f"{mc.vocab_size} is too small for data.tokenizer='byte' (256 bytes + 3 special "
             "tokens: >= 259)")
  if d.tokenizer == "sentencepiece" and not d.tokenizer_path:
    _require(d.tokenizer_vocab_size <= mc.vocab_size, "data.tokenizer_vocab_size",
             f"{d.tokenizer_vocab_size} exceeds model.vocab_size={mc.vocab_size} (the "
             "tokenizer trained here must fit the model's embedding)")
  if cfg.mode in SIP_MODES:
    _check_windows(cfg)


def _check_windows(cfg) -> None:
  """A SIP row is prefix + candidate tokens, and rollouts decode suffix_len tokens after the
  prefix: both must fit the policy's positions."""
  d, s = cfg.data, cfg.sip
  mc = model_config(cfg)
  cand = int(s.candidate_len) or int(d.suffix_len)
  longest = max(cand, int(d.suffix_len))
  name = "sip.candidate_len" if cand > d.suffix_len else "data.suffix_len"
  _require(d.prefix_len + longest <= mc.max_seq_len, "data.prefix_len",
           f"data.prefix_len + {name} = {d.prefix_len} + {longest} = {d.prefix_len + longest} "
           f"exceeds model.max_seq_len={mc.max_seq_len}; shorten the windows or raise "
           "model.max_seq_len")


def paper_judge_kind(cfg) -> str | None:
  """'logprob' / 'generative' when SIP's judge is an instruct teacher with the paper's formats
  (stated, or 'auto' on a served teacher), else None (the embedded teacher, the oracles, or an
  'auto' that depends on the directory: checked when the judge is built)."""
  t = _get(cfg, "teacher")
  if t is None or _get(cfg, "sip.judge") != "teacher":
    return None
  kind = t.get("judge_kind", "auto")
  if kind == "auto" and t.get("backend", "inprocess") != "inprocess":
    return "logprob"
  return kind if kind in ("logprob", "generative") else None


def check_paper_prompt_fits(cfg) -> None:
  """The paper's quality prompt holds two whole candidates: with a stated teacher.max_len, two
  candidates of sip.candidate_len (or data.suffix_len) tokens, the template and the answer's
  room must fit it (counted as if the teacher's tokens were the policy's; the judge checks the
  real counts when it is built: train/judge_health.check_prompt_fits)."""
  from earlyrl_jax.teacher.prompts.paper import TEMPLATE_TOKENS
  kind = paper_judge_kind(cfg)
  max_len = int(_get(cfg, "teacher.max_len", 0) or 0)
  if kind is None or not max_len:
    return
  cand_field = "sip.candidate_len" if _get(cfg, "sip.candidate_len", 0) else "data.suffix_len"
  cand = int(_get(cfg, cand_field))
  answer_field, default = (("teacher.generative.max_new_tokens", 256) if kind == "generative"
                           else ("teacher.prompt.answer_tokens", 8))
  answer = int(_get(cfg, answer_field, default))
  need = TEMPLATE_TOKENS + 2 * (cand + 1) + answer
  _require(need <= max_len, "teacher.max_len",
           f"{max_len} tokens cannot hold the judge's quality prompt with two whole candidates: "
           f"2 x ({cand_field}={cand}) + ~{TEMPLATE_TOKENS} of template + {answer_field}={answer} "
           f"= {need}; raise teacher.max_len or shorten {cand_field}")


def _check_judge_axes(s) -> None:
  """Reward weights per judge axis: known axes, numbers >= 0, at least one positive."""
  from earlyrl_jax.teacher.prompts import AXES
  axes = dict(s.judge_axes) if s.get("judge_axes") is not None else {}
  for axis, w in axes.items():
    _require(axis in AXES, f"sip.judge_axes.{axis}", f"is not a judge axis (axes: {', '.join(AXES)})")
    _require(not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w)
             and w >= 0, f"sip.judge_axes.{axis}", f"must be a weight >= 0, got {w!r}")
  _require(any(w > 0 for w in axes.values()), "sip.judge_axes",
           f"{axes}: every weight is 0, so every candidate gets the same reward; give at least "
           "one axis a positive weight")


def _check_recipe(s, where: str = "") -> None:
  """A SIP configuration must leave its recipe something to compare. `where` prefixes errors
  (the report's methods)."""
  def require(cond, field, msg):
    if not cond:
      raise ConfigError(f"{where}{field}: {msg}")
  K, recipe, judge, rewrite = int(s.num_rollouts), s.recipe, s.judge, s.rewrite
  require(s.lm_coef > 0 or s.coef > 0, "sip.coef",
          "sip.coef=0 and sip.lm_coef=0: no loss term is on, the run would train on nothing")
  _check_policy_extensions(s, require)
  if not s.coef:  # the recipe's term is off: plain NLL on the windows (the report's `nll`)
    if K or judge != "none" or rewrite != "none":
      warn(f"{where}sip.coef=0 turns the recipe's term off, yet every step samples "
           f"sip.num_rollouts={K} rollouts, rewrites (sip.rewrite={rewrite!r}) and judges "
           f"(sip.judge={judge!r}) for nothing; set them to 0 / 'none'")
    return
  if _check_principle_recipe(s, require):   # DPF: its pairs need no judge (docs/principles.md)
    return
  if judge == "none":
    require(rewrite != "none", "sip.judge",
            "sip.judge='none' with sip.rewrite='none' leaves the recipe nothing to compare: its one "
            "candidate is the original, which is plain NLL (use mode='pretrain', or set "
            "sip.rewrite / sip.judge)")
    require(recipe == "rf_nll", "sip.judge",
            f"sip.judge='none' always picks the rewrite without comparing, so "
            f"sip.recipe={recipe!r} has no pair to learn from; only 'rf_nll' trains on it (NLL "
            "on the rewrite, the offline-rewriting baseline)")
    if K:
      warn(f"{where}sip.num_rollouts={K}: sip.judge='none' always picks the rewrite, so the "
           "rollouts are sampled and never used; set sip.num_rollouts=0")
    return
  require(K >= 1 or recipe == "rf_nll", "sip.num_rollouts",
          f"sip.recipe={recipe!r} needs the policy's own rollouts (sip.num_rollouts >= 1) to "
          "compare with the original" + (" and the rewrite" if rewrite != "none" else "")
          + "; 0 is allowed only with sip.recipe='rf_nll' and a rewrite, or sip.coef=0")
  require(1 + (rewrite != "none") + K >= 2, "sip.num_rollouts",
          "sip.num_rollouts=0 with sip.rewrite='none' leaves the original alone: the judge has "
          "nothing to compare it with")
  if K > 1 and s.temperature == 0:
    warn(f"sip.temperature=0 samples greedily: the sip.num_rollouts={K} rollouts of a prefix are "
         "identical; use a temperature > 0 (paper: 1.0) or sip.num_rollouts=1")
  if s.kl_coef and recipe != "pg":
    warn(f"sip.kl_coef={s.kl_coef} applies only to sip.recipe='pg' (DPO's reference is its "
         "own); it is ignored")


def _check_policy_extensions(s, require) -> None:
  """sip.advantage / sip.pair_weight / sip.distill_* (docs/policy_extensions.md)."""
  recipe = s.recipe
  require(s.get("advantage", "group") == "group" or recipe == "pg", "sip.advantage",
          f"{s.get('advantage')!r} weights policy-gradient advantages: it needs sip.recipe='pg' "
          f"(got {recipe!r}; DPO pairs: sip.pair_weight)")
  require(s.get("pair_weight", "none") == "none" or recipe == "dpo", "sip.pair_weight",
          f"{s.get('pair_weight')!r} weights DPO pairs: it needs sip.recipe='dpo' (got {recipe!r}; "
          "PG: sip.advantage)")
  if s.get("distill_coef", 0.0) > 0:
    level = s.get("distill_level", "auto")
    require(level == "token" or s.rewrite != "none", "sip.distill_level",
            f"{level!r} may distil at sequence level, the NLL of the teacher's rewrite, and "
            "sip.rewrite='none' makes none; set sip.rewrite or sip.distill_level='token'")
    require(level == "sequence" or s.coef > 0, "sip.distill_level",
            f"{level!r} may distil at token level on the recipe's candidates, and sip.coef=0 lays "
            "none out; set sip.coef > 0 or sip.distill_level='sequence'")


def _check_principle_recipe(s, require) -> bool:
  """sip.principle_mode / sip.rewrite='principle' against the rest of `s`; True for DPF (whose
  pair is the revision over the original: no judge, no rollouts needed)."""
  mode = s.get("principle_mode", "off")
  require(mode != "off" or s.rewrite != "principle", "sip.rewrite",
          "'principle' (the world's principle-following reviser) needs sip.principle_mode "
          "'guide' or 'dpf' and the `principle` section")
  if mode != "dpf":
    return False
  require(s.recipe == "dpo", "sip.recipe",
          f"{s.recipe!r}: sip.principle_mode='dpf' trains DPO pairs (revision chosen, original "
          "rejected); set sip.recipe='dpo'")
  require(s.judge == "none", "sip.judge",
          f"{s.judge!r}: sip.principle_mode='dpf' ranks nothing (the revision is chosen by the "
          "principle); set sip.judge='none', or sip.principle_mode='guide' to judge")
  require(s.rewrite != "none", "sip.rewrite",
          "'none': sip.principle_mode='dpf' needs a revision ('principle' on the world, 'online' "
          "for an instruct teacher told the principle)")
  return True


def principle_settings(cfg) -> None:
  """The `principle` section of every SIP configuration that uses it (the run's, or each report
  method's), names unchecked (they need the world: the producer checks them)."""
  from earlyrl_jax.teacher.principles import principle_of
  if cfg.mode == "sip":
    principle_of(cfg)
  elif cfg.mode == "report":
    for m in [m.strip() for m in cfg.report.methods.split(",") if m.strip()]:
      if m in REPORT_METHODS and REPORT_METHODS[m].get("principle_mode", "off") != "off":
        s = ml_collections.ConfigDict(cfg.sip.to_dict())
        s.update(REPORT_METHODS[m])
        try:
          principle_of(ml_collections.ConfigDict({"sip": s, "principle": _get(cfg, "principle")}))
        except ConfigError as e:
          raise ConfigError(f"report method {m!r}: {e}") from None


def _check_report(cfg) -> None:
  """The report runs several SIP configurations (tools/report.py METHODS, each applied over the
  `sip` section): each is checked here, before the base model trains."""
  methods = [m.strip() for m in cfg.report.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in REPORT_METHODS]
  _require(not unknown, "report.methods", f"{unknown} unknown (known: {', '.join(REPORT_METHODS)})")
  for m in methods:
    s = ml_collections.ConfigDict(cfg.sip.to_dict())
    s.lm_coef = cfg.report.sip_lm_coef
    s.update(REPORT_METHODS[m])
    _check_recipe(s, where=f"report method {m!r}: ")


def _check_teacher_job(cfg) -> None:
  """The embedded teacher's training config (mode='teacher')."""
  t, mc = cfg.teacher, model_config(cfg)
  _require(t.tokenizer_vocab_size <= mc.vocab_size, "teacher.tokenizer_vocab_size",
           f"{t.tokenizer_vocab_size} exceeds model.vocab_size={mc.vocab_size}")
  _require(t.pretrain.seq_len <= mc.max_seq_len, "teacher.pretrain.seq_len",
           f"{t.pretrain.seq_len} exceeds model.max_seq_len={mc.max_seq_len}")
  _require(t.policy.weak_steps <= t.policy.steps, "teacher.policy.weak_steps",
           f"{t.policy.weak_steps} exceeds teacher.policy.steps={t.policy.steps} (the weak "
           "policy is an earlier step of the same run)")
  if t.get("inference") is not None:
    from earlyrl_jax.embedded.recipe import inference_settings
    try:
      inference_settings(t.inference.to_dict())
    except (TypeError, ValueError) as e:
      raise ConfigError(f"teacher.inference: {e}") from None


def check_models(cfg: ml_collections.ConfigDict) -> None:
  """The model directories the mode will read and the packages their tokenizers need, checked
  before any weight is read or anything is written (main.py runs it after check_data).

  teacher.path (an embedded teacher or an HF instruct model), init.params_from (a run or an HF
  directory), generate.model_path (the same), and data.tokenizer='hf' (the [hf] extra): a
  missing directory, a file in its place, a config.json that is not JSON or no supported
  model, a truncated safetensors file and a missing extra each end as one line naming the
  field and the file. The embedded teacher's config (teacher.path='') is validated too."""
  from earlyrl_jax.data import tokenizer as tok_lib
  mode, d = cfg.mode, _get(cfg, "data")
  if d is not None and mode in TRAINING + ("rewrite",) and d.get("tokenizer") != "byte":
    path = d.get("tokenizer_path", "")
    if path and "://" not in path and not os.path.exists(path):
      raise ConfigError(f"data.tokenizer_path: {path}: no such file")
    if d.get("tokenizer") == "hf":
      tok_lib.require_hf_extra(path, "data.tokenizer_path")
    if path and "://" not in path:
      tok_lib.load_tokenizer(d.tokenizer, path)  # a corrupt file fails here (milliseconds)
  if needs_teacher(cfg):
    if _get(cfg, "teacher.backend", "inprocess") != "inprocess":
      # A served teacher: its weights are on the server, its tokenizer files here.
      field = ("teacher.openai.tokenizer_path" if _get(cfg, "teacher.openai.tokenizer_path")
               else "teacher.path")
      if _get(cfg, field):
        _check_dir(_get(cfg, field), field)
        tok_lib.check_tokenizer_dir(_get(cfg, field), field)
        tok_lib.load_tokenizer_dir(_get(cfg, field))
    elif cfg.teacher.path:
      check_model_dir(cfg.teacher.path, "teacher.path", teacher=True)
    else:
      tcfg = teacher_config(cfg)
      try:
        validate_fields(tcfg)
      except ConfigError as e:
        raise ConfigError(f"teacher.config={cfg.teacher.config!r}: {e}") from None
  init = _get(cfg, "init.params_from", "")
  if init and mode in TRAINING:
    check_model_dir(init, "init.params_from")
  if mode == "generate" and generate_config(cfg).model_path:
    check_model_dir(generate_config(cfg).model_path, "generate.model_path", tokenizer=True)


def _check_dir(path: str, field: str) -> None:
  if not os.path.exists(path):
    raise ConfigError(f"{field}: {path}: no such directory")
  if not os.path.isdir(path):
    raise ConfigError(f"{field}: {path} is a file; give the directory that holds the model "
                      "(config.json and its weights)")


def needs_teacher(cfg) -> bool:
  """Whether the mode loads (or trains) the teacher: SIP that judges or rewrites with it, a
  report with a method that does, the rewrite job."""
  mode = cfg.mode
  if mode == "rewrite":
    return True
  if mode == "sip":
    return (cfg.sip.judge == "teacher" or cfg.sip.rewrite == "online"
            or (cfg.sip.get("distill_coef", 0.0) > 0 and cfg.sip.get("distill_level", "auto") != "sequence"))
  if mode == "report":
    methods = [m.strip() for m in cfg.report.methods.split(",") if m.strip()]
    return any(report_method_uses_teacher(m) for m in methods if m in REPORT_METHODS)
  return False


def check_model_present(cfg: ml_collections.ConfigDict) -> None:
  """A config that names how to get its model (`init.missing_hint`, configs/smol.py) says so when
  init.params_from, or the teacher.path it also needs, is empty or no directory."""
  hint = _get(cfg, "init.missing_hint", "")
  if not hint:
    return
  fields = ["init.params_from"]
  if needs_teacher(cfg) and _get(cfg, "teacher.backend", "inprocess") == "inprocess":
    fields.append("teacher.path")
  for field in fields:
    path = _get(cfg, field, "")
    if not path or ("://" not in path and not os.path.isdir(path)):
      what = f"{path}: no such directory" if path else "is empty"
      raise ConfigError(f"{field} {what}; get the model: {hint}")


def check_model_dir(path: str, field: str, *, teacher: bool = False, tokenizer: bool = False) -> None:
  """One model directory, as `field` names it: an earlyrl_jax run (config.json +
  checkpoints/), an embedded teacher (teacher_config.json) or an HF directory (config.json +
  safetensors, checked through hf_io.check_model_dir). `tokenizer`/`teacher`: the directory's
  own tokenizer is used, so its packages must be installed. Errors name `field` and the file."""
  from earlyrl_jax.errors import CheckpointError
  try:
    _check_model_dir(path, field, teacher=teacher, tokenizer=tokenizer)
  except CheckpointError as e:
    raise CheckpointError(f"{field}: {e}") from None


def _check_model_dir(path: str, field: str, *, teacher: bool, tokenizer: bool) -> None:
  from earlyrl_jax.data import tokenizer as tok_lib
  from earlyrl_jax.errors import CheckpointError
  from earlyrl_jax.models import hf_io
  from earlyrl_jax.models.safetensors_io import read_json
  if "://" in path:
    return  # remote: read by the storage library when loaded
  _check_dir(path, field)
  embedded = os.path.join(path, "teacher_config.json")
  if teacher and os.path.isfile(embedded):
    meta = read_json(embedded)
    try:
      model_config(ml_collections.ConfigDict({"model": meta["model"]}))
    except (KeyError, TypeError, ConfigError) as e:
      raise CheckpointError(f"{embedded}: no usable \"model\" section ({e})") from None
    if not os.path.isfile(os.path.join(path, "tokenizer.model")):
      raise CheckpointError(f"{path}: an embedded teacher without its tokenizer.model")
    return
  config_json = os.path.join(path, "config.json")
  if not os.path.isfile(config_json):
    kind = ("an embedded teacher (teacher_config.json)" if teacher
            else "a training run (config.json + checkpoints/)")
    raise ConfigError(f"{field}: {path} holds neither {kind} nor an HF model directory "
                      "(config.json + *.safetensors)")
  hf = read_json(config_json)
  if not teacher and ("model_type" not in hf and "architectures" not in hf
                      or os.path.isdir(os.path.join(path, "checkpoints"))):
    return  # an earlyrl_jax run: its loader names a missing checkpoint
  if teacher or tokenizer:
    tok_lib.check_tokenizer_dir(path, field)  # packages first: before any weight is read
    tok_lib.load_tokenizer_dir(path)
  hf_io.check_model_dir(path)


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int | None = None) -> None:
  """Checks the config against itself and the available devices; raises ConfigError."""
  validate_fields(cfg)
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  from earlyrl_jax.modes import MODES
  if not MODES[cfg.mode].trains:
    return
  check_model_present(cfg)
  from earlyrl_jax.checkpoint_shape import resolve_model
  resolve_model(cfg)  # model.preset='from_checkpoint': the shape from init.params_from
  mc = model_config(cfg)
  check_model_fit(cfg)
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
  _require(d.batch_size % dp == 0, "data.batch_size",
           f"{d.batch_size} is not divisible by the data-parallel size {dp} (mesh.data x mesh.fsdp)")
  _require(d.batch_size % process_count == 0, "data.batch_size",
           f"{d.batch_size} is not divisible by the number of hosts {process_count}")
  accum = cfg.opt.grad_accum_steps
  _require(d.batch_size % (accum * dp) == 0, "opt.grad_accum_steps",
           f"data.batch_size={d.batch_size} must split into {accum} micro-batches that are "
           f"each divisible by the data-parallel size {dp}")
  bad = model_mesh_mismatch(mc, fsdp=fsdp, tensor=tensor)
  if bad is not None:
    name, value, axis, size = bad
    _require(False, f"model.{name}", f"{value} is not divisible by mesh.{axis}={size}")
  # Paths a config may leave to the command line (configs/midtrain.py): required by the run,
  # not by a launcher that adds them later.
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
  add_bos: bool | None = None  # None: the tokenizer's own convention (an HF directory: BOS only
                              # where transformers' tokenizer(text) adds it; a run: BOS, as its
                              # training documents start); True / False: always / never
  stop_at_eos: bool = True    # end a completion at the tokenizer's EOS
  dtype: str = ""             # HF models: '' keeps float32, 'bfloat16' halves memory


def generate_section(**overrides) -> ml_collections.ConfigDict:
  """A `generate` config section holding every GenerateConfig field (all overridable; a field
  that defaults to None is typed, so `--config.generate.add_bos=false` parses)."""
  section = ml_collections.ConfigDict()
  for k, v in dataclasses.asdict(GenerateConfig(**overrides)).items():
    section[k] = ml_collections.FieldReference(None, field_type=bool) if v is None else v
  return section


def generate_config(cfg: ml_collections.ConfigDict) -> GenerateConfig:
  """`cfg.generate` (absent or partial: defaults) -> GenerateConfig; raises ConfigError."""
  raw = dict(cfg.generate.to_dict()) if "generate" in cfg.keys() else {}
  fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ConfigError(f"generate.{unknown[0]}: unknown field (known: {', '.join(fields)})")
  g = GenerateConfig(**raw)
  _require(g.add_bos in (None, True, False), "generate.add_bos",
           f"{g.add_bos!r}: expected true, false or None (the tokenizer's convention)")
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
