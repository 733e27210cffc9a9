"""Launchers: argument parsing (launch/jobspec.py), the XManager launcher's dry run, and the
SLURM scripts' dry runs for pretraining and SIP mid-training. Nothing is submitted: XManager
is replaced by a package that fails on import, SLURM by DRY_RUN=1."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from earlyrl_jax.modes import MODES
from launch import jobspec
from launch.jobspec import JobSpecError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEUE = ("python", "-m", "launch.requeue", "--max_requeues=100", "--")
SIP_OVERRIDES = ["--config.init.params_from=/models/Llama-3.2-1B",
                 "--config.teacher.path=/models/Llama-3.1-8B-Instruct",
                 "--config.data.train_files=/data/slim/*.jsonl",
                 "--config.data.tokenizer_path=/models/Llama-3.2-1B/tokenizer.json"]


# ----------------------------------------------------------------------------- accelerators


@pytest.mark.parametrize("spec,nodes,expect", [
    ("gpu:h100:8", 2, ("gpu", "h100", "h100", 8, 2)),
    ("GPU:A100:4", 1, ("gpu", "a100", "a100", 4, 1)),
    ("v5litepod-64", 1, ("tpu", "v5litepod-64", "tpu_v5e", 64, 16)),
    ("v5litepod-8", 1, ("tpu", "v5litepod-8", "tpu_v5e", 8, 1)),
    ("v4-32", 1, ("tpu", "v4-32", "tpu_v4", 16, 4)),   # v4 sizes count TensorCores
    ("v5p-8", 1, ("tpu", "v5p-8", "tpu_v5p", 4, 1)),
    ("v6e-16", 1, ("tpu", "v6e-16", "tpu_v6e", 16, 4)),
])
def test_parse_accelerator(spec, nodes, expect):
  a = jobspec.parse_accelerator(spec, nodes)
  assert (a.kind, a.name, a.resource, a.count, a.hosts) == expect


@pytest.mark.parametrize("spec,nodes,needle", [
    ("gpu:h100", 1, "'gpu:<kind>:<count>'"),
    ("gpu:h100:x", 1, "'gpu:<kind>:<count>'"),
    ("gpu:h100:0", 1, "0 GPUs"),
    ("gpu:k80:8", 1, "unknown GPU kind 'k80'"),
    ("h100", 1, "TPU slice type"),
    ("v9-8", 1, "generations: v2"),
    ("v4-3", 1, "TensorCores"),
    ("v5litepod-64", 4, "fixes its host count"),
    ("gpu:h100:8", 0, "--nodes"),
])
def test_parse_accelerator_errors(spec, nodes, needle):
  with pytest.raises(JobSpecError, match="accelerator|nodes") as e:
    jobspec.parse_accelerator(spec, nodes)
  assert needle in str(e.value)


# ----------------------------------------------------------------------------- job specs


def _build(**kw):
  args = dict(config="configs/pretrain.py", workdir="gs://bucket/run1", accelerator="v5litepod-64")
  args.update(kw)
  return jobspec.build(**args)


def test_build_sip_midtraining(monkeypatch):
  monkeypatch.chdir(REPO)
  spec = _build(config="configs/midtrain.py", workdir="/mnt/shared/sip1", accelerator="gpu:h100:8",
                nodes=2, env=["WANDB_API_KEY=abc"], passthrough=SIP_OVERRIDES)
  assert spec.mode == "sip" and spec.title == "earlyrl-sip"  # the config's own mode
  # The run inside launch/requeue.py, which restarts it after a stop that saved (exit 75).
  assert spec.argv == (*REQUEUE, "python", "-m", "earlyrl_jax.main", "--distributed",
                       "--config=configs/midtrain.py", "--workdir=/mnt/shared/sip1", *SIP_OVERRIDES)
  assert spec.args[:2] == ["-m", "launch.requeue"]  # what XManager's `python` entrypoint receives
  assert spec.executor == "vertex" and spec.accelerator.hosts == 2
  assert spec.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92" and spec.env["WANDB_API_KEY"] == "abc"


def test_build_pretraining_and_mode_flag(tmp_path):
  # The config path is resolved from any directory and passed repository-relative.
  spec = _build(config=os.path.join(REPO, "configs", "pretrain.py"))
  assert spec.mode == "pretrain" and spec.config == "configs/pretrain.py"
  assert spec.executor == "kubernetes" and "XLA_FLAGS" not in spec.env
  assert spec.accelerator.describe() == "TPU v5litepod-64: 64 chips on 16 host(s)"

  spec = _build(config=os.path.join(REPO, "configs", "tiny.py"), mode="world", name="w1",
                passthrough=["--config.num_steps=5"], max_requeues=0)
  assert spec.mode == "world" and spec.title == "w1"
  assert spec.argv[:4] == jobspec.ENTRY  # max_requeues=0: the bare command, run once
  assert spec.argv[-2:] == ("--config.mode=world", "--config.num_steps=5")

  outside = tmp_path / "mine.py"  # a config outside the repository is passed as given
  outside.write_text(open(os.path.join(REPO, "configs", "tiny.py")).read())
  assert _build(config=str(outside)).config == str(outside)


@pytest.mark.parametrize("kw,needle", [
    (dict(mode="sipp"), "known modes: " + ", ".join(MODES)),
    (dict(passthrough=["--config.mode=nope"]), "nope"),
    (dict(config="configs/nope.py"), "--config: configs/nope.py does not exist"),
    (dict(workdir=""), "--workdir: is required"),
    (dict(workdir="runs/r1"), "is relative"),
    (dict(passthrough=["--config.teacher.pth=/x"]), "did you mean 'teacher.path'"),
    (dict(passthrough=["--config.num_steps=many"]), "--config.num_steps=many"),
    (dict(passthrough=["--config.sip.judge=gpt"]), "sip.judge"),
    (dict(passthrough=["--workdir=/x"]), "launcher sets this itself"),
    (dict(passthrough=["--distributed"]), "launcher sets this itself"),
    (dict(passthrough=["5"]), "not a flag"),
    (dict(env=["NOEQUALS"]), "KEY=VALUE"),
    (dict(executor="vertex"), "--executor=kubernetes"),
    (dict(executor="borg"), "--executor"),
    (dict(max_requeues=-1), "--max_requeues"),
    (dict(passthrough=["--config.sip.top_p=0"], config="configs/midtrain.py"), "sip.top_p"),
    (dict(passthrough=["--config.report.num_seeds=0"], config="configs/tiny.py"), "report.num_seeds"),
])
def test_build_errors(kw, needle, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(JobSpecError) as e:
    _build(**kw)
  assert needle in str(e.value)


# ----------------------------------------------------------------------------- xm_launch.py


@pytest.fixture
def no_xmanager(tmp_path):
  """An environment in which importing xmanager fails loudly (it must never be imported)."""
  fake = tmp_path / "fake" / "xmanager"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('xmanager was imported')\n")
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), REPO]))


def _xm_launch(args, env):
  return subprocess.run([sys.executable, os.path.join("launch", "xm_launch.py"), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def _field(out: str, name: str) -> str:
  return next(l for l in out.splitlines() if l.startswith(name + ":"))[len(name) + 1:].strip()


def test_xm_dry_run_sip(no_xmanager):
  r = _xm_launch(["--dry_run", "--config=configs/midtrain.py", "--workdir=/mnt/shared/sip1",
                  "--accelerator=gpu:h100:8", "--nodes=2", "--env=FOO=bar baz", "--",
                  *SIP_OVERRIDES, "--config.sip.judge_scheme=adaptive"], no_xmanager)
  assert r.returncode == 0, r.stderr
  assert _field(r.stdout, "title") == "earlyrl-sip" and _field(r.stdout, "mode") == "sip"
  assert _field(r.stdout, "requirements") == "2 host(s) x 8 H100 GPU(s) (h100=8, replicas=2)"
  assert shlex.split(_field(r.stdout, "args")) == [
      *REQUEUE, "python", "-m", "earlyrl_jax.main", "--distributed", "--config=configs/midtrain.py",
      "--workdir=/mnt/shared/sip1", *SIP_OVERRIDES, "--config.sip.judge_scheme=adaptive"]
  env = r.stdout.split("\nenv:\n", 1)[1]
  assert "  FOO='bar baz'" in env and "  XLA_PYTHON_CLIENT_MEM_FRACTION=0.92" in env


def test_xm_dry_run_pretraining_and_errors(no_xmanager):
  r = _xm_launch(["--dry_run", "--workdir=gs://bucket/run1", "--accelerator=v4-32", "--",
                  "--config.data.train_files=gs://bucket/corpus/*.jsonl"], no_xmanager)
  assert r.returncode == 0, r.stderr
  assert _field(r.stdout, "mode") == "pretrain"  # the default config, configs/pretrain.py
  assert _field(r.stdout, "requirements") == "TPU v4-32: 16 chips on 4 host(s) (tpu_v4=16)"
  assert shlex.split(_field(r.stdout, "args"))[len(REQUEUE) + 4:] == [
      "--config=configs/pretrain.py", "--workdir=gs://bucket/run1",
      "--config.data.train_files=gs://bucket/corpus/*.jsonl"]

  r = _xm_launch(["--dry_run", "--workdir=/mnt/r", "--accelerator=gpu:h100"], no_xmanager)
  assert r.returncode == 2 and "gpu:<kind>:<count>" in r.stderr and not r.stdout
  # Without --dry_run the missing extra is named (and nothing is submitted).
  r = _xm_launch(["--workdir=/mnt/r", "--accelerator=gpu:h100:8"], no_xmanager)
  assert r.returncode != 0 and "pip install -e '.[launch]'" in r.stderr


_FAKE_XM = {
    "__init__.py": "",
    "xm.py": """
