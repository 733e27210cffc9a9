"""The judge's labelled data: a JSONL schema, its reader, label noise and the world's exporter.

One record per line, of one of two kinds:

  pair   {"prefix": str, "a": str, "b": str,
          "labels": {"quality": "a"|"b"|"tie", "factuality": ..., "safety": ...},  (any subset)
          "reference": str}                    (optional: factuality's reference, default "")
         which candidate is better on each axis ("tie": no preference, never trained on)
  point  {"prefix": str (optional), "text": str, "safety": "safe"|"unsafe"}

`read_items` checks every record and raises DataError naming the file, the line and the field.
`add_label_noise` flips each non-tie label with probability `share`: the stand-in for a human
annotator who gets some labels wrong. `export_world` writes the world's supervision in this
schema: its training pairs (preferences.jsonl) for training, its validation pairs for held-out
agreement (world/splits.py; the test split is never read).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Sequence

from earlyrl_jax.data.sources import DataError
from earlyrl_jax.errors import json_problem

from earlyrl_jax.judge_train.settings import AXES
PAIR_LABELS = ("a", "b", "tie")
POINT_LABELS = ("safe", "unsafe")


@dataclasses.dataclass(frozen=True)
class Pair:
  prefix: str
  a: str
  b: str
  labels: dict          # axis -> 'a' | 'b' | 'tie'
  reference: str = ""   # factuality's reference continuation ('' = judged without one)

  def to_json(self) -> dict:
    out = {"prefix": self.prefix, "a": self.a, "b": self.b, "labels": dict(self.labels)}
    if self.reference:
      out["reference"] = self.reference
    return out


@dataclasses.dataclass(frozen=True)
class Point:
  text: str
  safety: str           # 'safe' | 'unsafe'
  prefix: str = ""

  def to_json(self) -> dict:
    return {"prefix": self.prefix, "text": self.text, "safety": self.safety}


Item = Pair | Point


def _string(rec: dict, key: str, where: str, *, required: bool = True) -> str:
  if key not in rec:
    if required:
      raise DataError(f"{where}: field '{key}' is missing")
    return ""
  v = rec[key]
  if not isinstance(v, str):
    raise DataError(f"{where}: field '{key}' must be a string, got {type(v).__name__}")
  return v


def parse_item(rec, where: str) -> Item:
  """One decoded JSON record -> Pair or Point; DataError naming `where` ('file:line') and field."""
  if not isinstance(rec, dict):
    raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
  if "text" in rec or "safety" in rec:   # a pointwise safety item
    extra = sorted(set(rec) - {"prefix", "text", "safety"})
    if extra:
      raise DataError(f"{where}: field '{extra[0]}': unknown in a pointwise item (fields: prefix, "
                      "text, safety)")
    label = rec.get("safety")
    if label not in POINT_LABELS:
      raise DataError(f"{where}: field 'safety': {label!r} is not one of {', '.join(POINT_LABELS)}")
    return Point(_string(rec, "text", where), label, _string(rec, "prefix", where, required=False))
  extra = sorted(set(rec) - {"prefix", "a", "b", "labels", "reference", "defect", "id"})
  if extra:
    raise DataError(f"{where}: field '{extra[0]}': unknown (a pair has prefix, a, b, labels, "
                    "reference; a pointwise item text, safety)")
  prefix, a, b = (_string(rec, k, where) for k in ("prefix", "a", "b"))
  labels = rec.get("labels")
  if not isinstance(labels, dict) or not labels:
    raise DataError(f"{where}: field 'labels' must be an object with a label per axis "
                    f"({', '.join(AXES)}), got {labels!r}")
  for axis, v in labels.items():
    if axis not in AXES:
      raise DataError(f"{where}: field 'labels.{axis}': not an axis ({', '.join(AXES)})")
    if v not in PAIR_LABELS:
      raise DataError(f"{where}: field 'labels.{axis}': {v!r} is not one of {', '.join(PAIR_LABELS)}")
  return Pair(prefix, a, b, dict(labels), _string(rec, "reference", where, required=False))


def read_items(path: str, *, field: str = "judge_train.data") -> list[Item]:
  """Every record of a JSONL file, checked (blank lines skipped). DataError names the file:line
  and the field of the first bad record; `field` names the setting when the file is missing."""
  if not os.path.isfile(path):
    raise DataError(f"{field}: {path}: no such file")
  items = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: not JSON ({json_problem(e)})") from None
      items.append(parse_item(rec, where))
  if not items:
    raise DataError(f"{field}: {path} holds no records")
  return items


def write_items(path: str, items: Iterable[Item]) -> int:
  """JSONL, replaced atomically (a reader sees the old file or the whole new one)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp, n = path + ".tmp", 0
  with open(tmp, "w", encoding="utf-8") as f:
    for it in items:
      f.write(json.dumps(it.to_json(), ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


_FLIP = {"a": "b", "b": "a", "safe": "unsafe", "unsafe": "safe"}


def add_label_noise(items: Sequence[Item], share: float, seed: int) -> tuple[list[Item], int]:
  """(items with each non-tie label flipped with probability `share`, labels flipped): the human
  annotator's mistakes. Ties stay ties (an annotator without a preference has none to flip)."""
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"judge_train.label_noise={share!r}: expected a probability in [0, 1]")
  rng, out, flipped = random.Random(seed), [], 0
  for it in items:
    if isinstance(it, Point):
      if rng.random() < share:
        it, flipped = dataclasses.replace(it, safety=_FLIP[it.safety]), flipped + 1
    else:
      labels = {}
      for axis, v in it.labels.items():
        if v != "tie" and rng.random() < share:
          v, flipped = _FLIP[v], flipped + 1
        labels[axis] = v
      it = dataclasses.replace(it, labels=labels)
    out.append(it)
  return out, flipped


def label_counts(items: Sequence[Item]) -> dict[str, int]:
  """Non-tie labels per axis (pointwise safety items counted as 'safety_point')."""
  out: dict[str, int] = {}
  for it in items:
    keys = ["safety_point"] if isinstance(it, Point) else [a for a, v in it.labels.items() if v != "tie"]
    for k in keys:
      out[k] = out.get(k, 0) + 1
  return out


# ----------------------------------------------------------------------------- the world's supervision

def world_pairs(world_dir: str, split: str) -> list[Pair]:
  """The world's labelled pairs of `split`: 'train' (preferences.jsonl, the teacher supervision)
  or 'validation' (the held-out pairs). The test split is not offered: it scores the report's
  final table only."""
  from earlyrl_jax import world as W
  if split == "train":
    path = os.path.join(world_dir, "preferences.jsonl")
  elif split == "validation":
    path = W.split_file(world_dir, W.VALIDATION, "pairs")
  else:
    raise ValueError(f"split={split!r}: the world's judge supervision is 'train' or 'validation' "
                     "(the test split is never read here)")
  items = read_items(path, field=f"the world's {split} pairs")
  return [it for it in items if isinstance(it, Pair)]


def export_world(world_dir: str, out_path: str, *, split: str, label_noise: float = 0.0,
                 seed: int = 0, limit: int = 0) -> dict:
  """Writes the world's `split` pairs (the first `limit`, 0 = all) to `out_path` in this schema,
  with `label_noise` applied (use 0 for held-out pairs: agreement is measured against the
  oracles' labels). Returns {'items', 'flipped', 'labels': per-axis counts}."""
  items = world_pairs(world_dir, split)
  items = items[:limit] if limit else items
  noisy, flipped = add_label_noise(items, label_noise, seed)
  n = write_items(out_path, noisy)
  return {"items": n, "flipped": flipped, "labels": label_counts(noisy)}
