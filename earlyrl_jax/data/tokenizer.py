"""One Tokenizer protocol over SentencePiece, HF `tokenizers` and raw bytes; tokenizer resolution.

Policy and teacher may use different tokenizers; text is the common currency
between them, so every backend round-trips `decode(encode(text))`, and two more
things hold for text cut out of a document:

- `encode_with_offsets(text)` gives the character offset of every token boundary,
  so a window cut at a token boundary slices the *original string*: prefix text +
  suffix text is exactly the document span (decoding ids cannot promise that:
  SentencePiece drops the dummy-prefix space, byte pieces may split a character).
- `encode_continuation(text)` / `decode_continuation(ids)` treat the text as the
  continuation of earlier text: no dummy-prefix '▁' piece is added, and a leading
  space is kept. A rewrite of a suffix re-encodes to the ids the same text has in
  context.

`resolve_tokenizer` is the one place a run gets its tokenizer from its `data`
config (loading one, or training SentencePiece on the corpus).

Also a command to train a SentencePiece model on a corpus read through the
project's own data sources:

  python -m earlyrl_jax.data.tokenizer --input='corpus/*.jsonl' --format=jsonl \
      --vocab_size=8000 --output=tokenizer   # writes tokenizer.model / .vocab
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    """(ids, bounds_N1): bounds[k] = character offset in `text` of the boundary before token k
    (bounds[n] = len(text)), or -1 where that boundary falls inside a character."""
    ...

  def encode_continuation(self, text: str) -> list[int]:
    """Ids of `text` as it continues earlier text: no dummy-prefix piece is added."""
    ...

  def decode_continuation(self, ids: Sequence[int]) -> str:
    """Text of ids that continue earlier text: a leading space is kept."""
    ...


def bounds_from_spans(spans, num_chars: int) -> np.ndarray:
  """Token (start, end) character spans -> boundary offsets [n + 1] (-1 inside a character).

  The boundary before token k is the end of token k-1 when that token covers text and
  does not overlap token k; otherwise (a byte piece or a byte-level token holding part
  of a character, or an empty dummy piece) it is -1. Offsets only ever increase.
  """
  s = np.asarray(spans, np.int64).reshape(-1, 2)
  n = len(s)
  b = np.full((n + 1,), -1, np.int64)
  b[0], b[n] = 0, num_chars
  if n > 1:
    prev_start, prev_end, start = s[:-1, 0], s[:-1, 1], s[1:, 0]
    ok = (prev_end > prev_start) & (prev_end <= start) & (prev_end <= num_chars)
    b[1:n] = np.where(ok, prev_end, -1)
    before = np.maximum.accumulate(np.maximum(b[:n - 1], 0))  # largest clean offset before k
    inner = b[1:n]
    inner[(inner >= 0) & (inner < before)] = -1
  return b


def _byte_to_char(text: str) -> np.ndarray:
  """Character index at each UTF-8 byte offset (-1 inside a character), len(bytes)+1 long."""
  data = np.frombuffer(text.encode("utf-8"), np.uint8)
  start = (data & 0xC0) != 0x80
  out = np.where(start, np.cumsum(start) - 1, -1)
  return np.concatenate([out, [len(text)]]).astype(np.int64)


def _sp_ids_and_bounds(proto, text: str) -> tuple[list[int], np.ndarray]:
  """Ids and boundaries from a SentencePiece proto, whose piece offsets are in bytes."""
  to_char = _byte_to_char(text)
  spans = [(to_char[p.begin], to_char[p.end]) for p in proto.pieces]
  return [p.id for p in proto.pieces], bounds_from_spans(spans, len(text))


class ByteTokenizer:
  """UTF-8 bytes + 3 specials (pad=0, bos=1, eos=2). Needs no files: handy in tests."""
  pad_id, bos_id, eos_id = 0, 1, 2
  _offset = 3

  def __init__(self, vocab_size: int = 259):
    if vocab_size < 259:
      raise ValueError(f"ByteTokenizer needs vocab_size >= 259, got {vocab_size}")
    self.vocab_size = vocab_size

  def encode(self, text: str) -> list[int]:
    return [b + self._offset for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - self._offset for i in ids if self._offset <= int(i) < 256 + self._offset)
    return data.decode("utf-8", errors="replace")

  def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    return self.encode(text), _byte_to_char(text)

  def encode_continuation(self, text: str) -> list[int]:
    return self.encode(text)

  def decode_continuation(self, ids: Sequence[int]) -> str:
    return self.decode(ids)


class SentencePieceTokenizer:
  """A `tokenizer.model` file through the sentencepiece library."""

  def __init__(self, path: str):
    import sentencepiece as spm
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    self.path = path
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      from earlyrl_jax.errors import CheckpointError
      raise CheckpointError(f"{path}: not a readable SentencePiece model ({e})") from None
    self.vocab_size = int(self._sp.get_piece_size())
    pad = self._sp.pad_id()
    self.pad_id = pad if pad >= 0 else 0
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
    self._cont = None  # the same model without the dummy prefix (built on first use)

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    try:
      r = self._sp.encode(text, return_type="offset_mapping")
      return list(r["ids"]), bounds_from_spans(r["offsets"], len(text))
    except (TypeError, ValueError):  # sentencepiece without offset_mapping: byte offsets
      return _sp_ids_and_bounds(self._sp.encode(text, out_type="immutable_proto"), text)

  def _continuation_processor(self):
    """The model with `add_dummy_prefix` off: text is tokenized as it is inside a document."""
    if self._cont is None:
      import sentencepiece as spm
      from sentencepiece import sentencepiece_model_pb2
      proto = sentencepiece_model_pb2.ModelProto()
      proto.ParseFromString(self._sp.serialized_model_proto())
      if proto.normalizer_spec.add_dummy_prefix:
        proto.normalizer_spec.add_dummy_prefix = False
        self._cont = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
      else:
        self._cont = self._sp
    return self._cont

  def encode_continuation(self, text: str) -> list[int]:
    return list(self._continuation_processor().encode(text))

  def decode_continuation(self, ids: Sequence[int]) -> str:
    return self._continuation_processor().decode([int(i) for i in ids])

  def __getstate__(self):  # grain workers pickle the tokenizer; reload from file
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


class HFTokenizer:
  """A `tokenizer.json` (file or directory) through HF `tokenizers` (the [hf] extra).

  Special-token ids come from `tokenizer_config.json` / `config.json` next to it
  when present (bos/eos/pad token strings or ids), otherwise from common names.
  """

  def __init__(self, path: str, *, bos_token: str | None = None, eos_token: str | None = None,
               pad_token: str | None = None):
    require_hf_extra(path)
    from tokenizers import Tokenizer as _Tok
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise FileNotFoundError(f"no tokenizer.json at {path}")
    self.path = path
    try:
      self._tok = _Tok.from_file(file)
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
      from earlyrl_jax.errors import CheckpointError
      raise CheckpointError(f"{file}: not a readable tokenizer.json ({e})") from None
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    self.chat_template: str | None = None
    cfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
    model_cfg = _read_json(os.path.join(directory, "config.json"))
    self.chat_template = read_chat_template(directory, cfg)

    def tok_id(explicit, key, fallbacks):
      name = explicit or _token_str(cfg.get(key))
      if name is not None and self._tok.token_to_id(name) is not None:
        return self._tok.token_to_id(name)
      mid = model_cfg.get(key.replace("_token", "_token_id"))
      if isinstance(mid, list):
        mid = mid[0] if mid else None
      if isinstance(mid, int):
        return mid
      for f in fallbacks:
        if self._tok.token_to_id(f) is not None:
          return self._tok.token_to_id(f)
      return None

    self.bos_id = tok_id(bos_token, "bos_token", ["<s>", "<|begin_of_text|>", "<bos>"])
    self.eos_id = tok_id(eos_token, "eos_token", ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"])
    pad = tok_id(pad_token, "pad_token", ["<pad>", "<|pad|>"])
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
    self.bos_token = self._tok.id_to_token(self.bos_id) if self.bos_id is not None else None
    self._anchor_ids = self.encode(self._ANCHOR)

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    enc = self._tok.encode(text, add_special_tokens=False)  # offsets are in characters
    return list(enc.ids), bounds_from_spans(enc.offsets, len(text))

  # Tokenizers that prepend a space marker (Metaspace, prepend_scheme='first') would add one
  # to a continuation; text after an anchor ("\n") never gets it. The anchor's ids are
  # checked, so a tokenizer that merges the anchor with the text falls back to plain encode.
  _ANCHOR = "\n"

  def encode_continuation(self, text: str) -> list[int]:
    anchor = self._anchor_ids
    ids = self.encode(self._ANCHOR + text)
    if anchor and ids[:len(anchor)] == anchor:
      return ids[len(anchor):]
    return self.encode(text)

  def decode_continuation(self, ids: Sequence[int]) -> str:
    anchor = self._anchor_ids
    head = self.decode(anchor)
    full = self.decode(anchor + [int(i) for i in ids])
    return full[len(head):] if anchor and full.startswith(head) else self.decode(ids)

  def special_tokens(self) -> list[str]:
    """The added special tokens' strings (e.g. '<|im_end|>'): text that holds one encodes to that
    token, so prompt families break them inside quoted, untrusted text."""
    return [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Formats chat messages with the model's Jinja chat template (instruct teachers)."""
    if not self.chat_template:
      raise ValueError(f"{self.path}: no chat template (neither {CHAT_TEMPLATE_FILE} nor "
                       "tokenizer_config.json's chat_template)")
    # The template comes with downloaded model files: render it sandboxed (no
    # attribute access to Python internals, no mutation of the messages), as
    # transformers does.
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    try:
      template = env.from_string(self.chat_template)
    except TemplateError as e:
      raise ValueError(f"{self.path}: chat_template does not parse: {e}") from e
    try:
      return template.render(
          messages=messages, add_generation_prompt=add_generation_prompt,
          bos_token=self._tok.id_to_token(self.bos_id) if self.bos_id is not None else "",
          eos_token=self._tok.id_to_token(self.eos_id) if self.eos_id is not None else "")
    except SecurityError as e:
      raise ValueError(f"{self.path}: chat_template tried an unsafe operation: {e}") from e
    except TemplateError as e:
      raise ValueError(f"{self.path}: chat_template failed to render: {e}") from e

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def read_chat_template(directory: str, tokenizer_config: dict) -> str | None:
  """The model's chat template: `chat_template.jinja` beside the tokenizer (where current HF
  checkpoints keep it), else tokenizer_config.json's `chat_template` (a string, or a list of
  named templates of which 'default' is the one a plain chat uses)."""
  path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  found = tokenizer_config.get("chat_template")
  if isinstance(found, list):   # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
    found = named.get("default") or next(iter(named.values()), None)
  return found if isinstance(found, str) and found else None


