"""XManager launcher (the `[launch]` extra): one job, N hosts, same command everywhere.

  python launch/xm_launch.py --workdir=/mnt/runs/run1 --config=configs/pretrain.py \
      --accelerator=v5litepod-64 -- --config.checkpoint.dir=gs://bucket/run1/checkpoints

Arguments after `--` are passed to `earlyrl_jax.main` unchanged. On Cloud TPU,
`--distributed` lets jax.distributed.initialize() discover the pod itself.
"""
from __future__ import annotations

import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory on shared storage.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/pretrain.py", "Config file.")
_ACCEL = flags.DEFINE_string("accelerator", "v5litepod-64", "TPU type, or 'gpu:h100:8'.")
_NAME = flags.DEFINE_string("name", "earlyrl", "Experiment title.")


def main(argv):
  try:
    from xmanager import xm, xm_local
  except ImportError:
    sys.exit("launch/xm_launch.py needs the [launch] extra: pip install -e '.[launch]'")
  passthrough = list(argv[1:])
  args = ["-m", "earlyrl_jax.main", "--distributed", f"--config={_CONFIG.value}",
          f"--workdir={_WORKDIR.value}", *passthrough]
  if _ACCEL.value.startswith("gpu:"):
    _, kind, count = _ACCEL.value.split(":")
    requirements = xm.JobRequirements(**{kind: int(count)})
  else:
    requirements = xm.JobRequirements(tpu=_ACCEL.value)
  with xm_local.create_experiment(experiment_title=_NAME.value) as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=xm_local.Vertex.Spec(), path=".", entrypoint=xm.CommandList(["python"]),
        base_image="python:3.11")])
    experiment.add(xm.Job(executable=executable, executor=xm_local.Vertex(requirements=requirements),
                          args=args))


if __name__ == "__main__":
  app.run(main)