import json, os
def log(**kw):
  with open(os.environ["FAKE_XM_LOG"], "a") as f:
    f.write(json.dumps(kw) + "\\n")
class JobRequirements:
  def __init__(self, **kw): self.kw = kw
class CommandList:
  def __init__(self, commands): self.commands = commands
def python_container(executor_spec, path, entrypoint, base_image, docker_instructions):
  log(kind="package", spec=type(executor_spec).__name__, path=path, entrypoint=entrypoint.commands,
      base_image=base_image, steps=docker_instructions)
  return "EXE"
class Job:
  def __init__(self, executable, executor, args, env_vars):
    self.d = dict(executor=type(executor).__name__, requirements=executor.requirements.kw,
                  args=list(args), env=dict(env_vars))
class JobGroup:
  def __init__(self, **jobs): self.jobs = jobs
""",
    "xm_local.py": """
import contextlib
from xmanager import xm
class _Executor:
  def __init__(self, requirements): self.requirements = requirements
class Vertex(_Executor):
  class Spec: pass
class Kubernetes(_Executor):
  class Spec: pass
class _Experiment:
  def package(self, packageables): return list(packageables)
  def add(self, job):
    jobs = job.jobs if isinstance(job, xm.JobGroup) else {"job": job}
    xm.log(kind="add", jobs={k: j.d for k, j in jobs.items()})
