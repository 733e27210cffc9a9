"""Launcher arguments -> one job description (pure Python; no XManager, no SLURM).

Every launcher builds the same command on every host:

  python -m earlyrl_jax.main --distributed --config=CONFIG --workdir=WORKDIR <overrides>

(XManager runs it inside `python -m launch.requeue`, which starts it again when a stop
signal ended it after saving: exit code 75.)

This module turns the launcher's arguments into that command plus what a cluster
needs to run it (accelerator, hosts, environment), and checks them before anything
is submitted: the config file loads, every `--config.*` override names a real field
with a value of the right type, and the mode is one of earlyrl_jax.modes.MODES. A
mistake here costs seconds instead of a queued multi-host job that dies at start-up.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = ("python", "-m", "earlyrl_jax.main", "--distributed")
# A run a signal stops exits 75 after saving; this wrapper starts it again (launch/requeue.py).
REQUEUE = ("python", "-m", "launch.requeue")

# TPU generation in the slice name -> (XManager resource name, cores per chip).
# v2/v3/v4/v5p names count TensorCores (2 per chip); v5litepod/v5e/v6e names count chips.
_TPU_GENERATIONS = {
    "v2": ("tpu_v2", 2), "v3": ("tpu_v3", 2), "v4": ("tpu_v4", 2), "v5p": ("tpu_v5p", 2),
    "v5litepod": ("tpu_v5e", 1), "v5e": ("tpu_v5e", 1), "v6e": ("tpu_v6e", 1),
}
_GPU_KINDS = ("a100", "a100_80gib", "h100", "h200", "b200", "l4_24th", "v100", "t4")
EXECUTORS = ("auto", "vertex", "kubernetes")
# XManager's Vertex AI executor knows only these TPU generations; newer slices go to GKE.
_VERTEX_TPUS = ("tpu_v2", "tpu_v3")

# Flags of earlyrl_jax.main that the launcher itself sets; passing them after `--` is a mistake.
_OWNED_FLAGS = {"config": "--config", "workdir": "--workdir", "distributed": "(always set)",
                "nodistributed": "(always set)"}


class JobSpecError(ValueError):
  """A launcher argument is wrong; the message names it."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """What one job asks for: a TPU slice, or `gpus_per_host` GPUs on each of `hosts` hosts."""
  kind: str            # 'tpu' | 'gpu'
  name: str            # 'v5litepod-64' | 'h100'
  resource: str        # XManager resource name: 'tpu_v5e' | 'h100'
  count: int           # TPU chips in the slice | GPUs per host
  hosts: int           # hosts running the same command

  def describe(self) -> str:
    if self.kind == "tpu":
      return f"TPU {self.name}: {self.count} chips on {self.hosts} host(s)"
    return f"{self.hosts} host(s) x {self.count} {self.name.upper()} GPU(s)"


def parse_accelerator(spec: str, nodes: int = 1) -> Accelerator:
  """'gpu:<kind>:<count>' (per host, `nodes` hosts) or a TPU slice type ('v5litepod-64')."""
  if nodes < 1:
    raise JobSpecError(f"--nodes: {nodes} must be >= 1")
  s = spec.strip().lower()
  if s.startswith("gpu"):
    m = re.fullmatch(r"gpu:([a-z0-9_]+):(\d+)", s)
    if not m:
      raise JobSpecError(f"--accelerator: {spec!r} is not of the form 'gpu:<kind>:<count>' "
                         f"(GPUs per host, e.g. 'gpu:h100:8'; kinds: {', '.join(_GPU_KINDS)})")
    kind, count = m.group(1), int(m.group(2))
    if kind not in _GPU_KINDS:
      raise JobSpecError(f"--accelerator: unknown GPU kind {kind!r} (known: {', '.join(_GPU_KINDS)})")
    if count < 1:
      raise JobSpecError(f"--accelerator: {spec!r} asks for {count} GPUs per host")
    return Accelerator("gpu", kind, kind, count, nodes)
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", s)
  if not m or m.group(1) not in _TPU_GENERATIONS:
    raise JobSpecError(
        f"--accelerator: {spec!r} is neither 'gpu:<kind>:<count>' (e.g. 'gpu:h100:8') nor a TPU "
        f"slice type '<generation>-<size>' (e.g. 'v5litepod-64', 'v4-32'; generations: "
        f"{', '.join(_TPU_GENERATIONS)})")
  if nodes != 1:
    raise JobSpecError(f"--nodes={nodes}: a TPU slice type fixes its host count; "
                       "choose a larger slice instead")
  gen, size = m.group(1), int(m.group(2))
  resource, cores_per_chip = _TPU_GENERATIONS[gen]
  if size < cores_per_chip or size % cores_per_chip:
    raise JobSpecError(f"--accelerator: {spec!r}: {gen} slice sizes count TensorCores "
                       f"({cores_per_chip} per chip)")
  chips = size // cores_per_chip
  # 4 chips per host, except the single-host 8-chip v5e / v6e machines.
  hosts = 1 if (cores_per_chip == 1 and chips <= 8) else max(1, math.ceil(chips / 4))
  return Accelerator("tpu", s, resource, chips, hosts)


def resolve_config(path: str) -> tuple[str, str]:
  """(local path to load, path the job passes): repository-relative when inside the repository.

  The job runs in a copy of the repository (its root is the working directory), so a
  config inside the repository is named relative to it; any other path (shared storage)
  is passed unchanged.
  """
  if not path:
    raise JobSpecError("--config: is empty; give a config file, e.g. configs/pretrain.py")
  local = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(local):
    raise JobSpecError(f"--config: {path} does not exist (relative paths are read from "
                       f"{os.getcwd()}; the configs are in {os.path.join(REPO, 'configs')})")
  rel = os.path.relpath(local, REPO)
  return local, (local if rel.startswith("..") else rel)


def check_workdir(workdir: str) -> None:
  """Every host must see the same run directory: absolute (shared file system) or remote."""
  if not workdir:
    raise JobSpecError("--workdir: is required (the run directory on storage every host sees)")
  if "://" not in workdir and not os.path.isabs(workdir):
    raise JobSpecError(f"--workdir: {workdir!r} is relative; every host resolves it on its own "
                       "disk. Give a shared absolute path or a gs:// URL")


def check_passthrough(args: list[str]) -> None:
  """Arguments after `--` go to earlyrl_jax.main unchanged; catch the ones that cannot work."""
  for a in args:
    if not a.startswith("-"):
      raise JobSpecError(f"argument {a!r} after '--' is not a flag; overrides are written "
                         "--config.section.field=value")
    name = a.lstrip("-").split("=", 1)[0]
    if name in _OWNED_FLAGS:
      raise JobSpecError(f"{a!r} after '--': the launcher sets this itself "
                         f"({_OWNED_FLAGS[name]}); pass it as a launcher flag")


def config_overrides(args: list[str]) -> list[str]:
  """The `--config.a.b=v` (and `--noconfig.a.b`) arguments among `args`."""
  return [a for a in args if re.match(r"^--?(no)?config\.", a)]


def load_with_overrides(config_path: str, overrides: list[str]):
  """Loads the config and applies the overrides exactly as earlyrl_jax.main parses them.

  Raises JobSpecError naming the override (unknown field, value of the wrong type)
  or the mode / enum field that is not allowed.
  """
  from absl import flags
  from ml_collections import config_flags

  from earlyrl_jax import configs
  from earlyrl_jax.main import unknown_field
  from earlyrl_jax.modes import MODES

  try:
    base = configs.load_config_file(config_path)
  except Exception as e:  # the file's get_config() raised: name the file
    raise JobSpecError(f"--config={config_path}: cannot load the config file: "
                       f"{type(e).__name__}: {e}") from e
  for o in overrides:
    field = re.match(r"^--?(?:no)?config\.([^=]+)", o).group(1)
    msg = unknown_field(base, field)
    if msg:
      raise JobSpecError(msg)
  # The same override parser as main's DEFINE_config_file, on the config loaded above.
  argv = ["earlyrl_jax.main", *overrides]
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", base, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    cfg = fv["config"].value
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    raise JobSpecError(f"bad --config override: {' '.join(str(e).split())}") from e
  if cfg.mode not in MODES:
    raise JobSpecError(f"mode {cfg.mode!r} is not one of {', '.join(MODES)}")
  try:
    configs.validate_fields(cfg)
  except configs.ConfigError as e:
    raise JobSpecError(str(e)) from e
  return cfg


def default_env(acc: Accelerator) -> dict[str, str]:
  """Environment every host gets; GPU runs let XLA take most memory and overlap collectives."""
  env = {"PYTHONUNBUFFERED": "1"}
  if acc.kind == "gpu":
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.92"
    env["XLA_FLAGS"] = "--xla_gpu_enable_latency_hiding_scheduler=true"
  return env


def jax_requirement(acc: Accelerator) -> str:
  """The jax wheel with the accelerator's plugin, installed into the job's container."""
  return "jax[tpu]" if acc.kind == "tpu" else "jax[cuda12]"


def parse_env(items: list[str]) -> dict[str, str]:
  """['KEY=VALUE', ...] -> dict, naming a malformed item."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise JobSpecError(f"--env: {item!r} is not KEY=VALUE")
    out[key] = value
  return out


