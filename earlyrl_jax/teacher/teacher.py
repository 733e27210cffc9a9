"""The teacher bundle (graphdef, params, tokenizer, mesh), its judge and rewriter kinds, its on-disk form.

An embedded-teacher directory (written by `earlyrl_jax.embedded.job.run`) holds:

  teacher_config.json   model shape, prompt version, prompt limits, config hash (written last)
  tokenizer.model       SentencePiece with every prompt marker as one token
  params/               orbax StandardCheckpointer of the nnx.State of parameters

`load_teacher(path)` reads such a directory, or an HF model directory
(config.json + safetensors) through `models.hf_io.load_model`.

Which judge and which rewriter a teacher gets is chosen, not guessed (`teacher.judge_kind`,
`teacher.rewriter_kind` in a run's config):

  judge     'embedded'    the embedded teacher's trained judge: verdict-token log-probs of the
                          markup family plus its recipe (earlyrl_jax/embedded/judge.py)
            'logprob'     the paper's formats (prompts/paper.py), the verdict read from the
                          model's probabilities of each answer after a forced answer lead
                          (any instruct model, in-process or served; judges/logprob.py)
            'generative'  the paper's formats, reasoning then 'Answer: ...', n samples averaged
                          (`teacher.generative.*`; judges/generative.py)
  rewriter  'edit'        the embedded teacher's editor: keep or drop each sentence
                          (earlyrl_jax/embedded/editor.py)
            'generative'  the rewrite generated after the prompt (rewriter.py)
  'auto'    follows where the weights came from (`Teacher.source`): an embedded teacher's
            directory -> 'embedded' / 'edit' (what it was trained for); an HF model directory
            (or a served model) -> 'logprob' / 'generative'.

The embedded kinds are built by `earlyrl_jax.embedded`, imported here only, inside
`judge` and `rewriter`: this bundle loads the embedded teacher's directory format as it loads
an HF one, and the rest of teacher/ knows nothing of it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import DEFAULT_LIMITS, PromptLimits

CONFIG_FILE = "teacher_config.json"
TOKENIZER_FILE = "tokenizer.model"
PARAMS_DIR = "params"

JUDGE_KINDS = ("auto", "embedded", "logprob", "generative")
REWRITER_KINDS = ("auto", "edit", "generative")
SOURCES = ("embedded", "hf")   # an embedded teacher's directory (or one built in process), an HF directory


@dataclasses.dataclass
class Teacher:
  graphdef: Any
  params: Any
  tokenizer: Any
  model_cfg: Any
  mesh: Any = None
  limits: PromptLimits = DEFAULT_LIMITS
  info: dict = dataclasses.field(default_factory=dict)   # teacher_config.json (embedded) or {"hf_dir": ...}
  source: str = "embedded"   # where the weights came from (SOURCES): what 'auto' kinds follow

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"Teacher.source={self.source!r}: expected one of {SOURCES}")

  @property
  def name(self) -> str:
    """Names the teacher in errors: its directory, or what it is."""
    return self.info.get("hf_dir") or f"the {self.source} teacher"

  @property
  def max_len(self) -> int:
    return int(self.model_cfg.max_seq_len)

  def model(self):
    from flax import nnx
    return nnx.merge(self.graphdef, self.params)

  def judge_kind(self, kind: str = "auto") -> str:
    """`kind` checked against this teacher, with 'auto' resolved (see the module docstring)."""
    return self._kind("judge_kind", kind, JUDGE_KINDS, embedded="embedded", hf="logprob")

  def rewriter_kind(self, kind: str = "auto") -> str:
    """`kind` checked against this teacher, with 'auto' resolved (see the module docstring)."""
    return self._kind("rewriter_kind", kind, REWRITER_KINDS, embedded="edit", hf="generative")

  def _kind(self, field: str, kind: str, kinds: tuple[str, ...], *, embedded: str, hf: str) -> str:
    if kind not in kinds:
      raise ValueError(f"teacher.{field}={kind!r}: expected one of {kinds}")
    if kind == "auto":
      return embedded if self.source == "embedded" else hf
    if kind == embedded and self.source != "embedded":
      others = [k for k in kinds if k != embedded]
      raise ValueError(f"teacher.{field}={kind!r}: {self.name} is not an embedded teacher (it was "
                       f"loaded from an HF model directory); use one of {others}")
    return kind

  def judge(self, kind: str = "auto", *, backend=None, **kw):
    """The judge of `kind` (JUDGE_KINDS). 'embedded': keyword arguments go to
    `embedded.judge.embedded_judge` (recipe=JudgeRecipe(...) replaces the teacher's own);
    'logprob' / 'generative': `paper_judge`'s (budgets=, sampling=), over `backend` (default:
    this bundle in process)."""
    kind = self.judge_kind(kind)
    if kind == "embedded":
      from earlyrl_jax.embedded.judge import embedded_judge
      return embedded_judge(self, **kw)
    if backend is None:
      from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
      backend = InProcessBackend.from_teacher(self)
    return paper_judge(kind, backend, **kw)

  def rewriter(self, kind: str = "auto", *, window_cut: bool = False, **kw):
    """The rewriter of `kind` (REWRITER_KINDS); keyword arguments go to its constructor.

    window_cut: suffixes end where a training window cut them (SIP and the rewrite job):
    the editor keeps an unfinished last sentence instead of treating it as a defect."""
    kind = self.rewriter_kind(kind)
    if kind == "edit":
      from earlyrl_jax.embedded.editor import edit_rewriter
      return edit_rewriter(self, window_cut=window_cut, **kw)
    from earlyrl_jax.teacher.rewriter import Rewriter
    return Rewriter(self, **kw)


def paper_judge(kind: str, backend, *, budgets=None, sampling=None, max_new_tokens: int | None = None):
  """A judge of the paper's formats over any Backend: kind 'logprob' (LogProbJudge; it samples
  nothing, so `sampling` is not read) or 'generative' (GenerativeJudge; `sampling`, or just
  `max_new_tokens`, says how it samples)."""
  from earlyrl_jax.teacher.prompts.paper import Budgets
  budgets = budgets or Budgets()
  if kind == "logprob":
    from earlyrl_jax.teacher.judges.logprob import LogProbJudge
    return LogProbJudge(backend, budgets=budgets)
  if kind == "generative":
    from earlyrl_jax.teacher.judges.generative import GenerativeJudge, Sampling
    sampling = sampling or Sampling()
    if max_new_tokens is not None:
      sampling = dataclasses.replace(sampling, max_new_tokens=int(max_new_tokens))
    return GenerativeJudge(backend, sampling=sampling, budgets=budgets)
  raise ValueError(f"teacher.judge_kind={kind!r}: the paper's judges are 'logprob' and 'generative'")


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


def load_teacher(path: str, *, mesh=None, dtype: str | None = None, max_len: int = 0) -> Teacher:
  """An embedded-teacher directory or an HF model directory -> Teacher. max_len > 0 caps an HF
  teacher's context (`teacher.max_len`: what its prompts need, not its 131072 positions)."""
  from earlyrl_jax.models.transformer import ModelConfig
  meta = read_teacher_config(path)
  if meta is not None:
    from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
    model_cfg = ModelConfig(**meta["model"])
    graphdef, params = restore_params(os.path.join(path, PARAMS_DIR), model_cfg, mesh)
    tok = SentencePieceTokenizer(os.path.join(path, TOKENIZER_FILE))
    return Teacher(graphdef, params, tok, model_cfg, mesh, PromptLimits(**meta.get("limits", {})),
                   meta, source="embedded")
  if os.path.isfile(os.path.join(path, "config.json")):
    from flax import nnx
    from earlyrl_jax.models import hf_io
    from earlyrl_jax.data.tokenizer import load_tokenizer_dir
    model, tok = hf_io.load_model(path, mesh=mesh, dtype=dtype), load_tokenizer_dir(path)
    if tok is None:
      raise FileNotFoundError(f"{path}: an HF teacher needs tokenizer.json or tokenizer.model")
    graphdef, params = nnx.split(model)
    cfg = model.cfg if not max_len else dataclasses.replace(
        model.cfg, max_seq_len=min(int(max_len), model.cfg.max_seq_len))
    return Teacher(graphdef, params, tok, cfg, mesh, DEFAULT_LIMITS, {"hf_dir": path}, source="hf")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: " + ("is a file, not a teacher directory" if os.path.exists(path)
                                           else "no such teacher directory"))
  raise FileNotFoundError(f"{path}: neither an embedded teacher ({CONFIG_FILE}) nor an HF model "
                          "directory (config.json)")