def _raise_template_error(msg):
  raise ValueError(f"chat template: {msg}")


def _token_str(v):
  if isinstance(v, dict):
    return v.get("content")
  return v if isinstance(v, str) else None


def _read_json(path: str) -> dict:
  import json
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    from earlyrl_jax.errors import CheckpointError, json_problem
    raise CheckpointError(f"{path}:{e.lineno}: not JSON ({json_problem(e)})") from None


def load_tokenizer(kind: str, path: str = "", vocab_size: int = 259) -> Tokenizer:
  """`data.tokenizer` config -> Tokenizer. kind: 'sentencepiece' | 'hf' | 'byte'."""
  if kind == "byte":
    return ByteTokenizer(vocab_size)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path)
  if kind == "hf":
    return HFTokenizer(path)
  raise ValueError(f"data.tokenizer={kind!r}: expected 'sentencepiece', 'hf' or 'byte'")


def train_sentencepiece(texts: Iterable[str], output_prefix: str, vocab_size: int, *,
                        model_type: str = "bpe", character_coverage: float = 1.0,
                        max_sentence_length: int = 16384, num_threads: int | None = None) -> str:
  """Trains a SentencePiece model; returns the path of `<output_prefix>.model`.

  Special ids are fixed so that configs can rely on them: pad=0, unk=1, bos=2, eos=3.
  Text round-trips exactly: no NFKC normalisation, whitespace kept, newline is a
  piece of its own (lists and dialogue keep their lines), unseen characters fall
  back to bytes.
  """
  import sentencepiece as spm
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=output_prefix, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      user_defined_symbols=["\n"],
      max_sentence_length=max_sentence_length, input_sentence_size=2_000_000,
      shuffle_input_sentence=True, num_threads=num_threads or os.cpu_count() or 1,
      minloglevel=2)
  return output_prefix + ".model"


