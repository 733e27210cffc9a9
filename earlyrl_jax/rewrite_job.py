"""`mode='rewrite'`: rewrite (and optionally judge) a whole corpus offline, into ArrayRecord shards.

Why offline: on a large run the teacher's rewrites are the same every epoch and for every
SIP variant, so they are computed once, in one pass, at full batch size, and then read
(`sip.rewrite='precomputed'`): SIP and the offline-rewriting baseline (`sip.judge='none'`)
need no teacher for rewriting at all.

One pass over the windows of `data.*` (the same cuts, tokenizer and filters a SIP run
uses, unshuffled, one epoch): each window not seen before is rewritten greedily by the
teacher (`teacher.path` or the embedded teacher, exactly as SIP's online rewriter) and,
with `rewrite_job.judge`, the rewrite is judged against the original. Layout of
`rewrite_job.out_dir` (default WORKDIR/rewrites):

  rewrites-p{process:05d}-{shard:05d}.array_record   `shard_size` records each, JSON:
      {key, prefix_text, suffix_text, rewrite, doc_id, cut[, judge]}
  index-{process:05d}-of-{count:05d}.json           this process's completed shards (name,
      records, bytes, sha256, and the window iterator's position and counters after each),
      the configuration fingerprint and `done`

A window's key is a hash of its exact text (`window_key`), so it survives shuffling,
document order and any split over hosts: the SIP stream computes the same key.

Resumable: a shard is written under a temporary name and renamed when complete, then the
index is rewritten (temporary file + rename). A job killed at any point (SIGKILL
included) and started again drops what no index lists, verifies the listed shards and
goes on from the iterator position after the last of them. Greedy rewriting makes the
shards of a resumed job equal to those of an uninterrupted one. Each process writes its
own shards and index (the processes call the teacher in lockstep).

The reader (`PrecomputedRewrites`) loads every shard into one dict key -> rewrite
(about 300 bytes per window: fine up to a few million windows per host).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from earlyrl_jax import configs
from earlyrl_jax.configs import RewriteJobConfig as JobConfig, rewrite_job_config as job_config  # noqa: F401
from earlyrl_jax.data import sources as S

FORMAT = "earlyrl_jax.rewrites/1"
DEFAULT_DIR = "rewrites"
SHARD_RE = re.compile(r"^rewrites-p(\d{5})-(\d{5})\.array_record$")
INDEX_RE = re.compile(r"^index-(\d{5})-of-(\d{5})\.json$")
# data.* fields that decide which windows exist and what their text is.
WINDOW_FIELDS = ("format", "text_field", "text_split", "on_error", "encoding_errors", "tokenizer",
                 "tokenizer_vocab_size", "min_doc_tokens", "prefix_len", "suffix_len",
                 "window_stride", "min_prefix_len")


def window_key(prefix_text: str, suffix_text: str) -> str:
  """A window's identity: sha256 of its exact text (length-prefixed, so the cut position counts)."""
  h = hashlib.sha256(f"{len(prefix_text)}:".encode())
  h.update(prefix_text.encode("utf-8", "surrogatepass"))
  h.update(suffix_text.encode("utf-8", "surrogatepass"))
  return h.hexdigest()[:32]


def shard_name(process: int, shard: int) -> str:
  return f"rewrites-p{process:05d}-{shard:05d}.array_record"


def index_name(process: int, count: int) -> str:
  return f"index-{process:05d}-of-{count:05d}.json"


def rewrites_dir(cfg, workdir: str, field: str) -> str:
  """`rewrite_job.out_dir` / `sip.rewrites_dir`, '' meaning WORKDIR/rewrites."""
  section, name = field.split(".")
  value = cfg[section].get(name, "") if section in cfg else ""
  return value or os.path.join(workdir, DEFAULT_DIR)


def windowing(data_cfg, tokenizer) -> dict[str, Any]:
  """The settings that decide the windows and their text (not file paths: a world regenerated
  into another workdir has the same windows)."""
  out = {f: data_cfg.get(f) for f in WINDOW_FIELDS}
  out["vocab_size"] = int(tokenizer.vocab_size)
  return out


