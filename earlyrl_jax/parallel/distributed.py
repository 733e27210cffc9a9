"""`jax.distributed.initialize` from the environment (SLURM, TPU pods, explicit coordinator).

On Cloud TPU and under SLURM, JAX discovers the coordinator itself; on Vertex AI (the XManager
GPU launcher) it is read from CLUSTER_SPEC, which JAX does not read. Elsewhere set
EARLYRL_COORDINATOR=host:port, EARLYRL_NUM_PROCESSES and EARLYRL_PROCESS_ID.
"""
from __future__ import annotations

import json
import os

import jax


def vertex_cluster(spec: str) -> tuple[str, int, int]:
  """(coordinator, process count, process id) from Vertex AI's CLUSTER_SPEC JSON.

  Hosts are numbered pool by pool (workerpool0 = the chief first); the chief's address
  (host:port, a port Vertex opens between the job's hosts) is the coordinator.
  """
  try:
    s = json.loads(spec)
    cluster, task = s["cluster"], s["task"]
    pools = sorted(k for k in cluster if k.startswith("workerpool"))
    before = sum(len(cluster[k]) for k in pools if k < task["type"])
    return cluster[pools[0]][0], sum(len(cluster[k]) for k in pools), before + int(task["index"])
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise ValueError(f"CLUSTER_SPEC is not a Vertex AI cluster spec ({e!r}): {spec[:200]!r}") from e


def initialize() -> None:
  coord = os.environ.get("EARLYRL_COORDINATOR")
  if coord:
    try:
      n, pid = int(os.environ["EARLYRL_NUM_PROCESSES"]), int(os.environ["EARLYRL_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("EARLYRL_COORDINATOR is set, so EARLYRL_NUM_PROCESSES and "
                       "EARLYRL_PROCESS_ID must be integers too") from e
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)
  elif os.environ.get("CLUSTER_SPEC"):
    coord, n, pid = vertex_cluster(os.environ["CLUSTER_SPEC"])
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)
  else:
    jax.distributed.initialize()  # SLURM / TPU / GKE auto-detection
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"of {jax.device_count()} devices", flush=True)
