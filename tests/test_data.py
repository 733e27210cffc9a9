"""Sources, parsing errors, tokenizers, packing, windows, host sharding, iterator state."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from earlyrl_jax.data import pipeline as PL
from earlyrl_jax.data import sources as S
from earlyrl_jax.data import tokenizer as TK

BYTE = TK.ByteTokenizer()


def _docs(n, prefix="document"):
  return [{"text": f"{prefix} {i} " + "lorem ipsum " * (i % 7 + 1)} for i in range(n)]


def _tokenize(on_error="raise", encoding_errors="replace", min_tokens=2):
  return PL.TokenizeDocument("json", BYTE, S.ParseOptions(on_error=on_error, encoding_errors=encoding_errors),
                             min_tokens=min_tokens)


# ----------------------------------------------------------------------------- sources


def test_jsonl_source_over_a_glob_of_files(tmp_path, jsonl_file):
  jsonl_file(_docs(3), "a.jsonl")
  jsonl_file(_docs(4, "other"), "b.jsonl")
  src = S.make_source("jsonl", str(tmp_path / "*.jsonl"))
  assert len(src) == 7
  text, status = S.parse_document(src[3], "json", S.ParseOptions())
  assert status == S.OK and text.startswith("other 0")
  assert src[3].where.endswith("b.jsonl:1")


def test_custom_text_field_and_blank_lines_skipped(jsonl_file, tmp_path):
  path = jsonl_file([{"body": "hello"}, "", {"body": "world"}])
  src = S.JsonlSource([path])
  assert len(src) == 2
  assert S.parse_document(src[1], "json", S.ParseOptions(text_field="body"))[0] == "world"
  assert src[1].where.endswith(":3")  # line numbers count the blank line


def test_malformed_json_names_file_and_line(jsonl_file):
  path = jsonl_file([{"text": "ok"}, '{"text": broken', {"text": "ok"}])
  src = S.JsonlSource([path])
  with pytest.raises(S.DataError, match=r"data\.jsonl:2: malformed JSON"):
    [_tokenize()(src[i]) for i in range(len(src))]
  statuses = [_tokenize("skip")(src[i])["status"] for i in range(len(src))]
  assert statuses == [S.OK, S.MALFORMED, S.OK]


def test_missing_text_field(jsonl_file):
  src = S.JsonlSource([jsonl_file([{"content": "x"}])])
  with pytest.raises(S.DataError, match=r":1: record has no string field 'text'"):
    _tokenize()(src[0])
  assert _tokenize("skip")(src[0])["status"] == S.MISSING_FIELD


def test_non_utf8_policies(jsonl_file):
  src = S.JsonlSource([jsonl_file([b'{"text": "caf\xe9 au lait"}'])])
  replaced = _tokenize(encoding_errors="replace")(src[0])
  assert replaced["status"] == S.OK
  assert "\ufffd" in BYTE.decode(replaced["tokens"])
  with pytest.raises(S.DataError, match=r":1: invalid UTF-8 at byte 13"):
    _tokenize(encoding_errors="raise")(src[0])
  assert _tokenize(encoding_errors="skip")(src[0])["status"] == S.NON_UTF8


def test_empty_and_short_documents_are_counted(jsonl_file):
  path = jsonl_file([{"text": "   "}, {"text": "ab"}, {"text": "a long enough document"}])
  docs = PL.document_dataset(S.JsonlSource([path]), _tokenize(min_tokens=5), seed=0, shuffle=False)
  it = iter(PL.PackedBatches(docs.to_iter_dataset(), batch_size=1, seq_len=16))
  batch = next(it)
  assert batch["stats"]["skipped_empty"] == 1
  assert batch["stats"]["skipped_too_short"] == 1
  assert batch["stats"]["documents"] == 3


def test_text_source_splits(tmp_path):
  p = tmp_path / "t.txt"
  p.write_text("first paragraph\nstill first\n\n\nsecond one\n\nthird\n")
  assert len(S.TextSource([str(p)], split="file")) == 1
  lines = S.TextSource([str(p)], split="line")
  assert [S.parse_document(lines[i], "text", S.ParseOptions())[0] for i in range(len(lines))] == [
      "first paragraph", "still first", "second one", "third"]
  paras = S.TextSource([str(p)], split="paragraph")
  texts = [S.parse_document(paras[i], "text", S.ParseOptions())[0] for i in range(len(paras))]
  assert texts == ["first paragraph\nstill first", "second one", "third"]
  assert paras[1].where.endswith("t.txt:5")


def test_parquet_source(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pa.table({"text": [f"row {i}" for i in range(10)], "n": list(range(10))})
  pq.write_table(table, tmp_path / "d.parquet", row_group_size=3)
  src = S.make_source("parquet", str(tmp_path / "*.parquet"))
  assert len(src) == 10
  assert [S.parse_document(src[i], src.kind, S.ParseOptions())[0] for i in (0, 4, 9)] == ["row 0", "row 4", "row 9"]
  with pytest.raises(S.DataError, match="no column 'body'"):
    S.make_source("parquet", str(tmp_path / "*.parquet"), text_field="body")


def test_arrayrecord_source(tmp_path):
  from array_record.python import array_record_module as arm
  path = str(tmp_path / "d.array_record")
  w = arm.ArrayRecordWriter(path, "group_size:1")
  for i in range(5):
    w.write(json.dumps({"text": f"record {i}"}).encode())
  w.close()
  second = str(tmp_path / "e.array_record")
  w = arm.ArrayRecordWriter(second, "group_size:1")
  w.write(b"{not json")
  w.close()
  src = S.make_source("arrayrecord", f"{path},{second}")
  assert len(src) == 6
  assert S.parse_document(src[2], src.kind, S.ParseOptions())[0] == "record 2"
  with pytest.raises(S.DataError, match=r"e\.array_record:record=0: malformed JSON"):
    S.parse_document(src[5], src.kind, S.ParseOptions())


def test_no_matching_files_names_the_field(tmp_path):
  with pytest.raises(S.DataError, match=r"data.train_files: no files match"):
    S.make_source("jsonl", str(tmp_path / "nothing*.jsonl"))


# ----------------------------------------------------------------------------- tokenizers


def test_sentencepiece_train_and_roundtrip(tmp_path):
  texts = [f"The capital of Place{i % 13} is City{i % 7}. It has {i} thousand people." for i in range(400)]
  path = TK.train_sentencepiece(texts, str(tmp_path / "sp"), vocab_size=400)
  tok = TK.load_tokenizer("sentencepiece", path)
  assert tok.vocab_size == 400
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  s = "The capital of Place3 is City2 — ünïcode too.\n- a list item\n\nQ: two  spaces?"
  assert tok.decode(tok.encode(s)) == s  # exact: newlines, spaces and unseen characters survive


def test_sentencepiece_command_line(tmp_path, jsonl_file):
  path = jsonl_file([{"text": f"sentence number {i} about things"} for i in range(200)])
  TK.main(["--input", path, "--vocab_size", "300", "--output", str(tmp_path / "cli")])
  assert TK.SentencePieceTokenizer(str(tmp_path / "cli.model")).vocab_size == 300


def test_byte_tokenizer_roundtrip():
  s = "héllo\nwörld"
  assert BYTE.decode(BYTE.encode(s)) == s
  assert max(BYTE.encode(s)) < BYTE.vocab_size


# ----------------------------------------------------------------------------- packing


def test_packing_targets_stay_inside_segments(jsonl_file):
  docs = PL.document_dataset(S.JsonlSource([jsonl_file(_docs(30))]), _tokenize(), seed=0)
  batch = next(iter(PL.PackedBatches(docs.to_iter_dataset(), batch_size=4, seq_len=64)))
  tok, tgt, seg, pos, mask = (batch[k] for k in ("tokens", "targets", "segment_ids", "positions", "loss_mask"))
  assert tok.shape == (4, 64) and mask.dtype == np.float32
  for b in range(4):
    for t in range(63):
      if mask[b, t]:
        assert seg[b, t] == seg[b, t + 1] != 0
        assert tgt[b, t] == tok[b, t + 1]
        assert pos[b, t + 1] == pos[b, t] + 1
    assert mask[b, 63] == 0
  assert (seg > 0).mean() > 0.95  # concatenate-then-split wastes almost nothing


def test_packing_reconstructs_every_document_in_order(jsonl_file):
  """Unpacking the rows gives back the token stream: nothing skipped, nothing doubled."""
  records = _docs(12)
  src = S.JsonlSource([jsonl_file(records)])
  docs = PL.document_dataset(src, _tokenize(), seed=0, shuffle=False, num_epochs=1)
  it = iter(PL.PackedBatches(docs.to_iter_dataset(), batch_size=1, seq_len=16))
  stream = []
  try:
    while True:
      b = next(it)
      seg = b["segment_ids"][0]
      for s in range(1, seg.max() + 1):
        chunk = b["tokens"][0][seg == s].tolist()
        if stream and stream[-1] == "cont":
          stream.pop()
          chunk = chunk[1:]  # a split document repeats one token at the row boundary
        stream.append(chunk)
        if chunk[-1] != BYTE.eos_id and len(chunk):
          stream.append("cont")
  except StopIteration:
    pass
  flat = [t for c in stream if c != "cont" for t in c]
  expected = [t for r in records for t in [BYTE.bos_id] + BYTE.encode(r["text"]) + [BYTE.eos_id]]
  assert flat[:len(expected) - 20] == expected[:len(expected) - 20]


def test_iterator_state_resumes_exactly(jsonl_file):
  docs = PL.document_dataset(S.JsonlSource([jsonl_file(_docs(25))]), _tokenize(), seed=7)
  ds = PL.PackedBatches(docs.to_iter_dataset(), batch_size=2, seq_len=32)
  it = iter(ds)
  for _ in range(9):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  expected = [next(it)["tokens"] for _ in range(12)]
  it2 = iter(ds)
  it2.set_state(state)
  got = [next(it2)["tokens"] for _ in range(12)]
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_shuffle_is_seeded_and_reshuffles_each_epoch(jsonl_file):
  src = S.JsonlSource([jsonl_file(_docs(10))])
  order = lambda seed: [d["index"] for d in PL.document_dataset(src, _tokenize(), seed=seed)[:20]]
  assert order(1) == order(1)
  assert order(1) != order(2)
  first, second = order(1)[:10], order(1)[10:]
  assert sorted(first) == sorted(second) == list(range(10)) and first != second


def test_hosts_get_disjoint_complete_shards(jsonl_file):
  src = S.JsonlSource([jsonl_file(_docs(11))])
  seen = []
  for host in range(3):
    ds = PL.document_dataset(src, _tokenize(), seed=0, process_index=host, process_count=3, num_epochs=1)
    seen.append({d["index"] for d in ds})
  assert set().union(*seen) == set(range(11))
  assert sum(len(s) for s in seen) == 11


# ----------------------------------------------------------------------------- windows


def test_split_windows():
  toks = list(range(20))
  w = PL.split_windows(toks, prefix_len=6, suffix_len=4, stride=5, min_prefix_len=3)
  assert [(p.tolist(), s.tolist()) for p, s in w] == [
      ([0, 1, 2], [3, 4, 5, 6]), ([2, 3, 4, 5, 6, 7], [8, 9, 10, 11]),
      ([7, 8, 9, 10, 11, 12], [13, 14, 15, 16])]
  assert PL.split_windows(toks[:5], prefix_len=6, suffix_len=4, stride=4, min_prefix_len=3) == []


def test_window_batches_and_their_state(jsonl_file):
  path = jsonl_file([{"text": "x" * 3}] + [{"text": "abcdefghij" * (i + 2)} for i in range(6)])
  docs = PL.document_dataset(S.JsonlSource([path]), _tokenize(), seed=0, shuffle=False)
  ds = PL.WindowBatches(docs.to_iter_dataset(), batch_size=3, prefix_len=8, suffix_len=5,
                        stride=5, min_prefix_len=4)
  it = iter(ds)
  b = next(it)
  assert b["prefix"].shape == (3, 8) and b["suffix"].shape == (3, 5)
  assert b["stats"]["skipped_too_short"] == 1  # the 3-character document
  full = [BYTE.bos_id] + BYTE.encode("abcdefghij" * 2) + [BYTE.eos_id]
  assert b["prefix"][0, :b["prefix_len"][0]].tolist() == full[:4]
  assert b["suffix"][0].tolist() == full[4:9]
  state = it.get_state()
  nxt = [next(it)["doc_id"].tolist() for _ in range(4)]
  it2 = iter(ds)
  it2.set_state(state)
  assert [next(it2)["doc_id"].tolist() for _ in range(4)] == nxt


def test_grain_worker_processes_are_deterministic_and_resumable(jsonl_file):
  cfg = ConfigDict(dict(format="jsonl", train_files=jsonl_file(_docs(40)), text_field="text", text_split="file",
                        on_error="raise", encoding_errors="replace", min_doc_tokens=2, shuffle=True,
                        num_epochs=0, worker_count=2))
  make = lambda: iter(PL.make_lm_dataset(cfg, BYTE, seq_len=32, host_batch_size=2, seed=3))
  a, b = make(), make()
  for _ in range(3):
    np.testing.assert_array_equal(next(a)["tokens"], next(b)["tokens"])
  state = a.get_state()
  expected = [next(a)["tokens"] for _ in range(4)]
  c = make()
  c.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(c)["tokens"], e)