def _array_record():
  return S._optional("array_record.python.array_record_module", "arrayrecord")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_shard(path: str, records: Sequence[dict]) -> dict[str, Any]:
  """Writes records (JSON) under a temporary name, renames when complete; the index entry."""
  arm = _array_record()
  tmp = path + ".tmp"
  w = arm.ArrayRecordWriter(tmp, "group_size:64")
  for r in records:
    w.write(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
  w.close()
  _fsync(tmp)
  entry = {"file": os.path.basename(path), "records": len(records), "bytes": os.path.getsize(tmp),
           "sha256": _sha256(tmp)}
  os.replace(tmp, path)
  return entry


def read_shard(directory: str, entry: dict) -> list[dict]:
  """The records of a completed shard, checked against its index entry (size, hash, count)."""
  path = os.path.join(directory, entry["file"])
  if not os.path.isfile(path):
    raise S.DataError(f"{path}: listed in the rewrite index but missing; delete {directory} and "
                      "run the rewrite job again")
  size = os.path.getsize(path)
  if size != entry["bytes"] or _sha256(path) != entry["sha256"]:
    raise S.DataError(f"{path}: corrupt rewrite shard ({size} bytes, the index says "
                      f"{entry['bytes']}, or its sha256 differs); delete it and its index "
                      f"entry (or all of {directory}) and run the rewrite job again")
  reader = _array_record().ArrayRecordReader(path)
  try:
    raw = reader.read_all() if reader.num_records() else []
  finally:
    reader.close()
  if len(raw) != entry["records"]:
    raise S.DataError(f"{path}: {len(raw)} records, the rewrite index says {entry['records']}")
  out = []
  for i, b in enumerate(raw):
    try:
      r = json.loads(b)
    except ValueError:
      r = None
    if not isinstance(r, dict) or "key" not in r or "rewrite" not in r:
      raise S.DataError(f"{path}:record={i}: not a rewrite record (JSON with key and rewrite)")
    out.append(r)
  return out


def _read_index(path: str) -> dict:
  try:
    with open(path) as f:
      index = json.load(f)
  except ValueError as e:
    raise S.DataError(f"{path}: unreadable rewrite index ({e})") from None
  if index.get("format") != FORMAT:
    raise S.DataError(f"{path}: not a rewrite index of this version (format {index.get('format')!r}, "
                      f"expected {FORMAT!r})")
  return index


# ----------------------------------------------------------------------- reading (SIP)


class PrecomputedRewrites:
  """The rewriter interface (`rewrite(prefixes, suffixes, ...)`) over a rewrite job's shards.

  Looks each window up by `window_key`; a window without a rewrite is an error (no silent
  fallback to the original: a baseline that quietly trains on originals is not the baseline).
  """

  def __init__(self, directory: str, table: dict[str, str], info: dict, expected: dict | None = None):
    self.directory, self.table, self.info, self.expected = directory, table, info, expected
    self.calls = 0

  @classmethod
  def load(cls, directory: str, expected: dict | None = None) -> "PrecomputedRewrites":
    """Reads every index and shard of `directory`; `expected` (`windowing`) only sharpens errors."""
    if not os.path.isdir(directory):
      raise S.DataError(f"{directory}: no such rewrites directory; run --config.mode=rewrite first "
                        "(rewrite_job.out_dir) or set sip.rewrites_dir")
    names = sorted(os.listdir(directory))
    indexes = [n for n in names if INDEX_RE.match(n)]
    if not indexes:
      raise S.DataError(f"{directory}: no rewrite index (index-*-of-*.json); run "
                        "--config.mode=rewrite with rewrite_job.out_dir there first")
    counts = {int(INDEX_RE.match(n).group(2)) for n in indexes}
    if len(counts) != 1 or len(indexes) != min(counts):
      raise S.DataError(f"{directory}: index files {indexes} are not one complete set "
                        "index-XXXXX-of-NNNNN.json; delete the directory and run the rewrite job again")
    table: dict[str, str] = {}
    listed: set[str] = set()
    info = {"windows": 0, "shards": 0, "fingerprint": None}
    for n in indexes:
      index = _read_index(os.path.join(directory, n))
      if not index.get("done"):
        raise S.DataError(f"{os.path.join(directory, n)}: the rewrite job did not finish "
                          f"({len(index['shards'])} shards so far); run it again, it resumes")
      info["fingerprint"] = index["fingerprint"]
      for entry in index["shards"]:
        listed.add(entry["file"])
        for r in read_shard(directory, entry):
          table.setdefault(r["key"], r["rewrite"])
        info["shards"] += 1
    stray = [n for n in names if n.endswith((".array_record", ".tmp")) and n not in listed]
    if stray:
      raise S.DataError(f"{os.path.join(directory, stray[0])}: not listed in any rewrite index of "
                        f"{directory} (an interrupted or foreign rewrite job); run the job again "
                        "(it removes unlisted files) or delete the file")
    info["windows"] = len(table)
    return cls(directory, table, info, expected)

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key=None,
              temperature: float = 0.0, max_new_tokens: int | None = None) -> list[str]:
    del key, temperature, max_new_tokens  # fixed when the shards were written
    keys = [window_key(p, s) for p, s in zip(prefixes, suffixes)]
    missing = [i for i, k in enumerate(keys) if k not in self.table]
    if missing:
      raise S.DataError(self._missing_message(prefixes, suffixes, missing))
    self.calls += len(keys)
    return [self.table[k] for k in keys]

  def _missing_message(self, prefixes, suffixes, missing) -> str:
    i = missing[0]
    msg = (f"{self.directory}: {len(missing)} of {len(prefixes)} windows of this batch have no "
           f"precomputed rewrite (the directory holds {len(self.table)}; first missing: "
           f"...{prefixes[i][-40:]!r} | {suffixes[i][:40]!r}). sip.rewrite='precomputed' needs "
           "a rewrite job over the same corpus with the same data.* windowing and tokenizer")
    fp = (self.info.get("fingerprint") or {}).get("windowing")
    if self.expected is not None and fp is not None:
      diff = [f"data.{k}: job {fp.get(k)!r}, this run {v!r}" for k, v in self.expected.items()
              if fp.get(k) != v]
      if diff:
        msg += "; they differ: " + ", ".join(diff)
    return msg