@contextlib.contextmanager
def create_experiment(experiment_title):
  xm.log(kind="experiment", title=experiment_title)
  yield _Experiment()
""",
}


def test_xm_submit_builds_the_job(tmp_path):
  """Submission against a recording stand-in for XManager's API (xm, xm_local)."""
  pkg = tmp_path / "fakexm" / "xmanager"
  pkg.mkdir(parents=True)
  for name, text in _FAKE_XM.items():
    (pkg / name).write_text(text)
  log = tmp_path / "xm.jsonl"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg.parent), REPO]), FAKE_XM_LOG=str(log))
  r = _xm_launch(["--config=configs/midtrain.py", "--workdir=/mnt/shared/sip1",
                  "--accelerator=gpu:h100:8", "--nodes=3", "--", *SIP_OVERRIDES], env)
  assert r.returncode == 0, r.stderr
  assert ("submitted earlyrl-sip: python -m launch.requeue --max_requeues=100 -- python -m "
          "earlyrl_jax.main --distributed") in r.stdout
  events = [json.loads(l) for l in open(log)]
  assert [e["kind"] for e in events] == ["experiment", "package", "add"]
  package, add = events[1], events[2]
  assert package["spec"] == "Spec" and package["path"] == REPO and package["entrypoint"] == ["python"]
  assert package["steps"][-1].endswith("pip install --no-cache-dir -e . 'jax[cuda12]'")
  # Vertex AI: a chief pool of one host and the other two hosts as workers, same command.
  chief, workers = add["jobs"]["chief"], add["jobs"]["workers"]
  assert chief["requirements"] == {"h100": 8} and workers["requirements"] == {"h100": 8, "replicas": 2}
  assert chief["executor"] == "Vertex" and chief["args"] == workers["args"]
  assert chief["args"] == [*REQUEUE[1:], "python", "-m", "earlyrl_jax.main", "--distributed",
                           "--config=configs/midtrain.py", "--workdir=/mnt/shared/sip1", *SIP_OVERRIDES]

  log.unlink()
  r = _xm_launch(["--workdir=gs://bucket/run1", "--accelerator=v5litepod-64"], env)
  assert r.returncode == 0, r.stderr
  add = [json.loads(l) for l in open(log)][-1]
  job = add["jobs"]["job"]
  assert job["executor"] == "Kubernetes" and job["requirements"] == {"tpu_v5e": 64}
  assert "XLA_FLAGS" not in job["env"]


