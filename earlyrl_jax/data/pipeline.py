"""Documents -> tokens -> packed LM batches, or (prefix, suffix) windows.

    source (random access) ─[host shard]─ shuffle(seed, per epoch) ─ repeat
        ─ map(parse + tokenize)                      (grain MapDataset, parallel-safe)
        ─ to_iter_dataset ─ PackedBatches | WindowBatches   (stateful, checkpointable)
        ─ [mp_prefetch]

Bad records never vanish silently: `parse_document` raises (naming file:line) or
marks them, and the batching stage counts every skipped document by reason. The
counts ride along with each batch under `batch['stats']` (cumulative, so they
survive worker processes and are restored with the iterator state).

Packed batch (per host, B rows of length L):
  tokens, targets, segment_ids, positions: int32 [B, L]; loss_mask: float32 [B, L]
  Segment 0 is padding. targets[t] is the next token of the same segment.
Window batch: prefix [B, P] (right-padded), prefix_len [B], suffix [B, N],
  suffix_len [B], doc_id [B] (global record index, for dedup and eval splits).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from earlyrl_jax.data import sources as S
from earlyrl_jax.data.tokenizer import Tokenizer

COUNTER_KEYS = ("documents",) + tuple(f"skipped_{n}" for n in S.STATUS_NAMES[1:])


@dataclasses.dataclass(frozen=True)
class TokenizeDocument:
  """Raw record -> {'tokens': int32[n], 'status': int, 'index': int}. Picklable for workers."""
  kind: str
  tokenizer: Tokenizer
  opts: S.ParseOptions
  min_tokens: int = 2
  add_bos: bool = True
  add_eos: bool = True

  def __call__(self, raw: S.RawRecord) -> dict[str, Any]:
    text, status = S.parse_document(raw, self.kind, self.opts)
    if text is None:
      return {"tokens": np.zeros((0,), np.int32), "status": status}
    ids = self.tokenizer.encode(text)
    if not ids:
      return {"tokens": np.zeros((0,), np.int32), "status": S.EMPTY}
    if self.add_bos and self.tokenizer.bos_id is not None:
      ids = [self.tokenizer.bos_id] + ids
    if self.add_eos and self.tokenizer.eos_id is not None:
      ids = ids + [self.tokenizer.eos_id]
    status = S.OK if len(ids) >= self.min_tokens else S.TOO_SHORT
    return {"tokens": np.asarray(ids, np.int32), "status": status}


def document_dataset(source, tokenize: TokenizeDocument, *, seed: int, shuffle: bool = True,
                     num_epochs: int | None = None, process_index: int = 0,
                     process_count: int = 1) -> grain.MapDataset:
  """Random-access dataset of tokenized documents for this host (infinite by default)."""
  if len(source) == 0:
    raise S.DataError(f"{source!r}: the data source holds no records")
  ds = grain.MapDataset.source(source)
  ds = ds.map_with_index(_WithIndex(len(source)))
  ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise S.DataError(f"{source!r}: {len(source)} records cannot feed {process_count} hosts")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  return ds.map(_TokenizeIndexed(tokenize))


@dataclasses.dataclass(frozen=True)
class _WithIndex:
  """Attaches the record's index in the source (repeats pass index + epoch * len)."""
  num_records: int

  def __call__(self, index, record):
    return index % self.num_records, record


@dataclasses.dataclass(frozen=True)
class _TokenizeIndexed:
  tokenize: TokenizeDocument

  def __call__(self, item):
    index, raw = item
    out = self.tokenize(raw)
    out["index"] = index
    return out