def iter_texts(source, kind: str, opts, limit: int | None = None,
               counts: dict[str, int] | None = None) -> Iterable[str]:
  """Texts of a source in order, skipping bad records per `opts` (a ParseOptions).

  `counts` (if given) gets the number of records read per status name ('ok', 'missing_field', ...).
  """
  from earlyrl_jax.data.sources import STATUS_NAMES, parse_document
  n = len(source) if limit is None else min(limit, len(source))
  for i in range(n):
    text, status = parse_document(source[i], kind, opts)
    if counts is not None:
      counts[STATUS_NAMES[status]] = counts.get(STATUS_NAMES[status], 0) + 1
    if text is not None:
      yield text


def _describe_files(files: Sequence[str], limit: int = 3) -> str:
  more = f" and {len(files) - limit} more" if len(files) > limit else ""
  return ", ".join(files[:limit]) + more


def train_sentencepiece_on_source(source, opts, output_prefix: str, vocab_size: int, *,
                                  limit: int | None = None, field: str = "data.train_files",
                                  model_type: str = "bpe") -> tuple[str, dict[str, int]]:
  """Trains SentencePiece on a data source's texts; returns (model path, counts per status).

  Raises DataError naming the files and `data.text_field` when no record is usable
  (an empty file, or records without the text field), instead of SentencePiece's
  INTERNAL error, and names `data.tokenizer_vocab_size` when the corpus is too small for it.
  """
  from earlyrl_jax.data.sources import DataError
  counts: dict[str, int] = {}
  texts = iter(iter_texts(source, source.kind, opts, limit, counts))
  files = _describe_files(getattr(source, "files", [repr(source)]))
  try:
    first = next(texts)
  except StopIteration:
    skipped = ", ".join(f"{k}={v}" for k, v in counts.items() if k != "ok") or "no records"
    raise DataError(f"{field}: no usable document to train the tokenizer on in {files} "
                    f"({sum(counts.values())} records read: {skipped}; "
                    f"data.text_field={opts.text_field!r})") from None

  def all_texts():
    yield first
    yield from texts

  try:
    path = train_sentencepiece(all_texts(), output_prefix, vocab_size, model_type=model_type)
  except RuntimeError as e:
    if "ocabulary size" in str(e):
      raise DataError(f"data.tokenizer_vocab_size={vocab_size}: the corpus {files} is too small "
                      f"for it ({str(e).strip().splitlines()[-1]})") from None
    raise
  return path, counts


