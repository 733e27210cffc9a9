"""mode='rewrite': shards + index of a small corpus, records round-trip, kill-and-resume equals an
uninterrupted run, clear errors for corrupt/unknown shards, and SIP reading the stored rewrites."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax import rewrite_job as RJ
from earlyrl_jax.configs import ConfigError
from earlyrl_jax.data import pipeline
from earlyrl_jax.data.sources import DataError
from tests.helpers import tiny_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD, BATCH, LIMIT = 8, 4, 40  # records per shard, windows per teacher call, windows in all
CLI_LIMIT = 96                  # the kill-and-resume job: 12 shards, so the kill lands mid-way
WINDOW = {"data.prefix_len": 24, "data.suffix_len": 12, "data.min_prefix_len": 8,
          "data.window_stride": 36}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A few world documents as JSONL (the SIP test needs a model-sized window, so keep them long)."""
  from earlyrl_jax import world as W
  wcfg = W.default_world_config()
  docs = W.generate_documents(W.build_kb(wcfg), wcfg, "t", 40)
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  with open(path, "w") as f:
    for d in docs:
      f.write(json.dumps({"text": d.text}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus):
  """An embedded-teacher directory holding a tiny random model (greedy rewrites are deterministic)."""
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.teacher.prompts import markup as P
  from earlyrl_jax.teacher import teacher as T
  from earlyrl_jax.embedded import data as D
  path = str(tmp_path_factory.mktemp("teacher") / "teacher")
  os.makedirs(path)
  texts = [json.loads(l)["text"] for l in open(corpus)]
  tok_path = os.path.join(path, T.TOKENIZER_FILE)
  D.train_tokenizer(texts + [P.pair_prompt("p", "a", "b", "quality")] * 5, tok_path, 400)
  sp = SentencePieceTokenizer(tok_path)
  mc = tiny_model_config(vocab_size=sp.vocab_size, max_seq_len=256, d_model=32, d_ff=64)
  graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  T.save_teacher(path, T.Teacher(graphdef, params, sp, mc, None, P.PromptLimits(60, 60, 60)), "t")
  return path


def _cfg(corpus, teacher_dir, **kw):
  from tests.test_train import tiny_cfg
  base = {"mode": "rewrite", "data.corpus": "files", "data.train_files": corpus,
          "data.eval_files": "", "teacher.path": teacher_dir, "rewrite_job.shard_size": SHARD,
          "rewrite_job.batch_size": BATCH, "rewrite_job.max_windows": LIMIT, **WINDOW}
  base.update(kw)
  return tiny_cfg(**base)


def _records(out_dir):
  """{shard file: [records]} of a finished job, read through its index."""
  out = {}
  for n in sorted(os.listdir(out_dir)):
    if RJ.INDEX_RE.match(n):
      for e in json.load(open(os.path.join(out_dir, n)))["shards"]:
        out[e["file"]] = RJ.read_shard(out_dir, e)
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus, teacher_dir):
  """One uninterrupted in-process job (the reference for the other tests)."""
  workdir = str(tmp_path_factory.mktemp("job"))
  t0 = time.monotonic()
  summary = RJ.run(_cfg(corpus, teacher_dir), workdir)
  summary["wall_s"] = time.monotonic() - t0
  return workdir, summary