class MemoRewriter:
  """A rewriter that remembers its greedy rewrites by window (`window_key`).

  Why: the report continues several methods from one base model on the same windows, and the
  teacher's greedy rewrite of a window is the same for each of them; the first run makes it, the
  others look it up (their `time/rewrite` is then ~0). Sampled rewrites (temperature > 0) always
  go to the teacher."""

  def __init__(self, rewriter, memo: dict[str, str]):
    self.rewriter, self.memo = rewriter, memo

  @property
  def failed(self) -> int:
    """The wrapped rewriter's failed rewrites (the originals stood in; remembered as such)."""
    return getattr(self.rewriter, "failed", 0)

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key=None,
              temperature: float = 0.0, max_new_tokens: int | None = None) -> list[str]:
    if temperature > 0 or max_new_tokens is not None:
      return self.rewriter.rewrite(prefixes, suffixes, key=key, temperature=temperature,
                                   max_new_tokens=max_new_tokens)
    keys = [window_key(p, s) for p, s in zip(prefixes, suffixes)]
    missing = [i for i, k in enumerate(keys) if k not in self.memo]
    if missing:
      made = self.rewriter.rewrite([prefixes[i] for i in missing], [suffixes[i] for i in missing],
                                   key=key, temperature=0.0)
      self.memo.update(zip((keys[i] for i in missing), made))
    return [self.memo[k] for k in keys]


def teacher_rewriter(cfg, teacher, **kw):
  """The teacher's rewriter for windows (`teacher.rewriter_kind`); with `teacher.backend='openai'`
  the paper's rewriter generates on the served teacher (teacher/backends: `backend_for`)."""
  backend = None
  if cfg.teacher.get("backend", "inprocess") == "openai":
    from earlyrl_jax.teacher.backends import backend_for
    backend = backend_for(cfg.teacher, teacher=teacher)
  return teacher.rewriter(kind=cfg.teacher.get("rewriter_kind", "auto"), window_cut=True,
                          backend=backend, **kw)


