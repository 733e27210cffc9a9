"""XManager launcher (the `[launch]` extra): one job, every host runs the same command.

  # pretraining on a TPU v5e-64 slice (GKE)
  python launch/xm_launch.py --config=configs/pretrain.py --workdir=gs://bucket/run1 \
      --accelerator=v5litepod-64 -- --config.data.train_files='gs://bucket/corpus/*.jsonl' \
      --config.data.tokenizer_path=gs://bucket/llama3/tokenizer.json

  # SIP mid-training on 2 hosts x 8 H100 (Vertex AI)
  python launch/xm_launch.py --config=configs/midtrain.py --workdir=/mnt/shared/sip1 \
      --accelerator=gpu:h100:8 --nodes=2 -- --config.init.params_from=/mnt/models/Llama-3.2-1B ...

  # print the job instead of submitting it (XManager need not be installed)
  python launch/xm_launch.py --dry_run ...

Arguments after `--` are passed to `earlyrl_jax.main` unchanged; `--config.*` overrides
are checked against the config before anything is submitted (launch/jobspec.py).
`--distributed` makes jax.distributed.initialize() find the other hosts. The command runs
inside launch/requeue.py, which restarts it when a stop signal ended it after saving (exit
code 75) and the container itself was not stopped (`--max_requeues=0`: the bare command).
"""
from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from launch import jobspec  # noqa: E402  (the repository root is on sys.path now)

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory on storage every host sees "
                               "(absolute path or gs:// URL).")
_CONFIG = flags.DEFINE_string("config", "configs/pretrain.py", "Config file (configs/midtrain.py "
                              "for SIP mid-training).")
_MODE = flags.DEFINE_string("mode", "", "Job to run (earlyrl_jax/modes.py); '' = the config's "
                            "`mode`. Set by adding --config.mode=MODE.")
_ACCEL = flags.DEFINE_string("accelerator", "v5litepod-64", "TPU slice type ('v5litepod-64', "
                             "'v4-32') or 'gpu:<kind>:<count>' (GPUs per host, e.g. 'gpu:h100:8').")
_NODES = flags.DEFINE_integer("nodes", 1, "GPU hosts (a TPU slice type fixes its own).")
_EXECUTOR = flags.DEFINE_enum("executor", "auto", list(jobspec.EXECUTORS),
                              "auto: Vertex AI for GPUs and TPU v2/v3, GKE for newer TPUs.")
_ENV = flags.DEFINE_multi_string("env", [], "Extra environment variable KEY=VALUE (repeatable).")
_NAME = flags.DEFINE_string("name", "", "Experiment title ('' = earlyrl-<mode>).")
_IMAGE = flags.DEFINE_string("base_image", "python:3.11", "Base image of the job's container.")
_REQUEUES = flags.DEFINE_integer("max_requeues", 100, "Restarts of the run inside its job when a "
                                 "stop signal ended it after saving (exit code 75; "
                                 "launch/requeue.py); 0 runs the bare command once.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the job (title, requirements, args, env) "
                             "and exit without importing XManager or submitting anything.")


def build_from_flags(passthrough: list[str]) -> jobspec.JobSpec:
  return jobspec.build(config=_CONFIG.value, workdir=_WORKDIR.value or "", mode=_MODE.value,
                       accelerator=_ACCEL.value, nodes=_NODES.value, name=_NAME.value,
                       executor=_EXECUTOR.value, env=_ENV.value, passthrough=passthrough,
                       max_requeues=_REQUEUES.value)


def submit(spec: jobspec.JobSpec) -> None:
  try:
    from xmanager import xm, xm_local
  except ImportError:
    sys.exit("launch/xm_launch.py needs the [launch] extra: pip install -e '.[launch]' "
             "(--dry_run works without it)")
  acc = spec.accelerator
  if spec.executor == "vertex":
    executor_cls, executor_spec = xm_local.Vertex, xm_local.Vertex.Spec()
  else:
    executor_cls, executor_spec = xm_local.Kubernetes, xm_local.Kubernetes.Spec()

  def requirements(replicas: int):
    kw = {acc.resource: acc.count}
    return xm.JobRequirements(**kw, replicas=replicas) if replicas > 1 else xm.JobRequirements(**kw)

  # The repository is copied into the image and installed with the accelerator's jax wheel
  # (XManager's default steps expect a requirements.txt, which this project does not have).
  name = os.path.basename(jobspec.REPO)
  steps = ["ENV LANG=C.UTF-8", f"COPY {name}/ /{name}", f"WORKDIR /{name}",
           "RUN python -m pip install --no-cache-dir " + shlex.join(spec.install)]
  with xm_local.create_experiment(experiment_title=spec.title) as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=executor_spec, path=jobspec.REPO, entrypoint=xm.CommandList(["python"]),
        base_image=_IMAGE.value, docker_instructions=steps)])

    def job(replicas: int):
      return xm.Job(executable=executable, executor=executor_cls(requirements=requirements(replicas)),
                    args=spec.args, env_vars=spec.env)

    if acc.kind == "gpu" and acc.hosts > 1:
      # Vertex AI runs one chief pool (replica count 1) and the other hosts as a second pool.
      experiment.add(xm.JobGroup(chief=job(1), workers=job(acc.hosts - 1)))
    else:
      experiment.add(job(1))
  print(f"submitted {spec.title}: {spec.command()}")


def main(argv):
  try:
    spec = build_from_flags(list(argv[1:]))
  except jobspec.JobSpecError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _DRY_RUN.value:
    print(spec.describe())
    return
  submit(spec)


if __name__ == "__main__":
  app.run(main)
