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

from earlyrl_jax.errors import json_problem


class DataError(ValueError):
  """Bad input data; the message names the file and line/record."""


class RawRecord(NamedTuple):
  payload: Any  # bytes, or a python value (Parquet cells)
  where: str


# Document status codes (carried through the pipeline and counted in metrics).
# REPLACED_NON_UTF8: the document is usable (text is not None) but invalid UTF-8 bytes
# were replaced by U+FFFD (data.encoding_errors='replace'); count it, do not skip it.
OK, MALFORMED, MISSING_FIELD, NON_UTF8, EMPTY, TOO_SHORT, REPLACED_NON_UTF8 = range(7)
STATUS_NAMES = ("ok", "malformed", "missing_field", "non_utf8", "empty", "too_short",
                "replaced_non_utf8")
USABLE_STATUSES = (OK, REPLACED_NON_UTF8)   # parse_document returned text
SKIP_STATUSES = (MALFORMED, MISSING_FIELD, NON_UTF8, EMPTY, TOO_SHORT)  # the document is dropped


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
    return data.decode("utf-8", errors="replace"), REPLACED_NON_UTF8


def parse_document(raw: RawRecord, kind: str, opts: ParseOptions) -> tuple[str | None, int]:
  """RawRecord -> (text, status). Raises DataError when the policy says so.

  text is None exactly when the record is skipped (status in SKIP_STATUSES); a usable
  record has status OK, or REPLACED_NON_UTF8 when invalid bytes became U+FFFD.
  """
  payload, where = raw
  if kind == "json":
    text, status = _decode(payload, where, opts) if isinstance(payload, bytes) else (payload, OK)
    if text is None:
      return None, status
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      if opts.on_error == "raise":
        raise DataError(f"{where}: malformed JSON ({json_problem(e)}); "
                        "set data.on_error='skip' to skip and count such records") from None
      return None, MALFORMED
    if not isinstance(obj, dict) or opts.text_field not in obj or not isinstance(obj[opts.text_field], str):
      if opts.on_error == "raise":
        has = f"; its fields are {sorted(obj)[:12]}" if isinstance(obj, dict) else (
            f"; it is a JSON {type(obj).__name__}, not an object")
        raise DataError(f"{where}: record has no string field {opts.text_field!r} "
                        f"(data.text_field){has}; set data.on_error='skip' to skip such records")
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
  return text, status


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


def _optional(module: str, fmt: str):
  """Imports a reader of the `[formats]` extra, or says which extra to install."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError:
    raise DataError(f"data.format={fmt!r} needs {module.split('.')[0]}: "
                    "pip install -e '.[formats]'") from None


class ParquetSource:
  """A string column of Parquet files; row groups are read lazily and cached."""
  kind = "text"

  def __init__(self, files: list[str], column: str = "text"):
    pq = _optional("pyarrow.parquet", "parquet")
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
    pq = _optional("pyarrow.parquet", "parquet")
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
    ards = _optional("array_record.python.array_record_data_source", "arrayrecord")
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


# --------------------------------------------------------------------------- preflight

_HEAD_BYTES = 1 << 20  # text split='file': the first MiB stands for the document


def _head_lines(path: str, n: int, paragraphs: bool = False):
  """The first n non-blank lines (or blank-line-separated paragraphs) as RawRecords."""
  out: list[RawRecord] = []
  para: list[bytes] = []
  para_line = 0
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip(b"\n")
      if not paragraphs:
        if line.strip():
          out.append(RawRecord(line, f"{path}:{line_no}"))
      elif line.strip():
        para_line = para_line or line_no
        para.append(line)
      elif para:
        out.append(RawRecord(b"\n".join(para), f"{path}:{para_line}"))
        para, para_line = [], 0
      if len(out) >= n:
        return out
  if para:
    out.append(RawRecord(b"\n".join(para), f"{path}:{para_line}"))
  return out[:n]


def _head_file(path: str) -> list[RawRecord]:
  with open(path, "rb") as f:
    data = f.read(_HEAD_BYTES)
  if not data:
    return []
  if len(data) == _HEAD_BYTES:  # do not count a character cut at the boundary as invalid
    try:
      data.decode("utf-8")
    except UnicodeDecodeError as e:
      if e.reason == "unexpected end of data":
        data = data[:e.start]
  return [RawRecord(data, f"{path}:1")]


def head_records(path: str, fmt: str, *, text_field: str = "text", text_split: str = "file",
                 n: int = 8) -> tuple[str, list[RawRecord]]:
  """(record kind, the first n records of one file) without indexing the whole file."""
  if fmt == "jsonl":
    return "json", _head_lines(path, n)
  if fmt == "text":
    if text_split == "file":
      return "text", _head_file(path)
    return "text", _head_lines(path, n, paragraphs=text_split == "paragraph")
  src = make_source(fmt, [path], text_field=text_field, text_split=text_split)
  return src.kind, [src[i] for i in range(min(n, len(src)))]


@dataclasses.dataclass
class PreflightReport:
  """What preflight read: files per glob, and record statuses of the first records."""
  files: list[str]
  records: int
  status_counts: dict[str, int]


def preflight(patterns: str | Sequence[str], *, fmt: str = "jsonl", text_field: str = "text",
              text_split: str = "file", on_error: str = "raise", encoding_errors: str = "replace",
              field: str = "data.train_files", num_records: int = 8) -> PreflightReport:
  """Checks data before anything slow: every glob matches, the first records of each file parse.

  Raises DataError naming the glob (`field`), or the file:line and `data.text_field`:
  - a glob that matches no file;
  - with on_error='raise', the first malformed record or one without the text field;
  - with on_error='skip', a file none of whose first `num_records` records is usable
    (say, a wrong data.text_field), with the counted reasons and the first one's message;
  - files that together hold no records.
  """
  files = expand_paths(patterns, field)
  opts = ParseOptions(text_field=text_field, on_error=on_error, encoding_errors=encoding_errors)
  strict = dataclasses.replace(opts, on_error="raise")
  counts = {name: 0 for name in STATUS_NAMES}
  total = 0
  for path in files:
    kind, head = head_records(path, fmt, text_field=text_field, text_split=text_split,
                              n=num_records)
    usable, first_problem, reasons = 0, None, {}
    for raw in head:
      try:
        _, status = parse_document(raw, kind, opts)
      except DataError as e:
        raise DataError(f"{field}: {e}") from None
      counts[STATUS_NAMES[status]] += 1
      if status in USABLE_STATUSES:
        usable += 1
        continue
      reasons[STATUS_NAMES[status]] = reasons.get(STATUS_NAMES[status], 0) + 1
      if first_problem is None:
        try:  # the strict policy's message says what is wrong with the record
          parse_document(raw, kind, strict)
          first_problem = f"{raw.where}: {STATUS_NAMES[status].replace('_', ' ')} record"
        except DataError as e:
          first_problem = str(e).split("; set data.on_error")[0]
    total += len(head)
    if head and not usable:
      counted = ", ".join(f"{k}={v}" for k, v in reasons.items())
      raise DataError(f"{field}: none of the first {len(head)} records of {path} is usable "
                      f"({counted}; data.text_field={text_field!r}); first: {first_problem}")
  if total == 0:
    raise DataError(f"{field}: the {len(files)} file(s) matching {patterns!r} hold no records")
  return PreflightReport(files=files, records=total, status_counts=counts)
