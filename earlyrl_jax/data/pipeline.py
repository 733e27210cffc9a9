"""Documents -> tokens -> packed LM batches, or (prefix, suffix) windows mixed across documents.

    source (random access) ─[host shard]─ shuffle(seed, per epoch) ─ repeat
        ─ map(parse + tokenize)                      (grain MapDataset, parallel-safe)
        ├─ to_iter_dataset ─ [mp_prefetch] ─ PackedBatches     (stateful, checkpointable)
        └─ WindowBatches: a pool of open documents, rows drawn across it (checkpointable)

Bad records never vanish silently: `parse_document` raises (naming file:line) or
marks them, and the batching stage counts every skipped document by reason. The
counts ride along with each batch under `batch['stats']` (cumulative, so they
survive worker processes and are restored with the iterator state). A stream that
yields no usable document for a whole pass over this host's records, or for
`data.max_consecutive_skips` records in a row, stops with a DataError naming the
files and the counted reasons (instead of looping forever).

Packed batch (per host, B rows of length L):
  tokens, targets, segment_ids, positions: int32 [B, L]; loss_mask: float32 [B, L]
  Segment 0 is padding. targets[t] is the next token of the same segment.
Window batch (per host, B rows; rows come from up to `pool_size` open documents):
  prefix int32 [B, P] (right-padded), prefix_len int32 [B], suffix int32 [B, N]
  (right-padded), suffix_len int32 [B], doc_id int64 [B] (global record index),
  cut int32 [B] (token position of the cut in the tokenized document, BOS included);
  when the documents carry text (`TokenizeDocument(with_text=True)`, as
  `make_window_dataset` builds them), also host-side only, never device arrays:
  prefix_text, suffix_text: list[str] of length B, and char_span int64 [B, 3] =
  (prefix start, cut, suffix end) character offsets in the document text, so
  prefix_text + suffix_text == text[char_span[b, 0]:char_span[b, 2]] exactly;
  next_text: list[str], the document's text after the suffix, up to N more tokens ('' where
  the document ends there): a factuality reference that no candidate contains
  (`sip.factuality_reference='next_span'`).
  Cuts sit at token boundaries that are also character boundaries, so the text is
  exactly what the ids say (no half character at either end): a teacher with another
  tokenizer sees what the policy saw. Pop the text keys and `stats` before `device_put`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from earlyrl_jax.data import sources as S
from earlyrl_jax.data.tokenizer import Tokenizer, adds_bos

SKIP_REASONS = tuple(S.STATUS_NAMES[s] for s in S.SKIP_STATUSES)
COUNTER_KEYS = (("documents",) + tuple(f"skipped_{r}" for r in SKIP_REASONS)
                + ("replaced_non_utf8",))
TEXT_KEYS = ("prefix_text", "suffix_text", "next_text")  # host-side lists of str in a window batch
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10_000


@dataclasses.dataclass(frozen=True)
class TokenizeDocument:
  """Raw record -> {'tokens': int32[n], 'status': int, 'index': int}. Picklable for workers.

  with_text=True also keeps 'text' (str) and 'bounds' (int64 [n + 1]: the character
  offset of the boundary before each token, -1 inside a character; see
  `Tokenizer.encode_with_offsets`), which windows need for their exact text.
  """
  kind: str
  tokenizer: Tokenizer
  opts: S.ParseOptions
  min_tokens: int = 2
  add_bos: bool = True
  add_eos: bool = True
  with_text: bool = False

  def __call__(self, raw: S.RawRecord) -> dict[str, Any]:
    text, status = S.parse_document(raw, self.kind, self.opts)
    if text is None:
      return {"tokens": np.zeros((0,), np.int32), "status": status}
    if self.with_text:
      ids, bounds = self.tokenizer.encode_with_offsets(text)
      bounds = list(np.asarray(bounds, np.int64))
    else:
      ids, bounds = self.tokenizer.encode(text), None
    if not ids:
      return {"tokens": np.zeros((0,), np.int32), "status": S.EMPTY}
    if self.add_bos and self.tokenizer.bos_id is not None:
      ids = [self.tokenizer.bos_id] + ids
      bounds = None if bounds is None else [0] + bounds  # BOS covers no text
    if self.add_eos and self.tokenizer.eos_id is not None:
      ids = ids + [self.tokenizer.eos_id]
      bounds = None if bounds is None else bounds + [len(text)]
    status = status if len(ids) >= self.min_tokens else S.TOO_SHORT
    out = {"tokens": np.asarray(ids, np.int32), "status": status}
    if self.with_text:
      out["text"], out["bounds"] = text, np.asarray(bounds, np.int64)
    return out


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


# ----------------------------------------------------------------------- skip accounting


@dataclasses.dataclass(frozen=True)
class SkipPolicy:
  """When a run of unusable records becomes an error instead of an endless search.

  records_per_pass: this host's records in one epoch (None: unknown); where: names the
  files and fields for the message.
  """
  max_consecutive: int = DEFAULT_MAX_CONSECUTIVE_SKIPS
  records_per_pass: int | None = None
  where: str = "the data source"

  @property
  def limit(self) -> int:
    return max(1, min(self.max_consecutive, self.records_per_pass or self.max_consecutive))


class _SkipCounter:
  """Counts documents and skips by reason; raises once a run of skips reaches the limit."""

  def __init__(self, policy: SkipPolicy | None):
    self.policy = policy or SkipPolicy()
    self.counters = {k: 0 for k in COUNTER_KEYS}
    self.run = 0                       # unusable records since the last usable one
    self.run_reasons: dict[str, int] = {}

  def admit(self, status: int, long_enough: bool = True) -> bool:
    """Counts one record; True when it is usable."""
    self.counters["documents"] += 1
    if status in S.USABLE_STATUSES and long_enough:
      if status == S.REPLACED_NON_UTF8:
        self.counters["replaced_non_utf8"] += 1
      self.run, self.run_reasons = 0, {}
      return True
    reason = S.STATUS_NAMES[status] if status not in S.USABLE_STATUSES else "too_short"
    self.counters[f"skipped_{reason}"] += 1
    self.run += 1
    self.run_reasons[reason] = self.run_reasons.get(reason, 0) + 1
    if self.run >= self.policy.limit:
      self._raise()
    return False

  def end_of_data(self) -> None:
    """The stream ended (finite epochs): an error when not one record of it was usable."""
    if self.run and self.run == self.counters["documents"]:
      self._raise()

  def _raise(self):
    p = self.policy
    whole = p.records_per_pass is not None and self.run >= p.records_per_pass
    span = (f"a whole pass over this host's {p.records_per_pass} records" if whole else
            f"{self.run} consecutive records (data.max_consecutive_skips={p.max_consecutive})")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.run_reasons.items()))
    raise S.DataError(f"{p.where}: no usable document in {span} ({reasons}); check "
                      "data.text_field, data.format and data.min_doc_tokens / the window lengths")

  def stats(self) -> dict[str, np.ndarray]:
    return {k: np.int64(v) for k, v in self.counters.items()}

  def get_state(self) -> dict[str, Any]:
    return {"counters": dict(self.counters), "run": self.run, "run_reasons": dict(self.run_reasons)}

  def set_state(self, state: dict[str, Any]) -> None:
    self.counters = {k: int(state["counters"].get(k, 0)) for k in COUNTER_KEYS}
    self.run = int(state.get("run", 0))
    self.run_reasons = {k: int(v) for k, v in state.get("run_reasons", {}).items()}


# ----------------------------------------------------------------------- packing


class _PackedIterator(grain.DatasetIterator):
  """Concatenate-then-split; the current document's rest is kept in the state."""

  def __init__(self, parent, batch_size: int, seq_len: int, pad_id: int, policy: SkipPolicy | None):
    super().__init__(parent)
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
    self.skips = _SkipCounter(policy)
    self.pending: np.ndarray | None = None  # tokens of the current document
    self.pending_index = -1
    self.pending_pos = 0  # offset of the next chunk within the current document

  def _next_document(self) -> None:
    """Loads the next usable document into `pending` (StopIteration at the end of the data)."""
    while True:
      try:
        doc = next(self._parent)
      except StopIteration:
        self.skips.end_of_data()
        raise
      if self.skips.admit(int(doc["status"])):
        self.pending = np.asarray(doc["tokens"], np.int32)
        self.pending_index = int(doc["index"])
        self.pending_pos = 0
        return

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
            "loss_mask": mask, "stats": self.skips.stats()}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), **self.skips.get_state(),
            "pending": None if self.pending is None else self.pending.tolist(),
            "pending_index": self.pending_index, "pending_pos": self.pending_pos}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.skips.set_state(state)
    p = state["pending"]
    self.pending = None if p is None else np.asarray(p, np.int32)
    self.pending_index = int(state["pending_index"])
    self.pending_pos = int(state["pending_pos"])