def test_job_writes_shards_and_index_and_records_round_trip(finished, corpus, teacher_dir, capsys):
  workdir, summary = finished
  out_dir = os.path.join(workdir, "rewrites")
  assert summary["windows"] == LIMIT and summary["shards"] == LIMIT // SHARD
  files = sorted(os.listdir(out_dir))
  assert files == [RJ.index_name(0, 1)] + [RJ.shard_name(0, s) for s in range(LIMIT // SHARD)]
  index = json.load(open(os.path.join(out_dir, RJ.index_name(0, 1))))
  assert index["done"] and index["records"] == LIMIT
  recs = [r for rs in _records(out_dir).values() for r in rs]
  assert len(recs) == LIMIT and len({r["key"] for r in recs}) == LIMIT  # no duplicates
  for r in recs:
    assert r["key"] == RJ.window_key(r["prefix_text"], r["suffix_text"])
    assert isinstance(r["rewrite"], str)
  # The stored rewrite is what SIP's online rewriter says for that window.
  from earlyrl_jax.teacher.teacher import load_teacher
  online = load_teacher(teacher_dir).rewriter(window_cut=True).rewrite(
      [r["prefix_text"] for r in recs[:BATCH]], [r["suffix_text"] for r in recs[:BATCH]],
      key=jax.random.key(0))
  assert online == [r["rewrite"] for r in recs[:BATCH]]
  full = RJ.run(_cfg(corpus, teacher_dir), workdir)  # finished: returns at once
  assert "already complete" in capsys.readouterr().out and full["windows"] == LIMIT


def _cli(workdir, corpus, teacher_dir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fast
  args = [f"--config.{k}={v}" for k, v in {
      "mode": "rewrite", "data.corpus": "files", "data.train_files": corpus, "data.tokenizer": "byte",
      "model.vocab_size": 384, "teacher.path": teacher_dir, "rewrite_job.shard_size": SHARD,
      "rewrite_job.batch_size": BATCH, "rewrite_job.max_windows": CLI_LIMIT, **WINDOW}.items()]
  return subprocess.Popen([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={workdir}",
                           "--config=" + os.path.join(REPO, "configs", "tiny.py"), *args, *extra],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _shards_done(out_dir):
  try:
    return len(json.load(open(os.path.join(out_dir, RJ.index_name(0, 1))))["shards"])
  except (OSError, ValueError):
    return 0


@pytest.mark.slow
def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path, corpus, teacher_dir):
  ref_dir, crash_dir = str(tmp_path / "ref"), str(tmp_path / "crash")
  ref = _cli(ref_dir, corpus, teacher_dir)
  crash = _cli(crash_dir, corpus, teacher_dir)
  out = os.path.join(crash_dir, "rewrites")
  deadline = time.time() + 240
  while _shards_done(out) < 1:
    assert crash.poll() is None, crash.communicate()[0]
    assert time.time() < deadline
    time.sleep(0.02)
  time.sleep(random.Random(os.getpid()).uniform(0.0, 0.15))  # anywhere inside a later shard
  assert crash.poll() is None, "the job finished before it could be killed"
  os.kill(crash.pid, signal.SIGKILL)
  crash.wait()
  killed_at = _shards_done(out)
  assert 1 <= killed_at < CLI_LIMIT // SHARD
  resumed = _cli(crash_dir, corpus, teacher_dir)
  log = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, log
  assert f"resumed after shard {killed_at - 1}" in log and "rewrite: done" in log
  ref_log = ref.communicate(timeout=300)[0]
  assert ref.returncode == 0, ref_log
  assert "windows/s" in ref_log and "ETA" in ref_log
  a, b = _records(os.path.join(ref_dir, "rewrites")), _records(out)
  assert len(a) == CLI_LIMIT // SHARD and sum(map(len, a.values())) == CLI_LIMIT
  assert a == b  # every shard, every record: none lost, none twice
  assert sorted(os.listdir(out)) == sorted(os.listdir(os.path.join(ref_dir, "rewrites")))
  assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_restart_removes_unfinished_files_and_refuses_another_config(finished, tmp_path, corpus,
                                                                      teacher_dir):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished[0], workdir)
  out_dir = os.path.join(workdir, "rewrites")
  # As if killed after shard 1 was renamed but before the index listed it, while a later
  # shard was half-written.
  index_path = os.path.join(out_dir, RJ.index_name(0, 1))
  index = json.load(open(index_path))
  index["shards"], index["done"] = index["shards"][:1], False
  index.update(index["shards"][0]["after"])
  with open(index_path, "w") as f:
    json.dump(index, f)
  open(os.path.join(out_dir, RJ.shard_name(0, 2) + ".tmp"), "wb").write(b"half")
  with pytest.raises(DataError, match="did not finish"):
    RJ.PrecomputedRewrites.load(out_dir)
  with pytest.raises(ConfigError, match="another configuration.*shard_size"):
    RJ.run(_cfg(corpus, teacher_dir, **{"rewrite_job.shard_size": 4}), workdir)
  out = RJ.run(_cfg(corpus, teacher_dir), workdir)
  assert out["windows"] == LIMIT
  assert _records(out_dir) == _records(os.path.join(finished[0], "rewrites"))
  assert sorted(os.listdir(out_dir)) == sorted(os.listdir(os.path.join(finished[0], "rewrites")))
  RJ.PrecomputedRewrites.load(out_dir)


def test_corrupt_and_unknown_shards_are_named(finished, tmp_path):
  out_dir = str(tmp_path / "r")
  shutil.copytree(os.path.join(finished[0], "rewrites"), out_dir)
  RJ.PrecomputedRewrites.load(out_dir)
  stray = os.path.join(out_dir, "rewrites-p00000-00099.array_record")
  open(stray, "wb").write(b"x")
  with pytest.raises(DataError, match="rewrites-p00000-00099.array_record: not listed"):
    RJ.PrecomputedRewrites.load(out_dir)
  os.remove(stray)
  victim = os.path.join(out_dir, RJ.shard_name(0, 1))
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  with pytest.raises(DataError, match=r"rewrites-p00000-00001\.array_record: corrupt"):
    RJ.PrecomputedRewrites.load(out_dir)
  with pytest.raises(DataError, match="no rewrite index"):
    RJ.PrecomputedRewrites.load(str(tmp_path))


def _sip_run(tmp_path, corpus, rewrites_dir, **kw):
  from earlyrl_jax.train import loop
  from tests.test_train import tiny_cfg
  cfg = tiny_cfg(**{"mode": "sip", "data.corpus": "files", "data.train_files": corpus,
                    "data.eval_files": "", "data.batch_size": 8, "sip.rewrite": "precomputed",
                    "sip.rewrites_dir": rewrites_dir, "sip.judge": "none", "sip.recipe": "rf_nll",
                    "sip.num_rollouts": 0, **WINDOW, **kw})
  return loop.setup(cfg, str(tmp_path / "sip"))


def test_sip_uses_exactly_the_stored_rewrites_and_names_missing_ones(tmp_path, corpus):
  from earlyrl_jax.train import sip
  run = _sip_run(tmp_path, corpus, str(tmp_path / "rw"))
  d = run.cfg.data
  # Rewrites for every window of the corpus except one, written with the job's shard writer.
  one_pass = RJ.one_pass_windows(d, run.tokenizer, files=run.train_files)
  records = []
  for w in one_pass:
    p, s = w["prefix_text"][0], w["suffix_text"][0]
    records.append({"key": RJ.window_key(p, s), "prefix_text": p, "suffix_text": s,
                    "rewrite": f" REWRITE-{len(records)}."})
  first = next(iter(pipeline.make_window_dataset(d, run.tokenizer, host_batch_size=8, seed=0,
                                                 files=run.train_files)))
  keys = {RJ.window_key(p, s) for p, s in zip(first["prefix_text"], first["suffix_text"])}
  assert keys <= {r["key"] for r in records}, "the SIP batch's windows are in the one-pass stream"
  os.makedirs(tmp_path / "rw")
  entry = RJ.write_shard(str(tmp_path / "rw" / RJ.shard_name(0, 0)), records)
  with open(tmp_path / "rw" / RJ.index_name(0, 1), "w") as f:
    json.dump({"format": RJ.FORMAT, "fingerprint": {"windowing": RJ.windowing(d, run.tokenizer)},
               "shards": [entry], "done": True}, f)
  job = sip.sip_job(run, None, RJ.sip_rewriter(run, None))
  state = type("S", (), {"params": jnp.zeros(())})()
  batch, stats = job.next_batch(state, 0)
  want = {r["key"]: r["rewrite"] for r in records}
  expected = [want[RJ.window_key(p, s)] for p, s in zip(first["prefix_text"], first["suffix_text"])]
  # The offline-rewriting baseline trains on the rewrite: the best rows' targets are its tokens.
  for g, text in enumerate(expected):
    mask = (batch["loss_mask"][g] > 0) & (batch["branch_ids"][g] == 1)   # the one branch: the best
    ids = run.tokenizer.encode_continuation(text)[:d.suffix_len]
    np.testing.assert_array_equal(batch["targets"][g][mask], ids)
  # The rule picks the rewrite (no judge): a win, not a tie.
  assert stats["sip/win_share_rewrite"] == 1.0 and stats["sip/all_tied_frac"] == 0.0
  # The step's time split: every part is a part of producing the batch.
  parts = ("time/rewrite", "time/update_wait", "time/rollout", "time/judge")
  assert all(stats[k] >= 0 for k in parts) and sum(stats[k] for k in parts) <= stats["time/produce"]
  # A window without a stored rewrite: a clear error naming the directory and the count.
  producer = job.next_batch.produce   # the SIPProducer behind the prefetcher
  producer.rewriter.table.pop(RJ.window_key(first["prefix_text"][0], first["suffix_text"][0]))
  with pytest.raises(DataError, match=r"rw: 1 of 8 windows of this batch have no precomputed"):
    producer.rewriter.rewrite(first["prefix_text"], first["suffix_text"])
  run2 = _sip_run(tmp_path, corpus, str(tmp_path / "rw"), **{"data.prefix_len": 20})
  with pytest.raises(DataError, match=r"they differ: data\.prefix_len: job 24, this run 20"):
    sip.sip_job(run2, None, RJ.sip_rewriter(run2, None)).next_batch(state, 0)
  run.ckpt.close()
  run2.ckpt.close()


def test_judge_fields_average_both_orders():
  class Fixed:  # P(first better) = 0.9 whatever the texts: pure position bias
    def compare(self, prefixes, a, b, *, axis, references=None):
      return np.full(len(a), 0.9)

    def pointwise(self, prefixes, candidates, *, axis="safety"):
      return np.array([0.25 if c == "bad" else 0.0 for c in candidates])

  out = RJ.judge_pairs(Fixed(), ["quality", "safety"], ["p", "q"], ["bad", "ok"], ["x", "bad"])
  assert out[0] == {"p_rewrite_better_quality": 0.5, "p_rewrite_better_safety": 0.5,
                    "p_unsafe_original": 0.25, "p_unsafe_rewrite": 0.0}
  assert out[1]["p_unsafe_rewrite"] == 0.25
  from earlyrl_jax.configs import validate_fields
  with pytest.raises(ConfigError, match="rewrite_job.shard_size: must be an integer >= 1"):
    validate_fields(_cfg("c", "t", **{"rewrite_job.shard_size": 0}))


class _CountingRewriter:
  """Rewrites by upper-casing; records every window it was asked."""

  def __init__(self):
    self.asked = []

  def rewrite(self, prefixes, suffixes, *, key=None, temperature=0.0, max_new_tokens=None):
    self.asked += list(suffixes)
    return [s.upper() + (f"@{temperature}" if temperature else "") for s in suffixes]


def test_memo_rewriter_asks_the_teacher_once_per_window_and_keeps_order():
  inner, memo = _CountingRewriter(), {}
  a = RJ.MemoRewriter(inner, memo)
  assert a.rewrite(["p", "p"], ["one", "two"]) == ["ONE", "TWO"]
  # A second run sharing the memo (the report's next method): only the new window is rewritten,
  # and the answer keeps the batch's order; the same suffix after another prefix is another window.
  b = RJ.MemoRewriter(inner, memo)
  assert b.rewrite(["p", "q", "p"], ["two", "one", "three"]) == ["TWO", "ONE", "THREE"]
  assert inner.asked == ["one", "two", "one", "three"]
  # Sampled rewrites differ per call: never remembered.
  assert b.rewrite(["p"], ["one"], temperature=0.7) == ["ONE@0.7"] and len(memo) == 4