def principle_kw(run, teacher) -> dict:
  """The principle for an online rewriter (sip.principle_mode 'guide' / 'dpf'): an instruct
  teacher's rewrite prompt carries it (teacher/prompts/paper_rewrite.py); the embedded editor was
  never trained on principles, so it is refused (the world's reviser: sip.rewrite='principle')."""
  from earlyrl_jax.train.sip import run_principle
  p = run_principle(run.cfg, run.workdir)
  if p is None:
    return {}
  from earlyrl_jax.configs import ConfigError
  if teacher.rewriter_kind(run.cfg.teacher.get("rewriter_kind", "auto")) != "generative":
    raise ConfigError("sip.principle_mode: the embedded teacher's editor (keep/drop per sentence) "
                      "was never trained on principles; use sip.rewrite='principle' (the world's "
                      "reviser) or an instruct teacher (teacher.rewriter_kind='generative')")
  return {"principle": p.text}


def sip_rewriter(run, teacher, memo: dict[str, str] | None = None):
  """SIP's rewriter for `sip.rewrite`: the teacher ('online'), the shards ('precomputed') or None.

  memo: shared by runs over the same windows (the report's methods); see `MemoRewriter`."""
  s = run.cfg.sip
  if s.rewrite == "online":
    rewriter = teacher_rewriter(run.cfg, teacher, **principle_kw(run, teacher))
    return rewriter if memo is None else MemoRewriter(rewriter, memo)
  if s.rewrite == "principle":   # the world's principle-following reviser (docs/principles.md)
    from earlyrl_jax.train.sip import world_reviser
    return world_reviser(run)
  if s.rewrite == "precomputed":
    directory = rewrites_dir(run.cfg, run.workdir, "sip.rewrites_dir")
    return PrecomputedRewrites.load(directory, expected=windowing(run.cfg.data, run.tokenizer))
  return None


# ----------------------------------------------------------------------- the job


def one_pass_windows(data_cfg, tokenizer, *, files: str, process_index: int = 0,
                     process_count: int = 1):
  """Every window of `data_cfg` once, one per batch, documents in order (the set a SIP stream
  draws from, whatever its shuffling, pool size or host split)."""
  from earlyrl_jax.data import pipeline
  one_pass = ml_collections.ConfigDict(data_cfg.to_dict())
  one_pass.num_epochs = 1
  one_pass.window_pool_size = 1  # one document at a time: progress is documents read
  return pipeline.make_window_dataset(one_pass, tokenizer, host_batch_size=1, seed=0,
                                      process_index=process_index, process_count=process_count,
                                      files=files, shuffle=False)


def judge_pairs(judge, axes: Sequence[str], prefixes, originals, rewrites) -> list[dict[str, float]]:
  """Per window: P(rewrite better than original) per axis (both orders averaged) and the
  pointwise P(unsafe) of each."""
  out = [{} for _ in prefixes]
  for axis in axes:
    ab = judge.compare(prefixes, rewrites, originals, axis=axis)
    ba = judge.compare(prefixes, originals, rewrites, axis=axis)
    for i, p in enumerate(0.5 * (ab + 1.0 - ba)):
      out[i][f"p_rewrite_better_{axis}"] = round(float(p), 6)
  for name, texts in (("original", originals), ("rewrite", rewrites)):
    for i, p in enumerate(judge.pointwise(prefixes, texts, axis="safety")):
      out[i][f"p_unsafe_{name}"] = round(float(p), 6)
  return out


class _Progress:
  """One line per shard: windows, windows/s, share of documents read, ETA."""

  def __init__(self, num_docs: int, start_doc: int, start_records: int, limit: int):
    self.t0, self.num_docs, self.doc0, self.rec0, self.limit = (time.monotonic(), num_docs,
                                                                start_doc, start_records, limit)

  def line(self, shard: int, records: int, next_doc: int) -> str:
    dt = max(time.monotonic() - self.t0, 1e-9)
    rate = (records - self.rec0) / dt
    doc_rate = (next_doc - self.doc0) / dt
    remaining = (self.num_docs - next_doc) / doc_rate if doc_rate > 0 else float("inf")
    if self.limit and rate > 0:
      remaining = min(remaining, (self.limit - records) / rate)
    eta = str(datetime.timedelta(seconds=int(remaining))) if remaining != float("inf") else "?"
    return (f"rewrite: shard {shard} | {records} windows | {rate:.2f} windows/s | documents "
            f"{next_doc}/{self.num_docs} | ETA {eta}")