class PackedBatches(grain.IterDataset):
  """Concatenate-then-split packing of documents into [B, L] rows with segment ids."""

  def __init__(self, parent: grain.IterDataset, *, batch_size: int, seq_len: int, pad_id: int = 0,
               skip_policy: SkipPolicy | None = None):
    super().__init__(parent)
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
    self.skip_policy = skip_policy

  def __iter__(self):
    return _PackedIterator(self._parent.__iter__(), self.batch_size, self.seq_len, self.pad_id,
                           self.skip_policy)


# ----------------------------------------------------------------------- windows


def window_starts(n: int, *, prefix_len: int, suffix_len: int, stride: int, min_prefix_len: int):
  """Nominal cut points min_prefix_len, + stride, ... while a full suffix follows."""
  if min(prefix_len, suffix_len, stride, min_prefix_len) <= 0:
    raise ValueError("prefix_len, suffix_len, stride and min_prefix_len must be positive")
  return range(min_prefix_len, n - suffix_len + 1, stride)


def window_cuts(n: int, bounds: np.ndarray | None = None, *, prefix_len: int, suffix_len: int,
                stride: int, min_prefix_len: int = 1) -> np.ndarray:
  """(prefix start, cut, suffix end) token positions [W, 3] of a document of n tokens.

  Cut j runs over `window_starts`; the prefix is the (at most) prefix_len tokens before
  j and the suffix the suffix_len tokens after it. With `bounds` (-1 where a token
  boundary splits a character) every position moves to a character boundary: the cut
  and the prefix start forward, the suffix end back (that suffix is then shorter).
  """
  nominal = np.asarray(window_starts(n, prefix_len=prefix_len, suffix_len=suffix_len,
                                     stride=stride, min_prefix_len=min_prefix_len), np.int64)
  if bounds is None:
    cut = nominal
    return np.stack([np.maximum(0, cut - prefix_len), cut, cut + suffix_len], -1).reshape(-1, 3)
  clean = np.flatnonzero(np.asarray(bounds) >= 0)  # includes 0 and n
  cut = np.unique(clean[np.minimum(np.searchsorted(clean, nominal), len(clean) - 1)])
  cut = cut[(cut >= min_prefix_len) & (cut + suffix_len <= n)]
  start = clean[np.searchsorted(clean, np.maximum(0, cut - prefix_len))]
  end = clean[np.searchsorted(clean, cut + suffix_len, side="right") - 1]
  keep = (end > cut) & (start < cut)
  return np.stack([start, cut, end], -1)[keep].reshape(-1, 3)


