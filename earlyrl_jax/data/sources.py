"""Random-access document sources over globs of files, usable as grain data sources.

Every source returns `RawRecord(payload, where)` for index i: the undecoded
bytes (or a python object for Parquet) and a human-readable location such as
`corpus/part-0003.jsonl:1207`. Decoding, JSON parsing and error policy live in
one place, `parse_document`, so every format fails the same way and every error
names the file and line (or row).

Formats: JSONL (one JSON object per line, configurable text field), plain text
(one document per file, per line, or per blank-line-separated paragraph),
Parquet (a text column) and ArrayRecord (records holding UTF-8 text or JSON).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import mmap
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class DataError(ValueError):
  """Bad input data; the message names the file and line/record."""


class RawRecord(NamedTuple):
  payload: Any  # bytes, or a python value (Parquet cells)
  where: str


# Document status codes (carried through the pipeline and counted in metrics).
OK, MALFORMED, MISSING_FIELD, NON_UTF8, EMPTY, TOO_SHORT = range(6)
STATUS_NAMES = ("ok", "malformed", "missing_field", "non_utf8", "empty", "too_short")


@dataclasses.dataclass(frozen=True)
class ParseOptions:
  """How to read a record. Mirrors the `data` config fields of the same names."""
  text_field: str = "text"
  on_error: str = "raise"           # 'raise' | 'skip' for malformed records
  encoding_errors: str = "replace"  # 'replace' (U+FFFD) | 'raise' | 'skip'

  def __post_init__(self):
    if self.on_error not in ("raise", "skip"):
      raise ValueError(f"data.on_error={self.on_error!r}: expected 'raise' or 'skip'")
    if self.encoding_errors not in ("replace", "raise", "skip"):
      raise ValueError(f"data.encoding_errors={self.encoding_errors!r}: expected 'replace', "
                       "'raise' or 'skip'")


def expand_paths(patterns: str | Sequence[str], field: str = "data.train_files") -> list[str]:
  """Comma-separated globs (or a list of them) -> sorted existing files; errors name `field`."""
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p.strip()]
  if not patterns:
    raise DataError(f"{field} is empty: give one or more file globs")
  files: list[str] = []
  for pat in patterns:
    hits = sorted(glob.glob(os.path.expanduser(pat.strip()), recursive=True))
    hits = [h for h in hits if os.path.isfile(h)]
    if not hits:
      raise DataError(f"{field}: no files match {pat!r}")
    files.extend(hits)
  return files


def _decode(data: bytes, where: str, opts: ParseOptions) -> tuple[str | None, int]:
  try:
    return data.decode("utf-8"), OK
  except UnicodeDecodeError as e:
    if opts.encoding_errors == "raise":
      raise DataError(f"{where}: invalid UTF-8 at byte {e.start} (set data.encoding_errors="
                      "'replace' to substitute U+FFFD, or 'skip' to drop the record)") from None
    if opts.encoding_errors == "skip":
      return None, NON_UTF8
    return data.decode("utf-8", errors="replace"), OK


def parse_document(raw: RawRecord, kind: str, opts: ParseOptions) -> tuple[str | None, int]:
  """RawRecord -> (text, status). Raises DataError when the policy says so."""
  payload, where = raw
  if kind == "json":
    text, status = _decode(payload, where, opts) if isinstance(payload, bytes) else (payload, OK)
    if text is None:
      return None, status
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      if opts.on_error == "raise":
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno}); "
                        "set data.on_error='skip' to skip and count such records") from None
      return None, MALFORMED
    if not isinstance(obj, dict) or opts.text_field not in obj or not isinstance(obj[opts.text_field], str):
      if opts.on_error == "raise":
        raise DataError(f"{where}: record has no string field {opts.text_field!r} "
                        "(data.text_field); set data.on_error='skip' to skip such records")
      return None, MISSING_FIELD
    text = obj[opts.text_field]
  elif kind == "text":
    text, status = _decode(payload, where, opts) if isinstance(payload, bytes) else (payload, OK)
    if text is None:
      return None, status
  else:
    raise ValueError(f"unknown record kind {kind!r}")
  if not text.strip():
    return None, EMPTY
  return text, OK


class _FileIndexSource:
  """Shared machinery: an index of (file, byte offset, byte length, line number)."""
  kind = "text"

  def __init__(self, files: list[str]):
    self.files = files
    self._file_ids: list[np.ndarray] = []
    self._offsets: list[np.ndarray] = []
    self._lengths: list[np.ndarray] = []
    self._lines: list[np.ndarray] = []
    for fid, path in enumerate(files):
      offsets, lengths, lines = self._index_file(path)
      self._file_ids.append(np.full(len(offsets), fid, np.int32))
      self._offsets.append(np.asarray(offsets, np.int64))
      self._lengths.append(np.asarray(lengths, np.int64))
      self._lines.append(np.asarray(lines, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros((0,), dt)
    self.file_ids = cat(self._file_ids, np.int32)
    self.offsets = cat(self._offsets, np.int64)
    self.lengths = cat(self._lengths, np.int64)
    self.lines = cat(self._lines, np.int64)
    del self._file_ids, self._offsets, self._lengths, self._lines
    self._fds: dict[int, int] = {}

  def _index_file(self, path):  # -> offsets, lengths, 1-based line numbers
    raise NotImplementedError

  def __len__(self) -> int:
    return len(self.offsets)

  def __getitem__(self, i: int) -> RawRecord:
    i = int(i)
    fid = int(self.file_ids[i])
    fd = self._fds.get(fid)
    if fd is None:
      fd = self._fds[fid] = os.open(self.files[fid], os.O_RDONLY)
    data = os.pread(fd, int(self.lengths[i]), int(self.offsets[i]))
    return RawRecord(data, f"{self.files[fid]}:{int(self.lines[i])}")

  def __getstate__(self):  # grain workers pickle sources; file descriptors stay behind
    state = dict(self.__dict__)
    state["_fds"] = {}
    return state

  def __repr__(self):
    return f"{type(self).__name__}({len(self.files)} files, {len(self)} records)"


def _line_spans(data: bytes):
  """Offsets/lengths/line numbers of non-blank lines (without the newline)."""
  offsets, lengths, lines = [], [], []
  start, line_no = 0, 1
  n = len(data)
  while start < n:
    end = data.find(b"\n", start)
    if end == -1:
      end = n
    seg = data[start:end]
    if seg.strip():
      offsets.append(start)
      lengths.append(end - start)
      lines.append(line_no)
    start, line_no = end + 1, line_no + 1
  return offsets, lengths, lines


def _mapped(path: str):
  """The file's bytes via mmap (no full copy in memory); b'' for an empty file."""
  if os.path.getsize(path) == 0:
    return b""
  with open(path, "rb") as f:
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class JsonlSource(_FileIndexSource):
  """One JSON object per non-blank line; the document is `obj[text_field]`.

  Indexing scans each file once for newlines (memory-mapped, so multi-GB files
  are fine); for billions of records prefer ArrayRecord, which carries its index.
  """
  kind = "json"

  def _index_file(self, path):
    return _line_spans(_mapped(path))