def run(cfg, workdir: str) -> dict[str, Any]:
  """`mode='rewrite'`: rewrites the corpus into shards + index (runs or resumes)."""
  import jax
  from earlyrl_jax.data import tokenizer as tok_lib
  from earlyrl_jax.models.scoring import any_process
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.train import loop
  from earlyrl_jax.teacher_setup import load_teacher_for

  configs.validate(cfg)
  jc = job_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  out_dir = rewrites_dir(cfg, workdir, "rewrite_job.out_dir")
  os.makedirs(out_dir, exist_ok=True)
  pi, pc = jax.process_index(), jax.process_count()
  train_files, _ = loop.resolve_corpus(cfg, workdir)
  d = cfg.data
  S.preflight(train_files, fmt=d.format, text_field=d.text_field, text_split=d.text_split,
              on_error=d.on_error, encoding_errors=d.encoding_errors, field="data.train_files")
  tokenizer = tok_lib.resolve_tokenizer(d, workdir, train_files, cfg.model.vocab_size)
  # The policy's mesh as a SIP run builds it; load_teacher_for then places the teacher where
  # SIP would.
  mesh = mesh_lib.policy_mesh(cfg)
  teacher = load_teacher_for(cfg, workdir, mesh)
  fingerprint = {"windowing": windowing(d, tokenizer), "shard_size": jc.shard_size,
                 "max_windows": jc.max_windows, "judge": jc.judge,
                 "judge_axes": sorted(cfg.sip.judge_axes.keys()) if jc.judge != "none" else [],
                 "teacher": cfg.teacher.path or teacher.info.get("config_hash", ""),
                 "process_count": pc}

  index_path = os.path.join(out_dir, index_name(pi, pc))
  index = _resume_index(out_dir, index_path, pi, fingerprint)
  seen: set[str] = set()
  for entry in index["shards"]:  # verifies every completed shard (and rebuilds the dedup set)
    seen.update(r["key"] for r in read_shard(out_dir, entry))
  if index["done"]:
    loop.log(f"rewrite: already complete in {out_dir} ({index['records']} windows, "
             f"{len(index['shards'])} shards); nothing to do")
    return _summary(index, out_dir, 0.0)

  windows = one_pass_windows(d, tokenizer, files=train_files, process_index=pi, process_count=pc)
  it = iter(windows)
  if index["iterator"] is not None:
    it.set_state(index["iterator"])
  rewriter = teacher_rewriter(cfg, teacher, batch_size=jc.batch_size)
  judge, axes = None, sorted(cfg.sip.judge_axes.keys())
  if jc.judge == "teacher":
    judge = teacher.judge(kind=cfg.teacher.get("judge_kind", "auto"))
  elif jc.judge == "oracle":
    from earlyrl_jax import world
    from earlyrl_jax.teacher.judges.oracle import OracleJudge
    judge = OracleJudge(world.Oracles.from_dir(loop.world_dir_of(cfg, workdir)))
  if index["shards"]:
    loop.log(f"rewrite: resumed after shard {len(index['shards']) - 1} ({index['records']} windows)")
  loop.log(f"rewrite: {len(windows.docs)} documents on this process -> {out_dir} (shards of "
           f"{jc.shard_size}, teacher batches of {jc.batch_size}, judge {jc.judge})")
  progress = _Progress(len(windows.docs), it.get_state()["next_doc"], index["records"], jc.max_windows)
  t_start, seconds_before = time.monotonic(), float(index["seconds"])
  pending: list[dict] = []
  exhausted = False
  key = jax.random.key(cfg.seed)  # unused by greedy rewriting; the interface takes one
  while True:
    batch = []
    while not exhausted and len(batch) < jc.batch_size and len(pending) + len(batch) < jc.shard_size:
      if jc.max_windows and index["records"] + len(pending) + len(batch) >= jc.max_windows:
        exhausted = True
        break
      try:
        w = next(it)
      except StopIteration:
        exhausted = True
        break
      index["windows_read"] += 1
      index["data"] = {k: int(v) for k, v in w["stats"].items()}
      p, s = w["prefix_text"][0], w["suffix_text"][0]
      k = window_key(p, s)
      if k in seen:
        index["duplicates"] += 1
        continue
      seen.add(k)
      batch.append({"key": k, "prefix_text": p, "suffix_text": s, "doc_id": int(w["doc_id"][0]),
                    "cut": int(w["cut"][0])})
    # An empty batch here means this process is exhausted; the teacher's programs are
    # collective, so every process goes on while any has work.
    more = any_process(bool(batch))
    if more:
      work = batch or [{"prefix_text": "", "suffix_text": " "}]  # lockstep filler, discarded
      prefixes, suffixes = [r["prefix_text"] for r in work], [r["suffix_text"] for r in work]
      failed = getattr(rewriter, "failed", 0)
      texts = rewriter.rewrite(prefixes, suffixes, key=key, temperature=0.0)
      index["rewrite_failed"] = index.get("rewrite_failed", 0) + getattr(rewriter, "failed", 0) - failed
      verdicts = judge_pairs(judge, axes, prefixes, suffixes, texts) if judge is not None else None
      for i, r in enumerate(batch):
        r["rewrite"] = texts[i]
        if verdicts is not None:
          r["judge"] = verdicts[i]
        pending.append(r)
    if pending and (len(pending) == jc.shard_size or exhausted):
      shard = len(index["shards"])
      entry = write_shard(os.path.join(out_dir, shard_name(pi, shard)), pending)
      index["records"] += len(pending)
      index["iterator"] = it.get_state()
      # Where the pass stood after this shard: lets a damaged tail be cut back to any shard.
      entry["after"] = {k: index[k] for k in ("iterator", "records", "windows_read", "duplicates")}
      index["shards"].append(entry)
      index["seconds"] = seconds_before + time.monotonic() - t_start
      index["done"] = exhausted
      _write_json_atomic(index_path, index)
      pending = []
      loop.log(progress.line(shard, index["records"], index["iterator"]["next_doc"]))
    if not more:
      break
  index["iterator"] = it.get_state()
  index["seconds"] = seconds_before + time.monotonic() - t_start
  index["done"] = True
  _write_json_atomic(index_path, index)
  out = _summary(index, out_dir, time.monotonic() - t_start)
  loop.log(f"rewrite: done: {out['windows']} windows ({index['duplicates']} duplicate windows "
           f"skipped; {out['rewrite_failed']} failed rewrites kept the original) in {out['shards']} "
           f"shards, {out['seconds']:.1f}s, "
           f"{out['windows_per_s']:.2f} windows/s -> {out_dir}")
  return out