# ----------------------------------------------------------------------------- SLURM


def _sbatch(script, args, **env):
  full = dict(os.environ, **{"DRY_RUN": "1", **env})
  for k in ("WORKDIR", "TRAIN", "TOKENIZER", "POLICY", "TEACHER", "SLURM_SUBMIT_DIR", "EARLYRL_REPO"):
    if k not in env:
      full.pop(k, None)
  return subprocess.run(["bash", os.path.join(REPO, "launch", "slurm", script), *args], cwd="/",
                        env=full, capture_output=True, text=True, timeout=60)


def _srun_argv(stdout: str) -> list[str]:
  [line] = stdout.strip().splitlines()
  argv = shlex.split(line)
  assert argv[:6] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "earlyrl_jax.main",
                      "--distributed"]
  return argv[6:]


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
def test_slurm_scripts_parse():
  for name in ("common.sh", "pretrain.sbatch", "sip.sbatch"):
    r = subprocess.run(["bash", "-n", os.path.join(REPO, "launch", "slurm", name)],
                       capture_output=True, text=True)
    assert r.returncode == 0, (name, r.stderr)


@needs_bash
def test_slurm_sip_dry_run():
  r = _sbatch("sip.sbatch", ["/shared/runs/sip1", "/models/Llama 1B", "/models/teacher-8b",
                             "/data/a/*.jsonl,/data/b/*.jsonl", "--config.sip.num_rollouts=8",
                             "--config.num_steps=100"])
  assert r.returncode == 0, r.stderr
  argv = _srun_argv(r.stdout)
  config = os.path.join(REPO, "configs", "midtrain.py")
  overrides = ["--config.init.params_from=/models/Llama 1B",
               "--config.teacher.path=/models/teacher-8b",
               "--config.data.train_files=/data/a/*.jsonl,/data/b/*.jsonl",
               "--config.data.tokenizer_path=/models/Llama 1B/tokenizer.json",
               "--config.sip.num_rollouts=8", "--config.num_steps=100"]
  assert argv == [f"--config={config}", "--workdir=/shared/runs/sip1", *overrides]
  # The overrides name real fields of configs/midtrain.py and parse as earlyrl_jax.main does.
  cfg = jobspec.load_with_overrides(config, overrides)
  assert cfg.mode == "sip"
  assert cfg.init.params_from == "/models/Llama 1B" and cfg.teacher.path == "/models/teacher-8b"
  assert cfg.data.train_files == "/data/a/*.jsonl,/data/b/*.jsonl"
  assert cfg.data.tokenizer_path == "/models/Llama 1B/tokenizer.json"
  assert cfg.sip.num_rollouts == 8 and cfg.num_steps == 100

  # Arguments from the environment, a TOKENIZER of its own, overrides after `--`.
  r = _sbatch("sip.sbatch", ["--", "--config.sip.judge_scheme=adaptive"], WORKDIR="/w",
              POLICY="/p", TEACHER="/t", TRAIN="/d/*.jsonl", TOKENIZER="/tok.json")
  assert r.returncode == 0, r.stderr
  argv = _srun_argv(r.stdout)
  assert "--config.data.tokenizer_path=/tok.json" in argv
  assert argv[-1] == "--config.sip.judge_scheme=adaptive"

  r = _sbatch("sip.sbatch", ["/w", "/p"])
  assert r.returncode == 2 and "TEACHER is not set" in r.stderr and "usage: sbatch" in r.stderr


