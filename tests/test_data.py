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
  assert replaced["status"] == S.REPLACED_NON_UTF8  # usable, and counted
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
  ds = PL.WindowBatches(docs, batch_size=3, prefix_len=8, suffix_len=5,
                        stride=5, min_prefix_len=4, pool_size=1, shuffle=False)
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


# ----------------------------------------------------------------------------- windows for SIP


def _window_cfg(path, **kw):
  cfg = dict(format="jsonl", train_files=path, text_field="text", text_split="file", on_error="raise",
             encoding_errors="replace", min_doc_tokens=2, shuffle=True, num_epochs=0, worker_count=0,
             prefix_len=12, suffix_len=6, window_stride=3, min_prefix_len=2, window_pool_size=16,
             max_consecutive_skips=10_000)
  cfg.update(kw)
  return ConfigDict(cfg)


def test_window_batches_mix_many_documents(jsonl_file):
  """A batch's rows come from many documents, not one document's consecutive windows."""
  path = jsonl_file([{"text": f"document {i} " + "abcdefghij" * 12} for i in range(40)])
  docs = PL.document_dataset(S.JsonlSource([path]), _tokenize(), seed=0)
  it = iter(PL.WindowBatches(docs, batch_size=8, prefix_len=8, suffix_len=5, stride=5, pool_size=16,
                             seed=1))
  for _ in range(5):
    b = next(it)
    assert len(set(b["doc_id"].tolist())) >= 5, b["doc_id"]
    for row in range(8):  # every row is a real window of its document
      full = [BYTE.bos_id] + BYTE.encode(json.loads(open(path).readlines()[b["doc_id"][row]])["text"]) + [
          BYTE.eos_id]
      j = b["cut"][row]
      assert b["suffix"][row, :b["suffix_len"][row]].tolist() == full[j:j + b["suffix_len"][row]]
      assert b["prefix"][row, :b["prefix_len"][row]].tolist() == full[j - b["prefix_len"][row]:j]


_UNICODE_DOCS = [
    f"Doc {i}: The capital of Place{i % 13} is City{i % 7} — café €{i} ünïcode.\n"
    f"- a list item  with  two spaces\n\nQ: is it {i}? A: yes, {i * 7} people live there."
    for i in range(30)]


def _sp_tokenizer(tmp_path):
  texts = [f"The capital of Place{i % 13} is City{i % 7}. A list item with {i} people." for i in range(300)]
  return TK.load_tokenizer("sentencepiece", TK.train_sentencepiece(texts, str(tmp_path / "sp"), 300))