def _resume_index(out_dir: str, index_path: str, pi: int, fingerprint: dict) -> dict:
  """This process's index (fresh, or the one on disk); removes files no index lists."""
  index = {"format": FORMAT, "fingerprint": fingerprint, "shards": [], "iterator": None,
           "records": 0, "windows_read": 0, "duplicates": 0, "rewrite_failed": 0, "seconds": 0.0,
           "done": False,
           "data": {}}
  if os.path.exists(index_path):
    old = _read_index(index_path)
    if old["fingerprint"] != fingerprint:
      diff = sorted(k for k in set(fingerprint) | set(old["fingerprint"])
                    if fingerprint.get(k) != old["fingerprint"].get(k))
      raise configs.ConfigError(
          f"rewrite_job.out_dir: {out_dir} holds rewrites of another configuration (differs in: "
          f"{', '.join(diff)}); choose another rewrite_job.out_dir or delete that directory")
    index = old
  listed = {e["file"] for e in index["shards"]}
  mine = f"rewrites-p{pi:05d}-"
  stale = [n for n in os.listdir(out_dir)
           if (n.startswith(mine) and n not in listed) or n == os.path.basename(index_path) + ".tmp"]
  for n in stale:  # half-written (.tmp) or written but never indexed: redone below
    os.remove(os.path.join(out_dir, n))
  if stale:
    print(f"rewrite: removed {len(stale)} unfinished file(s) from {out_dir}", flush=True)
  return index


def _summary(index: dict, out_dir: str, seconds: float) -> dict[str, Any]:
  total = float(index["seconds"])
  return {"out_dir": out_dir, "windows": int(index["records"]), "shards": len(index["shards"]),
          "duplicates": int(index["duplicates"]), "rewrite_failed": int(index.get("rewrite_failed", 0)),
          "seconds": total, "this_run_seconds": seconds,
          "windows_per_s": index["records"] / total if total > 0 else 0.0}
