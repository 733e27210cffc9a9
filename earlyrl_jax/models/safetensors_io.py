"""Lazy, memory-mapped safetensors reading (and writing), bfloat16 included.

Why not the `safetensors` package here: its numpy backend cannot represent
bfloat16, the dtype most HF checkpoints ship in, and its torch/flax backends
materialise whole tensors. Reading the format directly with `np.memmap` and
`ml_dtypes` gives zero-copy slices, so a host reads only the shards its devices
own. The format is small and stable: an 8-byte little-endian header length, a
JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """One .safetensors file; `get(name)` is a read-only memory-mapped array view."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(path):
        raise ValueError(f"{path}: not a safetensors file (bad header length)")
      header = json.loads(f.read(n))
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header = header
    self._base = 8 + n
    self._mm = None

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    d = self.header[name]["dtype"]
    if d not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {d}")
    return np.dtype(_DTYPES[d])

  def get(self, name: str) -> np.ndarray:
    if self._mm is None:
      self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
    info = self.header[name]
    start, end = info["data_offsets"]
    buf = self._mm[self._base + start:self._base + end]
    return buf.view(self.dtype(name)).reshape(info["shape"])


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
  """Writes tensors (numpy, bfloat16 allowed) in safetensors format, atomically."""
  header, offset = {}, 0
  arrays = []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)


class CheckpointReader:
  """All tensors of an HF directory: one model.safetensors or a sharded index."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in sorted(set(weight_map.values()))}
      self._where = {name: files[fn] for name, fn in weight_map.items()}
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self._where = {name: f for name in f.keys()}
    else:
      bins = [x for x in os.listdir(directory) if x.endswith((".bin", ".pt", ".pth"))]
      if bins:
        raise ValueError(
            f"{directory}: only pickle checkpoints ({', '.join(sorted(bins))}) found. earlyrl_jax "
            "reads safetensors only (pickle files can execute code); convert them with "
            "transformers: model.save_pretrained(dir, safe_serialization=True)")
      raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def names(self) -> Iterable[str]:
    return self._where.keys()

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(f"{self.directory}: missing tensor {name!r}")
    return self._where[name].get(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self._where[name].dtype(name)