def split_windows(tokens: Sequence[int], *, prefix_len: int, suffix_len: int, stride: int,
                  min_prefix_len: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
  """Cuts a document into (prefix, suffix) token pairs (see `window_cuts`); [] when too short."""
  toks = np.asarray(tokens, np.int32)
  cuts = window_cuts(len(toks), prefix_len=prefix_len, suffix_len=suffix_len, stride=stride,
                     min_prefix_len=min_prefix_len)
  return [(toks[s:j], toks[j:e]) for s, j, e in cuts]


def next_span_end(bounds: np.ndarray, end: int, n: int) -> int:
  """The token position up to n tokens past `end` at a character boundary (bounds >= 0), for the
  text after a window's suffix; `end` itself when nothing follows."""
  k = min(len(bounds) - 1, end + n)
  while k > end and bounds[k] < 0:
    k -= 1
  return k


class _WindowIterator(grain.DatasetIterator):
  """Rows drawn across a pool of open documents; the state is positions only.

  The documents come from a random-access MapDataset, so the state names each open
  document by its position in that dataset (and how many of its windows are used):
  restoring re-reads those documents instead of storing their tokens and text.
  """

  def __init__(self, docs: grain.MapDataset, *, batch_size, prefix_len, suffix_len, stride,
               min_prefix_len, pad_id, pool_size, shuffle, seed, policy):
    super().__init__()
    self.docs, self.num_docs = docs, len(docs)
    self.B, self.P, self.N = batch_size, prefix_len, suffix_len
    self.stride, self.min_prefix_len, self.pad_id = stride, min_prefix_len, pad_id
    self.shuffle, self.seed = shuffle, seed
    self.skips = _SkipCounter(policy)
    self.next_doc = 0                      # position in `docs` of the next document to open
    self.batches = 0                       # batches produced (seeds the row draw)
    self.turn = 0                          # round-robin pointer (shuffle=False)
    self.slots: list[dict | None] = [None] * pool_size
    self.with_text: bool | None = None

  # -- documents
  def _open(self, pos: int, used: int = 0) -> dict | None:
    """The document at `pos` with its windows (in a seeded order), or None if it has none."""
    doc = self.docs[pos]
    status = int(doc["status"])
    cuts = np.zeros((0, 3), np.int64)
    if status in S.USABLE_STATUSES:
      cuts = window_cuts(len(doc["tokens"]), doc.get("bounds"), prefix_len=self.P,
                         suffix_len=self.N, stride=self.stride, min_prefix_len=self.min_prefix_len)
      if self.shuffle:
        cuts = cuts[np.random.default_rng((self.seed, pos)).permutation(len(cuts))]
    return {"pos": pos, "doc": doc, "cuts": cuts, "used": used, "status": status}

  def _fill(self) -> None:
    """Opens documents into empty slots while the data lasts, counting what is skipped."""
    for i, slot in enumerate(self.slots):
      while slot is None and self.next_doc < self.num_docs:
        opened = self._open(self.next_doc)
        self.next_doc += 1
        if self.skips.admit(opened["status"], long_enough=len(opened["cuts"]) > 0):
          slot = self.slots[i] = opened
          if self.with_text is None:
            self.with_text = "text" in opened["doc"]
    if all(s is None for s in self.slots):
      self.skips.end_of_data()
      raise StopIteration

  def _take(self, rng) -> tuple[dict, np.ndarray]:
    self._fill()
    live = [i for i, s in enumerate(self.slots) if s is not None]
    if self.shuffle:
      i = live[int(rng.integers(len(live)))]
    else:
      i = min(live, key=lambda k: (k - self.turn) % len(self.slots))
      self.turn = (i + 1) % len(self.slots)
    slot = self.slots[i]
    cut = slot["cuts"][slot["used"]]
    slot["used"] += 1
    if slot["used"] == len(slot["cuts"]):
      self.slots[i] = None
    return slot["doc"], cut

  def __next__(self):
    B, P, N = self.B, self.P, self.N
    rng = np.random.default_rng((self.seed, self.batches, 1))
    prefix = np.full((B, P), self.pad_id, np.int32)
    suffix = np.full((B, N), self.pad_id, np.int32)
    plen, slen, cut_at = (np.zeros((B,), np.int32) for _ in range(3))
    doc_id = np.zeros((B,), np.int64)
    span = np.zeros((B, 3), np.int64)
    texts: tuple[list[str], list[str], list[str]] = ([], [], [])
    for b in range(B):
      doc, (s, j, e) = self._take(rng)
      toks = doc["tokens"]
      prefix[b, :j - s], suffix[b, :e - j] = toks[s:j], toks[j:e]
      plen[b], slen[b], cut_at[b], doc_id[b] = j - s, e - j, j, int(doc["index"])
      if self.with_text:
        span[b] = doc["bounds"][[s, j, e]]
        texts[0].append(doc["text"][span[b, 0]:span[b, 1]])
        texts[1].append(doc["text"][span[b, 1]:span[b, 2]])
        texts[2].append(doc["text"][span[b, 2]:doc["bounds"][next_span_end(doc["bounds"], e, N)]])
    self.batches += 1
    out = {"prefix": prefix, "prefix_len": plen, "suffix": suffix, "suffix_len": slen,
           "doc_id": doc_id, "cut": cut_at, "stats": self.skips.stats()}
    if self.with_text:
      out.update(prefix_text=texts[0], suffix_text=texts[1], next_text=texts[2], char_span=span)
    return out

  # -- checkpointing
  def get_state(self) -> dict[str, Any]:
    return {"next_doc": self.next_doc, "batches": self.batches, "turn": self.turn,
            "slots": [None if s is None else [s["pos"], s["used"]] for s in self.slots],
            **self.skips.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if len(state["slots"]) != len(self.slots):
      raise ValueError(f"window iterator state has {len(state['slots'])} open documents, this "
                       f"pipeline {len(self.slots)}: keep data.window_pool_size when resuming")
    self.next_doc, self.batches = int(state["next_doc"]), int(state["batches"])
    self.turn = int(state["turn"])
    self.skips.set_state(state)
    for i, s in enumerate(state["slots"]):
      self.slots[i] = None if s is None else self._open(int(s[0]), int(s[1]))
      if self.slots[i] is not None and self.with_text is None:
        self.with_text = "text" in self.slots[i]["doc"]


class WindowBatches(grain.IterDataset):
  """Batches of (prefix, suffix) windows mixed across documents: the unit of self-improving training.

  `docs` is the random-access dataset of tokenized documents (`document_dataset`).
  Up to `pool_size` documents are open at once; each row takes the next window of
  an open document drawn at random (seeded per batch; shuffle=False: round robin and
  windows in document order), and an exhausted document is replaced by the next
  one. Runs in-process (no worker processes): the SIP step, not the data, is slow.
  """

  def __init__(self, docs: grain.MapDataset, *, batch_size: int, prefix_len: int,
               suffix_len: int = 128, stride: int | None = None, min_prefix_len: int = 1,
               pad_id: int = 0, pool_size: int = 64, shuffle: bool = True, seed: int = 0,
               skip_policy: SkipPolicy | None = None):
    if not isinstance(docs, grain.MapDataset):
      raise TypeError("WindowBatches reads documents by position: pass the MapDataset from "
                      f"document_dataset, not {type(docs).__name__}")
    super().__init__()
    window_starts(0, prefix_len=prefix_len, suffix_len=suffix_len, stride=stride or suffix_len,
                  min_prefix_len=min_prefix_len)  # validates
    if pool_size < 1:
      raise ValueError(f"data.window_pool_size={pool_size}: must be >= 1")
    self.docs = docs
    self.kwargs = dict(batch_size=batch_size, prefix_len=prefix_len, suffix_len=suffix_len,
                       stride=stride or suffix_len, min_prefix_len=min_prefix_len, pad_id=pad_id,
                       pool_size=pool_size, shuffle=shuffle, seed=seed, policy=skip_policy)

  def __iter__(self):
    return _WindowIterator(self.docs, **self.kwargs)


# ----------------------------------------------------------------------- from config


def _cfg(data_cfg, name: str, default):
  return data_cfg.get(name, default) if hasattr(data_cfg, "get") else getattr(data_cfg, name, default)


def tokenize_fn(data_cfg, tokenizer: Tokenizer, kind: str, *, with_text: bool = False) -> TokenizeDocument:
  opts = S.ParseOptions(text_field=data_cfg.text_field, on_error=data_cfg.on_error,
                        encoding_errors=data_cfg.encoding_errors)
  # BOS as the tokenizer's own convention puts it (SentencePiece: yes; SmolLM2's HF tokenizer:
  # none, its bos_token <|im_start|> opens a chat turn, not a document; Llama 3: yes).
  return TokenizeDocument(kind=kind, tokenizer=tokenizer, opts=opts,
                          min_tokens=data_cfg.min_doc_tokens, add_bos=adds_bos(tokenizer),
                          with_text=with_text)


def make_documents(data_cfg, tokenizer: Tokenizer, *, seed: int, process_index: int = 0,
                   process_count: int = 1, files: str | None = None, field: str = "data.train_files",
                   shuffle: bool | None = None, with_text: bool = False
                   ) -> tuple[grain.MapDataset, SkipPolicy]:
  """The documents a `data` config section describes, and the skip policy that names them.

  The one builder behind `make_lm_dataset` and `make_window_dataset`; `files` /
  `shuffle` override the config (evaluation reads eval files in order).
  """
  source = S.make_source(data_cfg.format, files or data_cfg.train_files,
                         text_field=data_cfg.text_field, text_split=data_cfg.text_split, field=field)
  docs = document_dataset(source, tokenize_fn(data_cfg, tokenizer, source.kind, with_text=with_text),
                          seed=seed, shuffle=data_cfg.shuffle if shuffle is None else shuffle,
                          num_epochs=data_cfg.num_epochs or None,
                          process_index=process_index, process_count=process_count)
  names = getattr(source, "files", None) or [repr(source)]
  shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
  policy = SkipPolicy(
      max_consecutive=int(_cfg(data_cfg, "max_consecutive_skips", DEFAULT_MAX_CONSECUTIVE_SKIPS)),
      records_per_pass=math.ceil(max(0, len(source) - process_index) / process_count),
      where=(f"{field} ({shown}; data.format={data_cfg.format!r}, "
             f"data.text_field={data_cfg.text_field!r})"))
  return docs, policy


def make_lm_dataset(data_cfg, tokenizer: Tokenizer, *, seq_len: int, host_batch_size: int,
                    seed: int, process_index: int = 0, process_count: int = 1,
                    files: str | None = None, field: str = "data.train_files",
                    shuffle: bool | None = None) -> grain.IterDataset:
  """The pretraining input pipeline described by a `data` config section (packed batches)."""
  docs, policy = make_documents(data_cfg, tokenizer, seed=seed, process_index=process_index,
                                process_count=process_count, files=files, field=field,
                                shuffle=shuffle)
  # Worker processes parse and tokenize documents; packing stays in this process, so the
  # batches are exactly those of worker_count=0 (and resume the same way).
  stream = docs.to_iter_dataset()
  if data_cfg.worker_count > 0:
    stream = stream.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=data_cfg.worker_count))
  return PackedBatches(stream, batch_size=host_batch_size, seq_len=seq_len, pad_id=tokenizer.pad_id,
                       skip_policy=policy)


def make_window_dataset(data_cfg, tokenizer: Tokenizer, *, host_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        files: str | None = None, field: str = "data.train_files",
                        shuffle: bool | None = None) -> WindowBatches:
  """(prefix, suffix) windows with their exact text, mixed across documents, from the `data` section.

  Reads `data.window_pool_size` (open documents, default 64) and
  `data.max_consecutive_skips` when the config has them.
  """
  shuffle = data_cfg.shuffle if shuffle is None else shuffle
  docs, policy = make_documents(data_cfg, tokenizer, seed=seed, process_index=process_index,
                                process_count=process_count, files=files, field=field,
                                shuffle=shuffle, with_text=True)
  return WindowBatches(docs, batch_size=host_batch_size, prefix_len=data_cfg.prefix_len,
                       suffix_len=data_cfg.suffix_len, stride=data_cfg.window_stride or None,
                       min_prefix_len=data_cfg.min_prefix_len, pad_id=tokenizer.pad_id,
                       pool_size=int(_cfg(data_cfg, "window_pool_size", 64)), shuffle=shuffle,
                       seed=seed, skip_policy=policy)
