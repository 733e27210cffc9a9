"""`jax.distributed.initialize` from the environment (SLURM, TPU pods, explicit coordinator).

On Cloud TPU and under SLURM, JAX discovers the coordinator itself. Elsewhere set
EARLYRL_COORDINATOR=host:port, EARLYRL_NUM_PROCESSES and EARLYRL_PROCESS_ID.
"""
from __future__ import annotations

import os

import jax


def initialize() -> None:
  coord = os.environ.get("EARLYRL_COORDINATOR")
  if coord:
    try:
      n, pid = int(os.environ["EARLYRL_NUM_PROCESSES"]), int(os.environ["EARLYRL_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("EARLYRL_COORDINATOR is set, so EARLYRL_NUM_PROCESSES and "
                       "EARLYRL_PROCESS_ID must be integers too") from e
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)
  else:
    jax.distributed.initialize()  # SLURM / TPU / GKE auto-detection
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"of {jax.device_count()} devices", flush=True)
