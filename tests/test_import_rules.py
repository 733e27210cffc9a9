"""The package map's arrows point down (docs/design.md): checked on the source, every import
(those inside functions too), so a change that climbs back up fails here.

    entry -> jobs -> train / eval -> teacher (+ the embedded teacher's inference) -> sampling / models
          -> parallel, data, world

and: teacher/ imports neither train/ nor world/ (judging works without a trainer and without the
synthetic world); data/ and world/ never import models/ or train/; models/ never imports data/.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Layer of each module, by the longest matching name prefix; a module may import its own layer or
# any below it (never one above).
LAYERS = {
    "earlyrl_jax.main": 6,                  # entry
    "earlyrl_jax.tools": 5,                 # jobs: commands that compose the layers below
    "earlyrl_jax.generate": 5,
    "earlyrl_jax.rewrite_job": 5,
    "earlyrl_jax.sip_job": 5,
    "earlyrl_jax.teacher_setup": 5,
    "earlyrl_jax.eval.judge_audit": 5,
    "earlyrl_jax.eval.select_inference": 5,  # chooses teacher.inference over judge_audit's groups
    "earlyrl_jax.serve": 5,                 # earlyrl-serve: a server over an in-process backend
    "earlyrl_jax.embedded.job": 5,          # the embedded teacher's training job ...
    "earlyrl_jax.embedded.training": 5,
    "earlyrl_jax.embedded.report": 5,
    "earlyrl_jax.judge_train": 5,           # training a model as judge (mode='judge_train') ...
    "earlyrl_jax.judge_train.settings": 4,  # ... and its config section, which validation reads
    "earlyrl_jax.train": 4,                 # the trainer and evaluation
    "earlyrl_jax.eval": 4,
    "earlyrl_jax.configs": 4,               # config validation (reads every layer's settings)
    "earlyrl_jax.checkpoint_shape": 4,      # the policy's model section from its checkpoint (validation)
    "earlyrl_jax.teacher": 3,               # the general teacher layer ...
    "earlyrl_jax.embedded": 3,              # ... and the embedded teacher's recipe (judge, editor, data)
    "earlyrl_jax.sampling": 2,
    "earlyrl_jax.models": 2,
    "earlyrl_jax.parallel": 1,
    "earlyrl_jax.data": 1,
    "earlyrl_jax.world": 1,
    "earlyrl_jax.modes": 0,                 # the table of jobs: names only, imports nothing
    "earlyrl_jax.errors": 0,                # exit codes and error classes: imports nothing
    "earlyrl_jax": 0,
}
NAMES = {6: "entry", 5: "jobs", 4: "train/eval", 3: "teacher", 2: "sampling/models",
         1: "parallel/data/world", 0: "tables"}

# Imports that break no rule in spirit, each with its reason.
ALLOWED = {
    ("earlyrl_jax.generate", "earlyrl_jax.main"):
        "the earlyrl-generate console script is the entry point with mode='generate'",
}

# (importer prefix, imported prefix, why not), beyond the layers.
FORBIDDEN = [
    ("earlyrl_jax.teacher", "earlyrl_jax.train", "judging works without a trainer"),
    ("earlyrl_jax.teacher", "earlyrl_jax.world", "judging works without the synthetic world"),
    ("earlyrl_jax.teacher", "earlyrl_jax.configs", "the teacher layer takes values, not configs"),
    ("earlyrl_jax.data", "earlyrl_jax.models", "data never imports models"),
    ("earlyrl_jax.world", "earlyrl_jax.models", "the world never imports models"),
    ("earlyrl_jax.models", "earlyrl_jax.data", "models never import data"),
]
# The one module of teacher/ that may import the embedded teacher: the bundle, which loads an
# embedded teacher's directory as it loads an HF one, and builds its judge and editor from it.
EMBEDDED_FROM_TEACHER = {"earlyrl_jax.teacher.teacher": {"earlyrl_jax.embedded.judge",
                                                         "earlyrl_jax.embedded.editor"}}


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(os.path.join(ROOT, "earlyrl_jax")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str:
  """The module an imported name lives in (`pkg.mod.func` -> `pkg.mod`)."""
  while name not in MODULES and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


def imports_of(module: str) -> dict[str, int]:
  """{imported earlyrl_jax module: line} of every import in `module` (function bodies included)."""
  path = MODULES[module]
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  out = {}
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names]
    for n in names:
      if n.split(".")[0] == "earlyrl_jax":
        target = _resolve(n)
        if target != module:
          out.setdefault(target, node.lineno)
  return out


def layer_prefix(module: str) -> str:
  return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def layer(module: str) -> int:
  return LAYERS[layer_prefix(module)]


def _under(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


def violations() -> list[str]:
  out = []
  for m in sorted(MODULES):
    for target, line in sorted(imports_of(m).items()):
      where = f"{os.path.relpath(MODULES[m], ROOT)}:{line}: {m} imports {target}"
      if (m, target) in ALLOWED:
        continue
      if layer(target) > layer(m):
        out.append(f"{where}: {NAMES[layer(m)]} must not import {NAMES[layer(target)]} (arrows point down)")
      for src, dst, why in FORBIDDEN:
        if _under(m, src) and _under(target, dst):
          out.append(f"{where}: {why}")
      if (_under(m, "earlyrl_jax.teacher") and _under(target, "earlyrl_jax.embedded")
          and target not in EMBEDDED_FROM_TEACHER.get(m, ())):
        out.append(f"{where}: the general teacher layer does not import the embedded teacher "
                   "(only teacher/teacher.py builds its judge and editor)")
  return out


def test_every_import_points_down_the_package_map():
  assert violations() == []


def test_no_import_cycle_between_modules():
  graph = {m: set(imports_of(m)) for m in MODULES}
  state: dict[str, int] = {}   # 1: on the current path, 2: done
  cycles = []

  def visit(m, path):
    state[m] = 1
    for t in sorted(graph[m]):
      if state.get(t) == 1:
        cycles.append(" -> ".join(path[path.index(t):] + [t]))
      elif t not in state:
        visit(t, path + [t])
    state[m] = 2
  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []


def test_every_module_has_a_layer_and_the_checks_can_fail(tmp_path, monkeypatch):
  # A new top-level module or package gets its place in LAYERS (the package map) first.
  assert [m for m in MODULES if layer_prefix(m) == "earlyrl_jax" and m != "earlyrl_jax"] == []
  assert "earlyrl_jax.embedded.judge" in imports_of("earlyrl_jax.teacher.teacher")   # lazy ones count
  # A teacher module that imports the trainer, inside a function, is caught with its line.
  bad = tmp_path / "earlyrl_jax" / "teacher" / "bad.py"
  bad.parent.mkdir(parents=True)
  bad.write_text("def f():\n  from earlyrl_jax.train import loop\n  from earlyrl_jax.embedded import job\n")
  monkeypatch.setitem(MODULES, "earlyrl_jax.teacher.bad", str(bad))
  got = violations()
  assert any("bad.py:2: earlyrl_jax.teacher.bad imports earlyrl_jax.train.loop: teacher must not import "
             "train/eval" in v for v in got), got
  assert any("bad.py:2" in v and "judging works without a trainer" in v for v in got)
  assert any("bad.py:3" in v and "jobs" in v for v in got)
  assert any("bad.py:3" in v and "does not import the embedded teacher" in v for v in got)


@pytest.mark.parametrize("module,target", sorted(ALLOWED))
def test_each_allowed_exception_is_still_needed(module, target):
  assert target in imports_of(module), f"{module} no longer imports {target}: drop it from ALLOWED"