def _hf_tokenizer(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([f"the capital of place {i} is city {i % 5}" for i in range(200)], trainer)
  d = tmp_path / "hf"
  d.mkdir()
  tok.save(str(d / "tokenizer.json"))
  return TK.HFTokenizer(str(d))


def _make_tokenizer(kind, tmp_path):
  return {"sentencepiece": _sp_tokenizer, "hf": _hf_tokenizer, "byte": lambda _: BYTE}[kind](tmp_path)


def _strip_specials(ids, tok):
  return [int(i) for i in ids if i not in (tok.bos_id, tok.eos_id)]


@pytest.mark.parametrize("kind", ["sentencepiece", "hf", "byte"])
def test_window_text_is_exact(kind, tmp_path, jsonl_file):
  """prefix_text + suffix_text is the document's span, and each text is exactly what its ids say."""
  tok = _make_tokenizer(kind, tmp_path)
  path = jsonl_file([{"text": t} for t in _UNICODE_DOCS])
  it = iter(PL.make_window_dataset(_window_cfg(path), tok, host_batch_size=16, seed=0))
  split_chars = 0  # cuts moved off a boundary inside a character (byte pieces)
  for _ in range(6):
    b = next(it)
    for r in range(16):
      text = _UNICODE_DOCS[b["doc_id"][r]]
      s, c, e = b["char_span"][r]
      assert b["prefix_text"][r] + b["suffix_text"][r] == text[s:e]
      assert (b["prefix_text"][r], b["suffix_text"][r]) == (text[s:c], text[c:e])
      # The text after the suffix (a factuality reference in no candidate): it follows the
      # suffix, and it is empty only where the document ends.
      nxt = b["next_text"][r]
      assert text[e:].startswith(nxt) and (nxt != "") == (text[e:] != "")
      pre = _strip_specials(b["prefix"][r, :b["prefix_len"][r]], tok)
      suf = _strip_specials(b["suffix"][r, :b["suffix_len"][r]], tok)
      at_start = s == 0
      assert (tok.decode(pre) if at_start else tok.decode_continuation(pre)) == b["prefix_text"][r]
      assert tok.decode_continuation(suf) == b["suffix_text"][r]
      if b["suffix_text"][r].startswith(" "):
        # Re-encoding the suffix text in context gives back its ids: no spurious leading piece.
        assert tok.encode_continuation(b["suffix_text"][r]) == suf
      split_chars += int(b["suffix_len"][r] < 6)
  assert split_chars > 0  # byte-fallback pieces, byte-level BPE and raw bytes split '—', '€', 'é'
  assert len(set(b["doc_id"].tolist())) > 4


@pytest.mark.parametrize("kind", ["sentencepiece", "hf", "byte"])
def test_continuation_encoding_adds_no_leading_piece(kind, tmp_path):
  tok = _make_tokenizer(kind, tmp_path)
  head, rest = "The capital", " of Place3 is City2."
  in_context = tok.encode(head + rest)[len(tok.encode(head)):]
  assert tok.encode_continuation(rest) == in_context
  assert tok.decode_continuation(tok.encode_continuation(rest)) == rest
  if kind == "sentencepiece":  # plain encode adds a dummy-prefix piece, plain decode drops the space
    assert tok.encode(rest) != in_context and tok.decode(in_context) == rest.lstrip()


def test_offsets_mark_boundaries_inside_characters(tmp_path):
  sp = _sp_tokenizer(tmp_path)
  text = "café €5 — ok"
  ids, bounds = sp.encode_with_offsets(text)
  assert ids == sp.encode(text) and bounds[0] == 0 and bounds[-1] == len(text)
  assert (bounds < 0).any()  # byte pieces of '€' / '—' split characters
  clean = [k for k in range(1, len(ids)) if bounds[k] >= 0]
  for k in clean:
    assert sp.decode(ids[:k]) == text[:bounds[k]]
  # The byte-offset path (sentencepiece without offset_mapping) agrees.
  ids2, bounds2 = TK._sp_ids_and_bounds(sp._sp.encode(text, return_type="proto"), text)
  assert ids2 == ids and bounds2.tolist() == bounds.tolist()
  _, bb = BYTE.encode_with_offsets("é€x")
  assert bb.tolist() == [0, -1, 1, -1, -1, 2, 3]


def test_window_iterator_state_restores_exactly(tmp_path, jsonl_file):
  tok = _sp_tokenizer(tmp_path)
  path = jsonl_file([{"text": t} for t in _UNICODE_DOCS])
  ds = PL.make_window_dataset(_window_cfg(path, window_pool_size=6), tok, host_batch_size=5, seed=3)
  it = iter(ds)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  assert len(json.dumps(state)) < 2000  # positions, not tokens or text
  expected = [next(it) for _ in range(6)]
  it2 = iter(ds)
  it2.set_state(state)
  for e in expected:
    g = next(it2)
    for k in ("prefix", "prefix_len", "suffix", "suffix_len", "doc_id", "cut", "char_span"):
      np.testing.assert_array_equal(g[k], e[k])
    assert g["prefix_text"] == e["prefix_text"] and g["suffix_text"] == e["suffix_text"]
    assert {k: int(v) for k, v in g["stats"].items()} == {k: int(v) for k, v in e["stats"].items()}
  other = iter(PL.make_window_dataset(_window_cfg(path, window_pool_size=6), tok, host_batch_size=5,
                                      seed=4))
  assert next(other)["doc_id"].tolist() != next(iter(ds))["doc_id"].tolist()  # seeded


# ----------------------------------------------------------------------------- all records skipped


@pytest.mark.parametrize("windows", [False, True])
def test_all_skipped_corpus_stops_with_a_clear_error(windows, jsonl_file, tmp_path):
  """on_error='skip' with a wrong text_field: a DataError naming files and reasons, not a busy loop."""
  import time
  path = jsonl_file([{"body": f"document {i} " * 20} for i in range(30)], "corpus.jsonl")
  cfg = _window_cfg(path, on_error="skip")  # text_field='text': no record has it
  t0 = time.time()
  with pytest.raises(S.DataError, match=r"corpus\.jsonl.*text_field='text'.*whole pass.*missing_field=30"):
    if windows:
      next(iter(PL.make_window_dataset(cfg, BYTE, host_batch_size=4, seed=0)))
    else:
      next(iter(PL.make_lm_dataset(cfg, BYTE, seq_len=32, host_batch_size=2, seed=0)))
  assert time.time() - t0 < 10
  # A long run of unusable records inside a larger corpus stops at data.max_consecutive_skips.
  path = jsonl_file([{"text": "a usable document " * 4}] + [{"body": "x"}] * 60, "mixed.jsonl")
  cfg = _window_cfg(path, on_error="skip", max_consecutive_skips=25, shuffle=False)
  with pytest.raises(S.DataError, match=r"25 consecutive records \(data\.max_consecutive_skips=25\)"):
    it = iter(PL.make_lm_dataset(cfg, BYTE, seq_len=32, host_batch_size=2, seed=0))
    for _ in range(5):
      next(it)


def test_one_epoch_of_only_bad_records_raises_at_the_end(jsonl_file):
  path = jsonl_file([{"body": "x"}] * 3)
  docs = PL.document_dataset(S.JsonlSource([path]), _tokenize("skip"), seed=0, num_epochs=1)
  with pytest.raises(S.DataError, match="missing_field=3"):
    next(iter(PL.PackedBatches(docs.to_iter_dataset(), batch_size=1, seq_len=16)))


# ----------------------------------------------------------------------------- tokenizer resolution


def test_tokenizer_training_without_usable_records_names_file_and_field(tmp_path, jsonl_file):
  from earlyrl_jax.data.tokenizer import resolve_tokenizer
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  cfg = _window_cfg(str(empty), tokenizer="sentencepiece", tokenizer_path="", tokenizer_vocab_size=64)
  with pytest.raises(S.DataError, match=r"empty\.jsonl.*no records"):
    resolve_tokenizer(cfg, str(tmp_path / "run"), str(empty), 64)
  wrong = jsonl_file([{"body": "some text"}] * 3, "wrong.jsonl")
  with pytest.raises(S.DataError, match=r"no usable document to train the tokenizer on in .*wrong\.jsonl "
                     r"\(3 records read: missing_field=3; data\.text_field='text'\)"):
    resolve_tokenizer(cfg, str(tmp_path / "run"), wrong, 64)
  assert not (tmp_path / "run" / "tokenizer.model").exists()


def test_resolve_tokenizer_trains_once_and_reports_skips(tmp_path, jsonl_file, capsys):
  from earlyrl_jax.data.tokenizer import resolve_tokenizer
  path = jsonl_file([{"text": f"sentence number {i} about things"} for i in range(200)] + [{"body": "x"}] * 2)
  cfg = _window_cfg(path, tokenizer="sentencepiece", tokenizer_path="", tokenizer_vocab_size=300)
  tok = resolve_tokenizer(cfg, str(tmp_path), path, 256)
  assert tok.vocab_size == 300 and (tmp_path / "tokenizer.model").exists()
  assert "on 200 documents; skipped 2 records (missing_field=2)" in capsys.readouterr().out
  assert isinstance(resolve_tokenizer(_window_cfg(path, tokenizer="byte", tokenizer_path=""), "", path, 300),
                    TK.ByteTokenizer)


def test_the_next_span_ends_n_tokens_on_at_a_character_boundary(jsonl_file):
  """bounds: -1 inside a character; the span stops at the last boundary within n tokens."""
  bounds = np.array([0, 1, 2, -1, -1, 3, 4, 5])
  assert PL.next_span_end(bounds, 2, 2) == 2        # tokens 3, 4 split a character: nothing
  assert PL.next_span_end(bounds, 2, 3) == 5
  assert PL.next_span_end(bounds, 5, 10) == 7       # the document's end
  assert PL.next_span_end(bounds, 7, 4) == 7        # nothing follows
  cfg = _window_cfg(jsonl_file([{"text": "abcdefghijklmnop"}]), shuffle=False, prefix_len=4,
                    suffix_len=3, window_stride=3, min_prefix_len=4, window_pool_size=1)
  it = iter(PL.make_window_dataset(cfg, BYTE, host_batch_size=2, seed=0))
  b = next(it)
  # byte tokens with BOS first: cuts at 4, 7; suffixes "def", "ghi"; the next 3 bytes follow each
  assert b["suffix_text"] == ["def", "ghi"] and b["next_text"] == ["ghi", "jkl"]


@pytest.mark.parametrize("kind,stated,want_bos", [
    ("hf", None, False),          # like SmolLM2: a bos_token (<|im_start|>) its tokenizer never adds
    ("hf", True, True),           # like Llama 3: add_bos_token in tokenizer_config.json
    ("sentencepiece", None, True),
    ("byte", None, True)])
def test_documents_start_with_bos_only_where_the_tokenizer_adds_one(kind, stated, want_bos, tmp_path,
                                                                    jsonl_file):
  """Training documents follow the tokenizer's own BOS convention (data.tokenizer.adds_bos), as
  generation and the teacher backends do: an HF tokenizer that adds no BOS gets none (SmolLM2
  was pretrained without one; its bos_token opens a chat turn)."""
  tok = _make_tokenizer(kind, tmp_path)
  if stated is not None:
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": stated}))
    tok = TK.HFTokenizer(str(tmp_path / "hf"))
  assert tok.bos_id is not None and TK.adds_bos(tok) == want_bos
  text = "the capital of place 3 is city 3, and the capital of place 4 is city 4."
  path = jsonl_file([{"text": text}])
  cfg = _window_cfg(path, prefix_len=4, suffix_len=4, min_prefix_len=4, shuffle=False)
  doc = PL.tokenize_fn(cfg, tok, "json")(S.RawRecord(json.dumps({"text": text}).encode(), path))
  ids = [int(i) for i in doc["tokens"]]
  assert ids[1 if want_bos else 0:-1] == tok.encode(text) and (ids[0] == tok.bos_id) == want_bos
  prefix = next(iter(PL.make_window_dataset(cfg, tok, host_batch_size=1, seed=0)))["prefix"][0]
  assert (int(prefix[0]) == tok.bos_id) == want_bos
