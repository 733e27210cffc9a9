"""Where the teacher's model runs: in this process (JAX) or behind an OpenAI-compatible server.

Judges and rewriters (`teacher/`) speak only to the `Backend` protocol of `base.py`, so the
same prompt families and verdict readers work with an embedded teacher, an HF instruct model
loaded in-process, or a vLLM / SGLang / TGI server (docs/serving.md):

    backend = backend_for(cfg.teacher, teacher=bundle)   # teacher.backend: 'inprocess' | 'openai'
    backend.continuation_logprobs(prompts, answers)       # float64 [n], NaN = failed row
    backend.generate(prompts, max_new_tokens=256, n=5, temperature=1.0, top_p=0.6)

`InProcessBackend` (inprocess.py) runs a Teacher bundle's Flax model; `OpenAIBackend` (openai.py)
is the HTTP client; `earlyrl_jax/serve.py` serves an InProcessBackend with the same API.
"""
from __future__ import annotations

from earlyrl_jax.teacher.backends.base import Backend, TeacherFailure  # noqa: F401

BACKENDS = ("inprocess", "openai")
OPENAI_FIELDS = ("url", "model", "tokenizer_path", "api_key_env", "concurrency", "batch_size",
                 "timeout_s", "max_retries", "max_failure_share")


def openai_settings(section):
  """`teacher.openai` (a ConfigDict or dict) -> OpenAISettings; ValueError naming the field."""
  from earlyrl_jax.teacher.backends.openai import OpenAISettings
  raw = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  raw.pop("tokenizer_path", None)   # where the tokenizer comes from, not how to talk to the server
  known = {f for f in OpenAISettings.__dataclass_fields__}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ValueError(f"teacher.openai.{unknown[0]}: unknown field (known: {sorted(known)})")
  if not raw.get("url"):
    raise ValueError("teacher.openai.url: is empty; give the server's base URL, e.g. "
                     "http://judge-node:8000/v1")
  settings = OpenAISettings(**raw)
  settings.check()
  return settings


def check_config(teacher_section) -> None:
  """Validates `teacher.backend` and, for 'openai', `teacher.openai.*` (ValueError naming the
  field); reads no files and opens no connection."""
  if teacher_section is None:
    return
  kind = teacher_section.get("backend", "inprocess")
  if kind not in BACKENDS:
    raise ValueError(f"teacher.backend: {kind!r} is not one of {', '.join(map(repr, BACKENDS))}")
  max_len = teacher_section.get("max_len", 0)
  if not isinstance(max_len, int) or max_len < 0:
    raise ValueError(f"teacher.max_len: {max_len!r}: expected tokens >= 0 (0 = the model's context)")
  if kind == "openai":
    section = teacher_section.get("openai")
    if section is None:
      raise ValueError("teacher.openai: missing; teacher.backend='openai' needs teacher.openai.url")
    openai_settings(section)
    if not (section.get("tokenizer_path") or teacher_section.get("path")):
      raise ValueError("teacher.openai.tokenizer_path: empty and so is teacher.path; the served "
                       "teacher's tokenizer files are needed here (prompt budgets are counted in "
                       "its tokens)")


def backend_for(teacher_section, *, teacher=None, mesh=None, transport=None) -> Backend:
  """The teacher backend a config asks for.

  'inprocess': `InProcessBackend` over `teacher` (a loaded Teacher bundle, e.g. from
  `teacher.teacher.load_teacher`), or over `teacher.path` loaded onto `mesh`.
  'openai': `OpenAIBackend` for `teacher.openai.*`, with the served model's tokenizer from
  `teacher.openai.tokenizer_path` (default `teacher.path`); its context is `teacher.max_len`, or
  the `max_model_len` the server lists. Raises TeacherFailure when the server is unreachable or
  does not serve the model. `transport`: an httpx transport (tests inject faults with it).
  """
  check_config(teacher_section)
  max_len = int(teacher_section.get("max_len", 0) or 0)
  if teacher_section.get("backend", "inprocess") == "inprocess":
    from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
    if teacher is None:
      from earlyrl_jax.teacher.teacher import load_teacher
      teacher = load_teacher(teacher_section.get("path"), mesh=mesh)
    return InProcessBackend.from_teacher(teacher, **({"max_len": max_len} if max_len else {}))
  from earlyrl_jax.data.tokenizer import load_tokenizer_dir
  from earlyrl_jax.teacher.backends.openai import OpenAIBackend
  section = teacher_section.openai if hasattr(teacher_section, "openai") else teacher_section["openai"]
  tok_dir = section.get("tokenizer_path") or teacher_section.get("path")
  tokenizer = load_tokenizer_dir(tok_dir)
  if tokenizer is None:
    raise ValueError(f"teacher.openai.tokenizer_path: {tok_dir} holds no tokenizer.json or "
                     "tokenizer.model")
  backend = OpenAIBackend(openai_settings(section), tokenizer, max_len=max_len or 1,
                          transport=transport)
  if not max_len:
    served = backend.served_max_len()
    if not served:
      raise ValueError(f"teacher.max_len: 0, and {backend.name} does not list max_model_len in "
                       "/v1/models; set teacher.max_len to the served model's context")
    backend.max_len = served
  return backend
