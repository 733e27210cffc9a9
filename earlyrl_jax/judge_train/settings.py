"""The `judge_train` config section (mode='judge_train'): its fields, defaults and the rules
between them. Kept apart from the job so config validation (configs.py) reads it without
importing the trainer; values are checked by configs.RANGES / ENUM_FIELDS."""
from __future__ import annotations

import dataclasses

import ml_collections

from earlyrl_jax.errors import ConfigError

AXES = ("quality", "factuality", "safety")
METHODS = ("sft", "grpo", "bt")
VARIANTS = ("logprob", "generative")


@dataclasses.dataclass(frozen=True)
class JudgeTrainConfig:
  """`c.judge_train` (configs/judge_train.py documents each field)."""
  teacher_path: str = ""
  data: str = ""
  heldout: str = ""
  out_dir: str = ""
  method: str = "sft"
  variant: str = "logprob"
  eval_variant: str = "logprob"
  axes: str = "quality,factuality,safety"
  steps: int = 100
  learning_rate: float = 1e-5
  warmup_steps: int = 10
  min_lr_ratio: float = 1.0
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  batch_size: int = 8
  samples_per_prompt: int = 4
  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 16
  max_len: int = 1024
  prefix_tokens: int = 512
  label_noise: float = 0.0
  world_pairs: int = 0
  heldout_items: int = 48
  eval_every: int = 0
  log_every: int = 10
  checkpoint_every: int = 50
  human_budget: int = 0
  ai_labels: str = "none"

  def axis_list(self) -> list[str]:
    return [a.strip() for a in self.axes.split(",") if a.strip()]


def section(**overrides) -> ml_collections.ConfigDict:
  """A `judge_train` config section with every field (defaults, then `overrides`)."""
  return ml_collections.ConfigDict(dataclasses.asdict(JudgeTrainConfig(**overrides)))


def judge_train_config(cfg) -> JudgeTrainConfig:
  """`cfg.judge_train` -> JudgeTrainConfig; unknown fields and cross-field rules as ConfigError
  (values: RANGES and ENUM_FIELDS in configs.py, checked with every other setting)."""
  raw = dict(cfg.judge_train.to_dict()) if "judge_train" in cfg.keys() else {}
  known = {f.name for f in dataclasses.fields(JudgeTrainConfig)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ConfigError(f"judge_train.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
  jc = JudgeTrainConfig(**raw)
  bad = [a for a in jc.axis_list() if a not in AXES]
  if bad or not jc.axis_list():
    raise ConfigError(f"judge_train.axes: {jc.axes!r}: expected a comma-separated subset of {AXES}")
  if jc.method == "grpo" and jc.samples_per_prompt < 2:
    raise ConfigError(f"judge_train.samples_per_prompt: GRPO needs a group of >= 2 samples per "
                      f"prompt for its advantages, got {jc.samples_per_prompt}")
  if jc.ai_labels != jc.ai_labels.strip() or not jc.ai_labels:
    raise ConfigError(f"judge_train.ai_labels: {jc.ai_labels!r}: expected 'none', 'self' or an HF "
                      "judge directory")
  if jc.ai_labels != "none" and jc.human_budget == 0:
    raise ConfigError(f"judge_train.ai_labels: {jc.ai_labels!r} labels the items beyond "
                      "judge_train.human_budget, which is 0 (all items keep their human labels); "
                      "set human_budget > 0 or ai_labels='none'")
  return jc
