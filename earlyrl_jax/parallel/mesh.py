"""Device meshes and the one table of logical-axis -> mesh-axis rules.

Model code names axes logically (`embed`, `heads`, `batch`, ...). This module is
the only place that knows mesh axis names (`data`, `fsdp`, `tensor`). Everything
that needs a sharding (params, optimizer state, batches, KV caches) asks here.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
# Parameters: FSDP shards the embed dimension, tensor parallelism shards heads,
# MLP hidden and vocab. Activations: batch over every data-like axis.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # Activations: the data-parallel axes already shard their batch dimension,
    # so their feature dimensions never use 'fsdp' again.
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


class MeshConfigError(ValueError):
  """A mesh config that does not fit the devices or the model."""


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces at most one -1 in `shape` by "the rest of the devices"."""
  shape = [int(s) for s in shape]
  if shape.count(-1) > 1:
    raise MeshConfigError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  for name, s in zip(MESH_AXES, shape):
    if s == 0 or s < -1:
      raise MeshConfigError(f"mesh.{name}={s}: axis sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise MeshConfigError(
          f"mesh {dict(zip(MESH_AXES, shape))}: the fixed axes ({known} devices) do not divide "
          f"the {num_devices} available devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise MeshConfigError(
        f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
        f"{num_devices} are available (set one axis to -1 to use the rest)")
  return tuple(shape)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  try:
    # Topology-aware device order on TPU/GPU when all devices are used.
    if len(devices) == jax.device_count():
      return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  except (TypeError, ValueError, NotImplementedError):
    pass  # no topology information for this device set: fall back to the given order
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def single_device_mesh() -> Mesh:
  """A (1, 1, 1) mesh on the first device: the default for loading and notebooks."""
  return make_mesh((1, 1, 1), jax.devices()[:1])


def mesh_from_config(mesh_cfg, devices=None) -> Mesh:
  """Builds the mesh from a `mesh` ConfigDict with fields data, fsdp, tensor."""
  return make_mesh((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), devices)


PLACEMENTS = ("shared", "submesh")


def split_devices(num_teacher: int, devices: Sequence[Any] | None = None
                  ) -> tuple[list[Any], list[Any]]:
  """(policy devices, teacher devices): the last `num_teacher / process_count` local devices of
  every process go to the teacher, the rest to the policy.

  An equal share per process (not whole hosts) because the teacher's Scorer and Sampler
  take each process's own rows: a teacher mesh that spans every process judges and
  rewrites each host's windows where they are, with no texts shipped between hosts.
  Both lists are process-major, so the data axis of either mesh stays host-contiguous.
  """
  devices = list(jax.devices() if devices is None else devices)
  procs = sorted({d.process_index for d in devices})
  local = {p: sorted((d for d in devices if d.process_index == p), key=lambda d: d.id) for p in procs}
  n_local = {len(v) for v in local.values()}
  if len(n_local) != 1:
    raise MeshConfigError(f"teacher.placement='submesh' needs the same number of devices on every "
                          f"process, got {sorted(n_local)}")
  n_local, n_procs = n_local.pop(), len(procs)
  if num_teacher < 1 or num_teacher % n_procs:
    raise MeshConfigError(
        f"teacher.devices={num_teacher}: the teacher's sub-mesh takes an equal share of every "
        f"process's devices, so it must be a positive multiple of the {n_procs} processes")
  per = num_teacher // n_procs
  if per >= n_local:
    raise MeshConfigError(
        f"teacher.devices={num_teacher} leaves the policy no device ({n_procs} process(es) x "
        f"{n_local} devices = {len(devices)}); lower teacher.devices or use "
        "teacher.placement='shared'")
  policy = [d for p in procs for d in local[p][:n_local - per]]
  teacher = [d for p in procs for d in local[p][n_local - per:]]
  return policy, teacher


def placement_devices(teacher_cfg, devices: Sequence[Any] | None = None
                      ) -> tuple[list[Any] | None, list[Any] | None]:
  """(policy devices, teacher devices) of a `teacher` config section; (None, None) = all shared.

  teacher.placement='shared' (or no teacher section): policy and teacher time-share every
  device. 'submesh': `split_devices(teacher.devices)`.
  """
  placement = teacher_cfg.get("placement", "shared") if teacher_cfg is not None else "shared"
  if placement not in PLACEMENTS:
    raise MeshConfigError(f"teacher.placement={placement!r} is not one of {PLACEMENTS}")
  if placement == "shared":
    return None, None
  return split_devices(int(teacher_cfg.get("devices", 0)), devices)


def policy_mesh(cfg) -> Mesh:
  """The policy's mesh (`cfg.mesh`): over every device, or over those that
  teacher.placement='submesh' leaves to the policy."""
  return mesh_from_config(cfg.mesh, placement_devices(cfg.get("teacher"))[0])


def teacher_mesh_shape(teacher_cfg) -> tuple[int, int, int]:
  """(data, fsdp, tensor) of `teacher.mesh`; without one, FSDP over the teacher's devices
  (a large teacher's weights are split, its judged rows still spread over every device)."""
  m = teacher_cfg.get("mesh") if teacher_cfg is not None else None
  return (int(m.data), int(m.fsdp), int(m.tensor)) if m is not None else (1, -1, 1)


def logical_to_spec(names: Sequence[str | None] | None, rules=LOGICAL_RULES) -> P:
  """('batch', 'length') -> P(('data', 'fsdp'), None)."""
  if names is None:
    return P()
  table = dict(rules)
  out = []
  for n in names:
    if n is None:
      out.append(None)
    elif n not in table:
      raise KeyError(f"logical axis {n!r} has no rule in earlyrl_jax.parallel.mesh.LOGICAL_RULES")
    else:
      out.append(table[n])
  return P(*out)


def named_sharding(mesh: Mesh, names: Sequence[str | None] | None, rules=LOGICAL_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for an nnx.State whose Variables carry `out_sharding` names."""
  with nnx.logical_axis_rules(rules):
    return nnx.get_named_sharding(abstract_state, mesh)


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that carry target shardings: restore templates (orbax, jit lowering)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def data_parallel_size(mesh: Mesh) -> int:
  """Number of shards of the batch axis (data x fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh context.

  Model code calls this with logical names so that the same code runs on one
  CPU (no mesh set) and on a pod (mesh set by the caller via `jax.set_mesh`).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
  """`jax.set_mesh(mesh)` that accepts None (no mesh)."""
  if mesh is None:
    yield
  else:
    with jax.set_mesh(mesh):
      yield


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays sharded over the batch axis.

  Every leading dimension is the per-host slice of the global batch (multi-host:
  each process passes its own rows; the global batch is their concatenation).
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    names = ("batch",) + (None,) * (v.ndim - 1) if v.ndim else None
    sharding = named_sharding(mesh, names)
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def check_divisible(value: int, divisor: int, what: str, field: str) -> None:
  if divisor > 1 and value % divisor:
    raise MeshConfigError(f"{field}={value}: {what} must be divisible by {divisor}")