class _DocumentBatcherIterator(grain.DatasetIterator):
  """Shared logic: pull documents, count skips, keep a pending document in state."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int):
    super().__init__(parent)
    self.batch_size = batch_size
    self.counters = {k: 0 for k in COUNTER_KEYS}
    self.pending: np.ndarray | None = None  # remaining tokens of the current document
    self.pending_index = -1
    self.pending_pos = 0  # next window start / offset within the current document

  def _next_document(self) -> None:
    """Loads the next usable document into `pending` (raises StopIteration at the end)."""
    while True:
      doc = next(self._parent)
      self.counters["documents"] += 1
      status = int(doc["status"])
      if status != S.OK:
        self.counters[f"skipped_{S.STATUS_NAMES[status]}"] += 1
        continue
      if not self._accept(doc["tokens"]):
        self.counters["skipped_too_short"] += 1
        continue
      self.pending = np.asarray(doc["tokens"], np.int32)
      self.pending_index = int(doc["index"])
      self.pending_pos = 0
      return

  def _accept(self, tokens: np.ndarray) -> bool:
    return True

  def _counter_stats(self) -> dict[str, np.ndarray]:
    return {k: np.int64(v) for k, v in self.counters.items()}

  def get_state(self) -> dict[str, Any]:
    return {
        "parent": self._parent.get_state(),
        "counters": dict(self.counters),
        "pending": None if self.pending is None else self.pending.tolist(),
        "pending_index": self.pending_index,
        "pending_pos": self.pending_pos,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.counters = {k: int(state["counters"].get(k, 0)) for k in COUNTER_KEYS}
    p = state["pending"]
    self.pending = None if p is None else np.asarray(p, np.int32)
    self.pending_index = int(state["pending_index"])
    self.pending_pos = int(state["pending_pos"])


class _PackedIterator(_DocumentBatcherIterator):

  def __init__(self, parent, batch_size: int, seq_len: int, pad_id: int):
    super().__init__(parent, batch_size)
    self.seq_len = seq_len
    self.pad_id = pad_id

  def _fill_row(self):
    L = self.seq_len
    tokens = np.full((L,), self.pad_id, np.int32)
    segs = np.zeros((L,), np.int32)
    pos = np.zeros((L,), np.int32)
    filled, seg = 0, 0
    while L - filled >= 2:  # a segment needs >= 2 tokens to carry any target
      if self.pending is None or self.pending_pos >= len(self.pending) - 1:
        self._next_document()
      rest = self.pending[self.pending_pos:]
      take = min(len(rest), L - filled)
      seg += 1
      tokens[filled:filled + take] = rest[:take]
      segs[filled:filled + take] = seg
      pos[filled:filled + take] = np.arange(take)
      filled += take
      # A document split across rows: the next chunk starts at the last token
      # placed here, so the boundary transition is still trained on.
      self.pending_pos += take - 1 if take < len(rest) else take
    same_seg_next = np.concatenate([segs[1:] == segs[:-1], [False]]) & (segs != 0)
    targets = np.where(same_seg_next, np.concatenate([tokens[1:], [self.pad_id]]), self.pad_id)
    return tokens, targets.astype(np.int32), segs, pos, same_seg_next.astype(np.float32)

  def __next__(self):
    rows = [self._fill_row() for _ in range(self.batch_size)]
    tokens, targets, segs, pos, mask = (np.stack(x) for x in zip(*rows))
    return {"tokens": tokens, "targets": targets, "segment_ids": segs, "positions": pos,
            "loss_mask": mask, "stats": self._counter_stats()}


class PackedBatches(grain.IterDataset):
  """Concatenate-then-split packing of documents into [B, L] rows with segment ids."""

  def __init__(self, parent: grain.IterDataset, *, batch_size: int, seq_len: int, pad_id: int = 0):
    super().__init__(parent)
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id

  def __iter__(self):
    return _PackedIterator(self._parent.__iter__(), self.batch_size, self.seq_len, self.pad_id)


def split_windows(tokens: Sequence[int], *, prefix_len: int, suffix_len: int, stride: int,
                  min_prefix_len: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
  """Cuts a document into (prefix, suffix) pairs.

  Cut points j = min_prefix_len, min_prefix_len + stride, ... while a full
  suffix of `suffix_len` tokens follows; the prefix is the (at most)
  `prefix_len` tokens before j. Returns [] for documents too short for one window.
  """
  toks = np.asarray(tokens, np.int32)
  out = []
  for j in window_starts(len(toks), prefix_len=prefix_len, suffix_len=suffix_len, stride=stride,
                         min_prefix_len=min_prefix_len):
    out.append((toks[max(0, j - prefix_len):j], toks[j:j + suffix_len]))
  return out


def window_starts(n: int, *, prefix_len: int, suffix_len: int, stride: int, min_prefix_len: int):
  if min(prefix_len, suffix_len, stride, min_prefix_len) <= 0:
    raise ValueError("prefix_len, suffix_len, stride and min_prefix_len must be positive")
  return range(min_prefix_len, n - suffix_len + 1, stride)


class _WindowIterator(_DocumentBatcherIterator):

  def __init__(self, parent, batch_size, prefix_len, suffix_len, stride, min_prefix_len, pad_id):
    super().__init__(parent, batch_size)
    self.prefix_len, self.suffix_len = prefix_len, suffix_len
    self.stride, self.min_prefix_len, self.pad_id = stride, min_prefix_len, pad_id

  def _accept(self, tokens):
    return len(tokens) >= self.min_prefix_len + self.suffix_len

  def __next__(self):
    B, P, N = self.batch_size, self.prefix_len, self.suffix_len
    prefix = np.full((B, P), self.pad_id, np.int32)
    suffix = np.full((B, N), self.pad_id, np.int32)
    plen = np.zeros((B,), np.int32)
    doc_id = np.zeros((B,), np.int64)
    for b in range(B):
      if self.pending is None or self.pending_pos >= len(self.pending) - N + 1:
        self._next_document()
        self.pending_pos = self.min_prefix_len
      j = self.pending_pos
      pre = self.pending[max(0, j - P):j]
      prefix[b, :len(pre)] = pre
      plen[b] = len(pre)
      suffix[b] = self.pending[j:j + N]
      doc_id[b] = self.pending_index
      self.pending_pos += self.stride
    return {"prefix": prefix, "prefix_len": plen, "suffix": suffix,
            "suffix_len": np.full((B,), N, np.int32), "doc_id": doc_id, "stats": self._counter_stats()}


class WindowBatches(grain.IterDataset):
  """Batches of (prefix, suffix) windows: the unit of self-improving training."""

  def __init__(self, parent, *, batch_size: int, prefix_len: int, suffix_len: int = 128,
               stride: int | None = None, min_prefix_len: int = 1, pad_id: int = 0):
    super().__init__(parent)
    window_starts(0, prefix_len=prefix_len, suffix_len=suffix_len, stride=stride or suffix_len,
                  min_prefix_len=min_prefix_len)  # validates
    self.args = (batch_size, prefix_len, suffix_len, stride or suffix_len, min_prefix_len, pad_id)

  def __iter__(self):
    return _WindowIterator(self._parent.__iter__(), *self.args)


# ----------------------------------------------------------------------- from config


def tokenize_fn(data_cfg, tokenizer: Tokenizer, kind: str) -> TokenizeDocument:
  opts = S.ParseOptions(text_field=data_cfg.text_field, on_error=data_cfg.on_error,
                        encoding_errors=data_cfg.encoding_errors)
  return TokenizeDocument(kind=kind, tokenizer=tokenizer, opts=opts,
                          min_tokens=data_cfg.min_doc_tokens)


def make_lm_dataset(data_cfg, tokenizer: Tokenizer, *, seq_len: int, host_batch_size: int,
                    seed: int, process_index: int = 0, process_count: int = 1,
                    files: str | None = None, field: str = "data.train_files",
                    shuffle: bool | None = None) -> grain.IterDataset:
  """The pretraining input pipeline described by a `data` config section.

  `files` / `shuffle` override the config (evaluation reads eval files in order).
  """
  source = S.make_source(data_cfg.format, files or data_cfg.train_files,
                         text_field=data_cfg.text_field, text_split=data_cfg.text_split, field=field)
  docs = document_dataset(source, tokenize_fn(data_cfg, tokenizer, source.kind), seed=seed,
                          shuffle=data_cfg.shuffle if shuffle is None else shuffle,
                          num_epochs=data_cfg.num_epochs or None,
                          process_index=process_index, process_count=process_count)
  ds = PackedBatches(docs.to_iter_dataset(), batch_size=host_batch_size, seq_len=seq_len,
                     pad_id=tokenizer.pad_id)
  if data_cfg.worker_count > 0:
    ds = ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=data_cfg.worker_count))
  return ds


def make_window_dataset(data_cfg, tokenizer: Tokenizer, *, host_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        files: str | None = None) -> grain.IterDataset:
  """(prefix, suffix) windows for self-improving training, from the same `data` section."""
  source = S.make_source(data_cfg.format, files or data_cfg.train_files,
                         text_field=data_cfg.text_field, text_split=data_cfg.text_split)
  docs = document_dataset(source, tokenize_fn(data_cfg, tokenizer, source.kind), seed=seed,
                          shuffle=data_cfg.shuffle, num_epochs=data_cfg.num_epochs or None,
                          process_index=process_index, process_count=process_count)
  return WindowBatches(docs.to_iter_dataset(), batch_size=host_batch_size,
                       prefix_len=data_cfg.prefix_len, suffix_len=data_cfg.suffix_len,
                       stride=data_cfg.window_stride or None,
                       min_prefix_len=data_cfg.min_prefix_len, pad_id=tokenizer.pad_id)
