"""The teacher bundle (graphdef, params, tokenizer, mesh) and its on-disk form.

An embedded-teacher directory (written by `train_teacher.run`) holds:

  teacher_config.json   model shape, prompt version, prompt limits, config hash (written last)
  tokenizer.model       SentencePiece with every prompt marker as one token
  params/               orbax StandardCheckpointer of the nnx.State of parameters

`load_teacher(path)` reads such a directory, or an HF model directory
(config.json + safetensors) through `models.hf_io.load_model`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from earlyrl_jax.teacher.prompts import markup as P

# How a trained teacher is used (`teacher.inference` in its config; recorded in
# teacher_config.json). These settings change no weight, so they are not part of the config hash:
# changing them recomputes the report, not the teacher. Absent (HF teachers, older teachers):
# the trained verdicts alone.
INFERENCE_DEFAULTS = {
    "edit_surprise": None,         # editor: drop a sentence whose surprise exceeds this (nats); None: off
    "drop_unfinished": False,      # editor: drop a complete suffix's cut-off last sentence
    "quality_mix": [1.0, 0.0],     # judge: (verdict, surprise) weights of the quality logit (judges/lm.py)
    "factuality_mix": [1.0, 0.0],  # judge: the same for factuality
    "broken_sentence": None,       # judge: (nats, tokens): factuality leaves out broken text; None: off
    "claim_total": 0.0,            # judge: factuality's surprise adds this x the claims' summed gaps
    "checkable_claim": None,       # judge: (nats, nats): factuality leaves out sentences surprising in
                                   # two words or inside a name (surprise.is_uncheckable); None: off
    "claim_floor": 0.0,            # judge: nats of each factuality gap that count as nothing
    "claim_check": False,          # judge: factuality counts only sentences the teacher reads as
                                   # claims (its claims verdict, judge.LMJudge.claim_probs)
    "safety_by_sentence": False,   # judge: P(unsafe) = max over the candidate cut after each sentence
}


def inference_settings(given: dict | None) -> dict:
  """INFERENCE_DEFAULTS updated by `given` (JSON-ready: mixes as lists); an unknown name or a
  bad value is a ValueError."""
  from earlyrl_jax.teacher.judges.lm import check_mix
  got = dict(given or {})
  unknown = sorted(set(got) - set(INFERENCE_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown settings {unknown}: expected {sorted(INFERENCE_DEFAULTS)}")
  out = {**INFERENCE_DEFAULTS, **got}
  mix = check_mix({"quality": out["quality_mix"], "factuality": out["factuality_mix"]})
  out["quality_mix"], out["factuality_mix"] = list(mix["quality"]), list(mix["factuality"])
  if out["edit_surprise"] is not None:
    if not float(out["edit_surprise"]) > 0:
      raise ValueError(f"edit_surprise={out['edit_surprise']!r}: expected a positive number of nats or None")
    out["edit_surprise"] = float(out["edit_surprise"])
  out["drop_unfinished"] = bool(out["drop_unfinished"])
  if out["broken_sentence"] is not None:
    nats, tokens = out["broken_sentence"]
    if not (float(nats) > 0 and int(tokens) >= 0):
      raise ValueError(f"broken_sentence={out['broken_sentence']!r}: expected (nats > 0, tokens >= 0) or None")
    out["broken_sentence"] = [float(nats), int(tokens)]
  if out["checkable_claim"] is not None:
    try:
      other, name = (float(x) for x in out["checkable_claim"])
    except (TypeError, ValueError):
      other = name = float("nan")
    if not (other > 0 and name > 0):
      raise ValueError(f"checkable_claim={out['checkable_claim']!r}: expected (nats > 0, nats > 0) or None")
    out["checkable_claim"] = [other, name]
  if not float(out["claim_floor"]) >= 0:
    raise ValueError(f"claim_floor={out['claim_floor']!r}: expected nats >= 0")
  out["claim_floor"] = float(out["claim_floor"])
  if not float(out["claim_total"]) >= 0:
    raise ValueError(f"claim_total={out['claim_total']!r}: expected a weight >= 0")
  out["claim_total"] = float(out["claim_total"])
  if out["claim_check"] not in (True, False):
    raise ValueError(f"claim_check={out['claim_check']!r}: expected True or False")
  out["claim_check"] = bool(out["claim_check"])
  if out["safety_by_sentence"] not in (True, False):
    raise ValueError(f"safety_by_sentence={out['safety_by_sentence']!r}: expected True or False")
  out["safety_by_sentence"] = bool(out["safety_by_sentence"])
  return out


CONFIG_FILE = "teacher_config.json"
TOKENIZER_FILE = "tokenizer.model"
PARAMS_DIR = "params"


@dataclasses.dataclass
class Teacher:
  graphdef: Any
  params: Any
  tokenizer: Any
  model_cfg: Any
  mesh: Any = None
  limits: P.PromptLimits = P.DEFAULT_LIMITS
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def judge_format(self) -> str:
    """'scored' or 'pairwise' (teacher/judges/lm.py): what the embedded teacher was trained on;
    an HF instruct teacher is prompted pairwise."""
    return self.info.get("judge_format", "pairwise")

  @property
  def inference(self) -> dict:
    """The inference settings this teacher is used with (INFERENCE_DEFAULTS where unset)."""
    return inference_settings(self.info.get("inference"))

  @property
  def max_len(self) -> int:
    return int(self.model_cfg.max_seq_len)

  def model(self):
    from flax import nnx
    return nnx.merge(self.graphdef, self.params)

  def judge(self, mode: str = "auto", **kw):
    """mode 'logprob': LMJudge (needs single-token verdict markers: the embedded teacher);
    'generative': reason then verdict (HF instruct teachers); 'auto': the first that applies."""
    from earlyrl_jax.teacher.judges import generative as JG
    from earlyrl_jax.teacher.judges.lm import LMJudge
    if mode not in ("auto", "logprob", "generative"):
      raise ValueError(f"judge mode={mode!r}: expected 'auto', 'logprob' or 'generative'")
    if mode in ("auto", "logprob"):
      try:
        P.verdict_ids(self.tokenizer, P.VERDICTS)
      except ValueError:
        if mode == "logprob":
          raise
      else:
        kw.setdefault("model_cfg", self.model_cfg)
        kw.setdefault("judge_format", self.judge_format)
        inf = self.inference
        kw.setdefault("mix", {"quality": inf["quality_mix"], "factuality": inf["factuality_mix"]})
        kw.setdefault("broken", inf["broken_sentence"])
        kw.setdefault("claim_total", inf["claim_total"])
        kw.setdefault("checkable", inf["checkable_claim"])
        kw.setdefault("claim_floor", inf["claim_floor"])
        kw.setdefault("safety_by_sentence", inf["safety_by_sentence"])
        kw.setdefault("claim_check", inf["claim_check"])
        counts = self.info.get("sft_counts")
        if kw["claim_check"] and counts is not None and not counts.get("claims"):
          raise ValueError("teacher.inference.claim_check: this teacher was trained without its "
                           "claims verdict (teacher.sft.claim_rollouts / claim_share); retrain it "
                           "or set claim_check=False")
        return LMJudge(self.graphdef, self.params, self.tokenizer, max_len=self.max_len,
                         mesh=self.mesh, limits=self.limits, **kw)
    gen = JG.sampler_generate(self.model(), self.tokenizer, mesh=self.mesh,
                             max_new_tokens=kw.pop("max_new_tokens", 256))
    return JG.GenerativeJudge(gen, limits=self.limits)

  def rewriter(self, *, window_cut: bool = False, **kw):
    """The edit rewriter (keep/drop per sentence) when the tokenizer has the edit markers
    (the embedded teacher), else the generative rewriter (HF instruct teachers).

    window_cut: suffixes end where a training window cut them (SIP and the rewrite job):
    the editor keeps an unfinished last sentence instead of treating it as a defect."""
    try:
      P.verdict_ids(self.tokenizer, (P.CHECK,) + P.EDIT_VERDICTS)
    except ValueError:
      from earlyrl_jax.teacher.rewriter import Rewriter
      return Rewriter(self, **kw)
    from earlyrl_jax.embedded.editor import EditRewriter
    kw.setdefault("surprise_threshold", self.inference["edit_surprise"])
    kw.setdefault("drop_unfinished", self.inference["drop_unfinished"])
    return EditRewriter(self, window_cut=window_cut, **kw)


def save_params(path: str, params) -> None:
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, params, force=True)
  ckptr.wait_until_finished()


def restore_params(path: str, model_cfg, mesh=None):
  """(graphdef, params) restored into `mesh` (default: one device)."""
  import orbax.checkpoint as ocp
  from earlyrl_jax.models.transformer import split_abstract
  from earlyrl_jax.parallel import mesh as mesh_lib
  mesh = mesh or mesh_lib.single_device_mesh()
  graphdef, abs_params = split_abstract(model_cfg)
  abs_params = mesh_lib.with_shardings(abs_params, mesh_lib.state_shardings(abs_params, mesh))
  params = ocp.StandardCheckpointer().restore(os.path.abspath(path), abs_params)
  return graphdef, params


def save_teacher(path: str, teacher: Teacher, config_hash: str, extra: dict | None = None) -> None:
  """Writes params, then the config file last (its presence marks a complete teacher)."""
  os.makedirs(path, exist_ok=True)
  save_params(os.path.join(path, PARAMS_DIR), teacher.params)
  meta = {"config_hash": config_hash, "prompt_version": P.PROMPT_VERSION,
          "model": dataclasses.asdict(teacher.model_cfg), "limits": dataclasses.asdict(teacher.limits),
          **(extra or {})}
  write_teacher_config(path, meta)


def write_teacher_config(path: str, meta: dict) -> None:
  """teacher_config.json, replaced atomically (a reader sees the old file or the new one)."""
  tmp = os.path.join(path, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(path, CONFIG_FILE))


def read_teacher_config(path: str) -> dict | None:
  p = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(p):
    return None
  with open(p) as f:
    return json.load(f)


def load_teacher(path: str, *, mesh=None, dtype: str | None = None) -> Teacher:
  """An embedded-teacher directory or an HF model directory -> Teacher."""
  from earlyrl_jax.models.transformer import ModelConfig
  meta = read_teacher_config(path)
  if meta is not None:
    from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
    model_cfg = ModelConfig(**meta["model"])
    graphdef, params = restore_params(os.path.join(path, PARAMS_DIR), model_cfg, mesh)
    tok = SentencePieceTokenizer(os.path.join(path, TOKENIZER_FILE))
    return Teacher(graphdef, params, tok, model_cfg, mesh, P.PromptLimits(**meta.get("limits", {})), meta)
  if os.path.isfile(os.path.join(path, "config.json")):
    from flax import nnx
    from earlyrl_jax.models import hf_io
    from earlyrl_jax.data.tokenizer import load_tokenizer_dir
    model, tok = hf_io.load_model(path, mesh=mesh, dtype=dtype), load_tokenizer_dir(path)
    if tok is None:
      raise FileNotFoundError(f"{path}: an HF teacher needs tokenizer.json or tokenizer.model")
    graphdef, params = nnx.split(model)
    return Teacher(graphdef, params, tok, model.cfg, mesh, P.DEFAULT_LIMITS, {"hf_dir": path})
  raise FileNotFoundError(f"{path}: neither an embedded teacher ({CONFIG_FILE}) nor an HF model "
                          "directory (config.json)")