@needs_bash
def test_slurm_pretrain_dry_run():
  r = _sbatch("pretrain.sbatch", ["/shared/runs/llama1b", "/data/corpus/*.jsonl",
                                  "/models/llama3/tokenizer.json", "--config.num_steps=5000"])
  assert r.returncode == 0, r.stderr
  argv = _srun_argv(r.stdout)
  config = os.path.join(REPO, "configs", "pretrain.py")
  assert argv[:2] == [f"--config={config}", "--workdir=/shared/runs/llama1b"]
  cfg = jobspec.load_with_overrides(config, argv[2:])
  assert cfg.mode == "pretrain" and cfg.num_steps == 5000
  assert cfg.data.train_files == "/data/corpus/*.jsonl"
  assert cfg.data.tokenizer_path == "/models/llama3/tokenizer.json"


def _readme_commands() -> list[list[str]]:
  """The launcher commands of launch/README.md's code blocks, continuation lines joined."""
  text = open(os.path.join(REPO, "launch", "README.md")).read()
  blocks = text.split("```")[1::2]
  cmds = []
  for block in blocks:
    for cmd in block.replace("\\\n", " ").splitlines():
      argv = shlex.split(cmd)
      if argv[:1] in (["python"], ["sbatch"], ["DRY_RUN=1"]) and "launch/" in cmd:
        cmds.append(argv)
  return cmds


@needs_bash
def test_readme_commands_dry_run(no_xmanager):
  """Every launcher command launch/README.md shows runs, as a dry run."""
  cmds = _readme_commands()
  assert len(cmds) >= 6
  seen = set()
  for argv in cmds:
    if argv[0] == "DRY_RUN=1":
      argv = argv[1:]
    if argv[0] == "python":
      script = argv[1]
      run = [sys.executable, script, "--dry_run", *argv[2:]]
      env = no_xmanager
    else:  # sbatch SCRIPT ... / bash SCRIPT ...: the script itself, DRY_RUN=1
      script = argv[1]
      run = ["bash", script, *argv[2:]]
      env = dict(os.environ, DRY_RUN="1")
    r = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (argv, r.stderr)
    seen.add(script)
  assert seen == {"launch/xm_launch.py", "launch/slurm/pretrain.sbatch", "launch/slurm/sip.sbatch"}


def test_vertex_cluster_spec_gives_coordinator_count_and_id():
  """The XManager GPU launcher runs on Vertex AI, whose host list JAX does not read."""
  from earlyrl_jax.parallel.distributed import vertex_cluster
  spec = {"cluster": {"workerpool0": ["c-0:2222"], "workerpool1": ["w-0:2222", "w-1:2222"]},
          "task": {"type": "workerpool1", "index": 1}}
  assert vertex_cluster(json.dumps(spec)) == ("c-0:2222", 3, 2)
  spec["task"] = {"type": "workerpool0", "index": 0}
  assert vertex_cluster(json.dumps(spec)) == ("c-0:2222", 3, 0)
  with pytest.raises(ValueError, match="CLUSTER_SPEC"):
    vertex_cluster('{"task": {}}')


# ----------------------------------------------------------------------------- requeue on exit 75
# A run that a signal stopped exits 75 (earlyrl_jax.errors.STOPPED) after saving; the launchers
# put it back to work on that code and on no other.


