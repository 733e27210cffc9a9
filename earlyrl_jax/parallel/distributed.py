"""`jax.distributed.initialize` from the environment (SLURM, TPU pods, explicit coordinator).

On Cloud TPU and under SLURM, JAX discovers the coordinator itself; on Vertex AI (the XManager
GPU launcher) it is read from CLUSTER_SPEC, which JAX does not read. Elsewhere set
EARLYRL_COORDINATOR=host:port, EARLYRL_NUM_PROCESSES and EARLYRL_PROCESS_ID.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Sequence

import jax
import numpy as np


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


# --------------------------------------------------------------------------- host-level agreement

HOST_GATHER_TIMEOUT_S = float(os.environ.get("EARLYRL_HOST_GATHER_TIMEOUT_S", 3600))
_KEY_PREFIX = "earlyrl_jax/host_allgather"
_gather_calls = itertools.count()


def _coordination_client():
  from jax._src import distributed as jax_distributed  # the client JAX's own checkpointing uses
  return getattr(getattr(jax_distributed, "global_state", None), "client", None)


def host_allgather(values: Sequence[int]) -> np.ndarray:
  """Every process's `values`: int64 [process_count, len(values)], row p from process p.

  Goes through the coordination service's key-value store, not through an XLA program: host
  decisions (how many chunks to run, bucket sizes, a preemption flag) need no device, and a
  program over every device (`multihost_utils.process_allgather`) queues behind, and runs its
  cross-host collective beside, whatever the policy's and the teacher's sub-meshes still have in
  flight. Like any collective, every process makes the same calls in the same order.
  """
  vals = [int(v) for v in values]
  n = jax.process_count()
  if n == 1:
    return np.asarray([vals], np.int64).reshape(1, len(vals))
  client = _coordination_client()
  if client is None:  # several processes without jax.distributed: only a device program can ask
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.asarray(vals, np.int64))
    return np.asarray(got, np.int64).reshape(n, len(vals))
  call, me = next(_gather_calls), jax.process_index()
  client.key_value_set(f"{_KEY_PREFIX}/{call}/{me}", ",".join(map(str, vals)))
  rows = []
  for p in range(n):
    try:
      got = client.blocking_key_value_get(f"{_KEY_PREFIX}/{call}/{p}", int(HOST_GATHER_TIMEOUT_S * 1000))
    except Exception as e:  # JaxRuntimeError DEADLINE_EXCEEDED, or the service went away
      raise RuntimeError(
          f"process {me}: process {p} gave no values to host all-gather #{call} within "
          f"{HOST_GATHER_TIMEOUT_S:.0f}s (EARLYRL_HOST_GATHER_TIMEOUT_S): it stopped, or the "
          "processes' calls are out of step") from e
    rows.append([int(x) for x in got.split(",")] if got else [])
  if call:  # every process has written #call, so all have read #call-1: this key is done
    client.key_value_delete(f"{_KEY_PREFIX}/{call - 1}/{me}")
  return np.asarray(rows, np.int64).reshape(n, len(vals))