def resolve_tokenizer(data_cfg, workdir: str, train_files: str, model_vocab_size: int) -> Tokenizer:
  """The run's tokenizer from its `data` section: loads `data.tokenizer_path`, or (sentencepiece
  without a path) trains a model on the first 20k documents of `train_files` into
  WORKDIR/tokenizer.model once (process 0; the others wait) and loads it."""
  d = data_cfg
  if d.tokenizer != "sentencepiece" or d.tokenizer_path:
    return load_tokenizer(d.tokenizer, d.tokenizer_path, vocab_size=model_vocab_size)
  import jax
  path = os.path.join(workdir, "tokenizer.model")
  if jax.process_index() == 0 and not os.path.exists(path):
    from earlyrl_jax.data import sources
    t0 = time.time()
    src = sources.make_source(d.format, train_files, text_field=d.text_field, text_split=d.text_split)
    opts = sources.ParseOptions(text_field=d.text_field, on_error="skip",
                                encoding_errors=d.encoding_errors)
    tmp = os.path.join(workdir, "tokenizer.tmp")
    _, counts = train_sentencepiece_on_source(src, opts, tmp, d.tokenizer_vocab_size, limit=20_000)
    os.replace(tmp + ".model", path)
    os.replace(tmp + ".vocab", os.path.join(workdir, "tokenizer.vocab"))
    skipped = {k: v for k, v in counts.items() if k not in ("ok", "replaced_non_utf8")}
    note = (f"; skipped {sum(skipped.values())} records ("
            + ", ".join(f"{k}={v}" for k, v in skipped.items()) + ")") if skipped else ""
    print(f"trained a {d.tokenizer_vocab_size}-piece SentencePiece tokenizer -> {path} on "
          f"{counts.get('ok', 0) + counts.get('replaced_non_utf8', 0)} documents{note} "
          f"({time.time() - t0:.1f}s)", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("tokenizer")
  return SentencePieceTokenizer(path)


def main(argv=None):
  import argparse
  from earlyrl_jax.data.sources import DataError, ParseOptions, make_source
  p = argparse.ArgumentParser(description="Train a SentencePiece model on a corpus.")
  p.add_argument("--input", required=True, help="comma-separated globs")
  p.add_argument("--format", default="jsonl", help="jsonl | text | parquet | arrayrecord")
  p.add_argument("--text_field", default="text")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", default="bpe")
  p.add_argument("--max_documents", type=int, default=None)
  p.add_argument("--output", required=True, help="output prefix (writes PREFIX.model)")
  args = p.parse_args(argv)
  try:
    src = make_source(args.format, args.input, text_field=args.text_field, field="--input")
    opts = ParseOptions(text_field=args.text_field, on_error="skip")
    path, counts = train_sentencepiece_on_source(src, opts, args.output, args.vocab_size,
                                                 limit=args.max_documents, field="--input",
                                                 model_type=args.model_type)
  except DataError as e:
    raise SystemExit(f"error: {e}") from None
  tok = SentencePieceTokenizer(path)
  counted = ", ".join(f"{k}={v}" for k, v in counts.items())
  print(f"wrote {path} (vocab {tok.vocab_size}) from {len(src)} records ({counted})")


if __name__ == "__main__":
  main()


# ----------------------------------------------------------------------- model directories

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                    "special_tokens_map.json", "generation_config.json", "chat_template.jinja")