def _fake_slurm(tmp_path, rc: int) -> dict:
  """srun and scontrol stand-ins on PATH: srun records its arguments and exits with `rc`,
  scontrol records its own."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "slurm.log"
  for name, body in (("srun", f'echo "srun $*" >> {log}\nexit {rc}\n'),
                     ("scontrol", f'echo "scontrol $*" >> {log}\n')):
    (bin_dir / name).write_text("#!/bin/bash\n" + body)
    (bin_dir / name).chmod(0o755)
  return dict(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DRY_RUN="0", SLURM_JOB_ID="4242",
              EARLYRL_REPO=REPO)


def _slurm_log(tmp_path) -> list[str]:
  path = tmp_path / "slurm.log"
  return path.read_text().splitlines() if path.exists() else []


@needs_bash
@pytest.mark.parametrize("rc,requeued", [(75, True), (0, False), (2, False), (1, False), (143, False)])
def test_slurm_requeues_on_the_stop_code_only(tmp_path, rc, requeued):
  from earlyrl_jax.errors import STOPPED
  assert STOPPED == 75  # the code common.sh names (EARLYRL_STOPPED)
  r = _sbatch("pretrain.sbatch", ["/shared/runs/r", "/data/*.jsonl", "/models/tok.json"],
              **_fake_slurm(tmp_path, rc))
  assert r.returncode == rc, r.stderr  # the job ends with the run's own code
  log = _slurm_log(tmp_path)
  assert log[0].startswith("srun --kill-on-bad-exit=1 python -m earlyrl_jax.main --distributed")
  assert ("scontrol requeue 4242" in log) == requeued, log
  assert ("requeueing job 4242" in r.stderr) == requeued


@needs_bash
def test_slurm_requeue_stops_at_its_limit(tmp_path):
  env = _fake_slurm(tmp_path, 75)
  r = _sbatch("sip.sbatch", ["/w", "/p", "/t", "/d/*.jsonl"], SLURM_RESTART_COUNT="3",
              EARLYRL_MAX_REQUEUES="3", **env)
  assert r.returncode == 75
  assert not any(l.startswith("scontrol") for l in _slurm_log(tmp_path))
  assert "requeued 3 times (EARLYRL_MAX_REQUEUES=3), not again" in r.stderr


_CHILD = r'''
import os, signal, sys, time
count = os.path.join(sys.argv[1], "runs")
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
codes = [int(c) for c in sys.argv[2].split(",")]
if codes[min(n, len(codes)) - 1] == -1:   # wait for a stop signal, then "save" and exit 75
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
  print("WAITING", flush=True)
  time.sleep(60)
  sys.exit(3)
sys.exit(codes[min(n, len(codes)) - 1])
'''


def _requeue(tmp_path, codes: str, *flags):
  child = tmp_path / "child.py"
  child.write_text(_CHILD)
  return [sys.executable, "-m", "launch.requeue", *flags, "--", sys.executable, str(child),
          str(tmp_path), codes]


def _runs(tmp_path) -> int:
  return int((tmp_path / "runs").read_text())


@pytest.mark.parametrize("codes,flags,rc,runs", [
    ("75,75,0", (), 0, 3),                      # stopped twice, resumed, finished
    ("2", (), 2, 1),                            # a user error is never retried
    ("1", (), 1, 1),                            # nor a crash
    ("75", ("--max_requeues=2",), 75, 3),       # the limit: one run and two restarts
    ("75", ("--max_requeues=0",), 75, 1),
])
def test_requeue_wrapper_restarts_on_75_only(tmp_path, codes, flags, rc, runs):
  r = subprocess.run(_requeue(tmp_path, codes, *flags), cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == rc, r.stderr
  assert _runs(tmp_path) == runs
  assert r.stderr.count("restarting it") == (runs - 1)


def test_requeue_wrapper_passes_a_stop_on_and_does_not_restart(tmp_path):
  """SIGTERM to the wrapper (the container is being stopped): the run gets it, saves (here:
  exits 75) and the wrapper exits 75 without starting it again."""
  import signal
  p = subprocess.Popen(_requeue(tmp_path, "-1"), cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "WAITING"
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=60)
  assert p.returncode == 75, err
  assert _runs(tmp_path) == 1 and "restarting" not in err