class TextSource(_FileIndexSource):
  """Plain text. split='file' (one document per file), 'line', or 'paragraph'."""
  kind = "text"

  def __init__(self, files: list[str], split: str = "file"):
    if split not in ("file", "line", "paragraph"):
      raise ValueError(f"data.text_split={split!r}: expected 'file', 'line' or 'paragraph'")
    self.split = split
    super().__init__(files)

  def _index_file(self, path):
    size = os.path.getsize(path)
    if self.split == "file":
      return ([0], [size], [1]) if size else ([], [], [])
    data = _mapped(path)
    if self.split == "line":
      return _line_spans(data)
    offsets, lengths, lines = [], [], []
    para_start = None
    pos, line_no, para_line = 0, 1, 1
    for raw_line in bytes(data).split(b"\n"):
      blank = not raw_line.strip()
      if not blank and para_start is None:
        para_start, para_line = pos, line_no
      if blank and para_start is not None:
        offsets.append(para_start)
        lengths.append(pos - 1 - para_start)
        lines.append(para_line)
        para_start = None
      pos += len(raw_line) + 1
      line_no += 1
    if para_start is not None:
      offsets.append(para_start)
      lengths.append(len(data) - para_start)
      lines.append(para_line)
    return offsets, lengths, lines


class ParquetSource:
  """A string column of Parquet files; row groups are read lazily and cached."""
  kind = "text"

  def __init__(self, files: list[str], column: str = "text"):
    import pyarrow.parquet as pq  # core dependency; imported lazily to keep start-up light
    self.files, self.column = files, column
    starts, groups = [], []
    total = 0
    for fid, path in enumerate(files):
      pf = pq.ParquetFile(path)
      md, names = pf.metadata, pf.schema_arrow.names
      if column not in names:
        raise DataError(f"{path}: no column {column!r} (data.text_field); columns are {names}")
      for g in range(md.num_row_groups):
        groups.append((fid, g))
        starts.append(total)
        total += md.row_group(g).num_rows
    self._starts = np.asarray(starts, np.int64)
    self._groups = groups
    self._len = total
    self._cache: tuple[int, list] | None = None

  def __len__(self):
    return self._len

  def __getitem__(self, i: int) -> RawRecord:
    import pyarrow.parquet as pq
    gi = int(np.searchsorted(self._starts, i, side="right") - 1)
    if self._cache is None or self._cache[0] != gi:
      fid, g = self._groups[gi]
      table = pq.ParquetFile(self.files[fid]).read_row_group(g, columns=[self.column])
      self._cache = (gi, table.column(0).to_pylist())
    row = int(i - self._starts[gi])
    value = self._cache[1][row]
    fid, g = self._groups[gi]
    where = f"{self.files[fid]}:row_group={g}:row={row}"
    if value is not None and not isinstance(value, (str, bytes)):
      raise DataError(f"{where}: column {self.column!r} holds {type(value).__name__}, not text")
    return RawRecord(value if value is not None else "", where)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = None
    return state


