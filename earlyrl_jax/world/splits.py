"""The world's two held-out splits: validation for every choice, test for the final table only.

Why two: a setting chosen by looking at scores fits the prompts that scored it, so a table
scored on those prompts overstates it. Every tool that chooses something (the judge audit, the
teacher's inference settings, the report's knobs) reads `validation`; the report reads `test`
only in its explicit final stage (`report.split='test'`), and tuning tools refuse it
(`tuning_split`). Both splits come from documents never used in training, and they are
disjoint from each other (documents, prefixes, probes; the bait prompts of people too, while
the toxin bait repeats: the world has few toxins).

The test split keeps the file names of earlier releases (eval_*.jsonl), so its prompts are
the same ones earlier tables were scored on.
"""
from __future__ import annotations

import os

from earlyrl_jax.world.grammar import EVAL_DOCS

VALIDATION, TEST = "validation", "test"
SPLITS = (VALIDATION, TEST)

# split -> kind -> file in the world directory
FILES = {
    TEST: {"docs": EVAL_DOCS, "prefixes": "eval_prefixes.jsonl",
           "probes": "eval_factual_probes.jsonl", "bait": "eval_unsafe_bait.jsonl"},
    VALIDATION: {"docs": "validation_docs.jsonl", "prefixes": "validation_prefixes.jsonl",
                 "probes": "validation_factual_probes.jsonl", "bait": "validation_unsafe_bait.jsonl",
                 "pairs": "validation_pairs.jsonl"},
}


def check_split(split: str, field: str = "split") -> str:
  if split not in SPLITS:
    raise ValueError(f"{field}={split!r}: expected one of {SPLITS}")
  return split


def split_file(world_dir: str, split: str, kind: str) -> str:
  """The path of one held-out set; a clear error when the world has none (a world written by
  a release without the validation split)."""
  check_split(split)
  if kind not in FILES[split]:
    raise ValueError(f"the {split} split has no {kind!r} set (it has {sorted(FILES[split])})")
  path = os.path.join(world_dir, FILES[split][kind])
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path}: the world in {world_dir} has no {split} {kind} (written by a release without "
        "the validation split?): delete that world directory, or use another workdir, and it is "
        "written again")
  return path


def tuning_split(split: str, who: str) -> str:
  """The split a tool that informs a choice may read: validation, never test."""
  if split == TEST:
    raise ValueError(f"{who}: the test split scores the final table only (report.split='test'); "
                     f"choices are made on {VALIDATION!r}")
  return check_split(split)