def require_hf_extra(path: str, field: str = "") -> None:
  """An HF tokenizer (tokenizer.json) needs the [hf] extra: checked before anything is loaded,
  so a missing package is named before gigabytes of weights are read, not after."""
  from earlyrl_jax.errors import MissingExtraError
  try:
    import tokenizers  # noqa: F401
  except ImportError:
    where = f"{field}: " if field else ""
    raise MissingExtraError(f"{where}{path} is an HF tokenizer (tokenizer.json), which needs the "
                            "[hf] extra (the `tokenizers` package): pip install -e '.[hf]'") from None


def check_tokenizer_dir(path: str, field: str = "") -> None:
  """That `load_tokenizer_dir(path)` will find a tokenizer and its packages, loading nothing."""
  if os.path.exists(os.path.join(path, "tokenizer.json")):
    require_hf_extra(os.path.join(path, "tokenizer.json"), field)
  elif not os.path.exists(os.path.join(path, "tokenizer.model")):
    where = f"{field}: " if field else ""
    raise FileNotFoundError(f"{where}{path} has no tokenizer.json or tokenizer.model (a model "
                            "directory brings its own tokenizer)")


def load_tokenizer_dir(path: str):
  """tokenizer.json (HF tokenizers) or tokenizer.model (SentencePiece) next to the weights."""
  if os.path.exists(os.path.join(path, "tokenizer.json")):
    return HFTokenizer(path)
  if os.path.exists(os.path.join(path, "tokenizer.model")):
    return SentencePieceTokenizer(os.path.join(path, "tokenizer.model"))
  warnings.warn(f"{path}: no tokenizer.json or tokenizer.model; returning tokenizer=None")
  return None


def save_tokenizer_files(tokenizer, path: str) -> None:
  """Copies a tokenizer's files into a model directory (HF or orbax export)."""
  src = getattr(tokenizer, "path", None)
  if src is None:
    warnings.warn(f"{type(tokenizer).__name__} has no files to save")
    return
  if isinstance(tokenizer, SentencePieceTokenizer):
    if os.path.abspath(src) != os.path.abspath(os.path.join(path, "tokenizer.model")):
      shutil.copy(src, os.path.join(path, "tokenizer.model"))
    return
  directory = src if os.path.isdir(src) else os.path.dirname(src)
  for fn in _TOKENIZER_FILES:
    f = os.path.join(directory, fn)
    if os.path.exists(f) and os.path.abspath(directory) != os.path.abspath(path):
      shutil.copy(f, os.path.join(path, fn))


def adds_bos(tokenizer) -> bool:
  """Whether the tokenizer's own convention starts a text with BOS.

  An HF tokenizer: as transformers' `tokenizer(text)` does, from tokenizer_config.json's
  `add_bos_token` when it states one, else from what tokenizer.json's post-processor adds
  (SmolLM2: no; Llama 3: yes). SentencePiece and byte tokenizers: yes, as this project's
  training documents start. Generation and the teacher backends follow it, so a prompt is
  scored or continued as the model's own stack would.
  """
  if getattr(tokenizer, "bos_id", None) is None:
    return False
  if isinstance(tokenizer, HFTokenizer):
    directory = tokenizer.path if os.path.isdir(tokenizer.path) else os.path.dirname(tokenizer.path)
    stated = _read_json(os.path.join(directory, "tokenizer_config.json")).get("add_bos_token")
    if isinstance(stated, bool):
      return stated
    ids = tokenizer._tok.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == tokenizer.bos_id
  return True