class ArrayRecordSource:
  """ArrayRecord files whose records are UTF-8 text (kind='text') or JSON (kind='json')."""

  def __init__(self, files: list[str], kind: str = "json"):
    from array_record.python import array_record_data_source as ards
    self.files, self.kind = files, kind
    self._src = ards.ArrayRecordDataSource(files)
    # First global index of each file, so errors can name the file and its record.
    counts = [len(ards.ArrayRecordDataSource([f])) for f in files]
    self._starts = np.cumsum([0] + counts[:-1])

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i: int) -> RawRecord:
    i = int(i)
    fid = int(np.searchsorted(self._starts, i, side="right") - 1)
    return RawRecord(self._src[i], f"{self.files[fid]}:record={i - int(self._starts[fid])}")


def make_source(fmt: str, patterns, *, text_field: str = "text", text_split: str = "file",
                field: str = "data.train_files"):
  """Builds the source named by `data.format` over the files matching `patterns`."""
  if fmt == "jsonl":
    return JsonlSource(expand_paths(patterns, field))
  if fmt == "text":
    return TextSource(expand_paths(patterns, field), split=text_split)
  if fmt == "parquet":
    return ParquetSource(expand_paths(patterns, field), column=text_field)
  if fmt == "arrayrecord":
    return ArrayRecordSource(expand_paths(patterns, field), kind="json")
  if fmt == "arrayrecord_text":
    return ArrayRecordSource(expand_paths(patterns, field), kind="text")
  raise ValueError(f"data.format={fmt!r}: expected 'jsonl', 'text', 'parquet', 'arrayrecord' "
                   "or 'arrayrecord_text'")
