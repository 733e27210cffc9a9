"""Lazy safetensors reading (and writing) through the `safetensors` package.

`safe_open(path, framework="np")` memory-maps the file, returns bfloat16 tensors
as `ml_dtypes.bfloat16` numpy arrays, and `get_slice(name)[a:b, c:d]` reads only
the requested block, so a host reads only the shards its devices own (see
hf_io.load_params). This module adds what the package leaves to callers: one
reader over a single file or a sharded index, the refusal of pickle checkpoints,
errors that name the file, and atomic writes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file as _st_save_file

from earlyrl_jax.errors import CheckpointError, json_problem

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}


def _np_dtype(name: str) -> np.dtype:
  import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def read_json(path: str) -> dict:
  """A JSON object file of a checkpoint; anything else is a CheckpointError naming file:line."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except UnicodeDecodeError as e:
    raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}:{e.lineno}: not JSON ({json_problem(e)})") from None
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: holds a JSON {type(obj).__name__}, not an object")
  return obj


class LazyTensor:
  """One tensor of a file: `.shape`, `.dtype`; indexing with slices reads only that block."""

  def __init__(self, file: "SafetensorsFile", name: str):
    self._file, self.name = file, name
    self._slice = file._handle().get_slice(name)
    self.shape = tuple(self._slice.get_shape())
    d = self._slice.get_dtype()
    if d not in _DTYPES:
      raise CheckpointError(f"{file.path}: tensor {name!r} has unsupported dtype {d}")
    self.dtype = _np_dtype(_DTYPES[d])

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __getitem__(self, idx) -> np.ndarray:
    return self._slice[idx]

  def __array__(self, dtype=None, copy=None):
    a = self._slice[tuple(slice(None) for _ in self.shape)] if self.shape else self._file._handle().get_tensor(self.name)
    return a if dtype is None else a.astype(dtype)


class SafetensorsFile:
  """One .safetensors file; `get(name)` is a LazyTensor (nothing is read until indexed)."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._f = safe_open(path, framework="np")
    except (SafetensorError, OSError) as e:  # the header is checked against the file's size
      raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt "
                            f"({' '.join(str(e).split())})") from None
    self.metadata = self._f.metadata() or {}
    self._keys = list(self._f.keys())

  def _handle(self):
    return self._f

  def keys(self) -> list[str]:
    return list(self._keys)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._f.get_slice(name).get_shape())

  def dtype(self, name: str) -> np.dtype:
    d = self._f.get_slice(name).get_dtype()
    if d not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {d}")
    return _np_dtype(_DTYPES[d])

  def get(self, name: str) -> LazyTensor:
    return LazyTensor(self, name)


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
  """Writes numpy tensors (bfloat16 allowed) in safetensors format, atomically."""
  arrays = {}
  for name, a in tensors.items():
    a = np.ascontiguousarray(a)
    if a.dtype.name not in _DTYPES.values():
      raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
    arrays[name] = a
  tmp = path + ".tmp"
  _st_save_file(arrays, tmp, metadata=metadata)
  os.replace(tmp, path)


def save_sharded(plan: list[tuple[str, int, object]], load, directory: str, *,
                 max_shard_bytes: int = 5 * 2**30, metadata: dict[str, str] | None = None) -> None:
  """Writes tensors as model.safetensors, or as shards plus model.safetensors.index.json when
  their sum exceeds `max_shard_bytes` (HF's layout). `plan` lists (tensor name, bytes, key) in
  order; `load(key)` returns the array. Shards are planned from the sizes first, so only one
  shard's arrays are in memory at a time (an 8B model is written with ~5 GiB of host memory)."""
  shards: list[list[tuple[str, object]]] = [[]]
  size = 0
  for name, nbytes, key in plan:
    if size + nbytes > max_shard_bytes and shards[-1]:
      shards.append([])
      size = 0
    shards[-1].append((name, key))
    size += nbytes
  if len(shards) == 1:
    save_file({name: load(key) for name, key in shards[0]}, os.path.join(directory, "model.safetensors"),
              metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({name: load(key) for name, key in shard}, os.path.join(directory, fn), metadata)
    weight_map.update({name: fn for name, _ in shard})
  total = sum(nbytes for _, nbytes, _ in plan)
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


class CheckpointReader:
  """All tensors of an HF directory: one model.safetensors or a sharded index."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      weight_map = read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no \"weight_map\" object (tensor name -> file)")
      files = {}
      for fn in sorted(set(weight_map.values())):
        p = os.path.join(directory, fn)
        if not os.path.isfile(p):
          raise FileNotFoundError(f"{index}: lists {fn}, which is missing")
        files[fn] = SafetensorsFile(p)
      self._where = {name: files[fn] for name, fn in weight_map.items()}
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self._where = {name: f for name in f.keys()}
    else:
      bins = [x for x in os.listdir(directory) if x.endswith((".bin", ".pt", ".pth"))]
      if bins:
        raise CheckpointError(
            f"{directory}: only pickle checkpoints ({', '.join(sorted(bins))}) found. earlyrl_jax "
            "reads safetensors only (pickle files can execute code); convert them with "
            "transformers: model.save_pretrained(dir, safe_serialization=True)")
      raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def names(self) -> Iterable[str]:
    return self._where.keys()

  def get(self, name: str) -> LazyTensor:
    if name not in self._where:
      raise CheckpointError(f"{self.directory}: missing tensor {name!r}")
    return self._where[name].get(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self._where[name].dtype(name)