@dataclasses.dataclass(frozen=True)
class JobSpec:
  title: str
  mode: str
  config: str                    # as passed to the job (repository-relative when inside it)
  workdir: str
  accelerator: Accelerator
  executor: str                  # 'vertex' | 'kubernetes'
  argv: tuple[str, ...]          # the exact command every host runs (in launch/requeue.py)
  env: dict[str, str]
  install: tuple[str, ...]       # pip requirements of the job's container (the repository first)

  @property
  def args(self) -> list[str]:
    """The arguments after `python` (what XManager's python container receives)."""
    return list(self.argv[1:])

  def command(self) -> str:
    return shlex.join(self.argv)

  def describe(self) -> str:
    """The dry run's output: everything that would be submitted."""
    acc = self.accelerator
    lines = [f"title:        {self.title}",
             f"mode:         {self.mode}",
             f"config:       {self.config}",
             f"workdir:      {self.workdir}",
             f"requirements: {acc.describe()} ({acc.resource}={acc.count}"
             + (f", replicas={acc.hosts}" if acc.kind == "gpu" and acc.hosts > 1 else "") + ")",
             f"executor:     {self.executor}",
             f"install:      pip install {shlex.join(self.install)}",
             f"args:         {self.command()}",
             "env:"]
    lines += [f"  {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
    return "\n".join(lines)


def build(*, config: str, workdir: str, accelerator: str, nodes: int = 1, mode: str = "",
          name: str = "", executor: str = "auto", env: list[str] | None = None,
          passthrough: list[str] | None = None, max_requeues: int = 100) -> JobSpec:
  """Checks the launcher's arguments and returns the job every host runs.

  max_requeues > 0: the command runs inside launch/requeue.py, which starts it again (at most
  that many times) when it exits with 75, a stop after saving; 0: the bare command."""
  from earlyrl_jax.modes import MODES  # light: no jax
  passthrough = list(passthrough or [])
  if mode and mode not in MODES:
    raise JobSpecError(f"--mode: {mode!r} is not a mode; known modes: {', '.join(MODES)}")
  if executor not in EXECUTORS:
    raise JobSpecError(f"--executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
  acc = parse_accelerator(accelerator, nodes)
  check_workdir(workdir)
  check_passthrough(passthrough)
  local, job_config = resolve_config(config)
  mode_override = [f"--config.mode={mode}"] if mode else []
  cfg = load_with_overrides(local, mode_override + config_overrides(passthrough))
  if executor == "auto":
    executor = "vertex" if acc.kind == "gpu" or acc.resource in _VERTEX_TPUS else "kubernetes"
  elif executor == "vertex" and acc.kind == "tpu" and acc.resource not in _VERTEX_TPUS:
    raise JobSpecError(f"--executor=vertex: XManager's Vertex AI executor runs TPU v2/v3 only; "
                       f"use --executor=kubernetes (GKE) for {acc.name}")
  if max_requeues < 0:
    raise JobSpecError(f"--max_requeues: {max_requeues} must be >= 0 (0: never restart)")
  argv = (*ENTRY, f"--config={job_config}", f"--workdir={workdir}", *mode_override, *passthrough)
  if max_requeues:
    argv = (*REQUEUE, f"--max_requeues={max_requeues}", "--", *argv)
  return JobSpec(title=name or f"earlyrl-{cfg.mode}", mode=cfg.mode, config=job_config,
                 workdir=workdir, accelerator=acc, executor=executor, argv=argv,
                 env={**default_env(acc), **parse_env(env or [])},
                 install=("-e", ".", jax_requirement(acc)))
