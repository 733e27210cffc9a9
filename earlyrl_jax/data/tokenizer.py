"""One Tokenizer protocol over SentencePiece, HF `tokenizers` and raw bytes.

Policy and teacher may use different tokenizers; text is the common currency
between them, so every backend round-trips `decode(encode(text))`.

Also a command to train a SentencePiece model on a corpus read through the
project's own data sources:

  python -m earlyrl_jax.data.tokenizer --input='corpus/*.jsonl' --format=jsonl \
      --vocab_size=8000 --output=tokenizer   # writes tokenizer.model / .vocab
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


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


class SentencePieceTokenizer:
  """A `tokenizer.model` file through the sentencepiece library."""

  def __init__(self, path: str):
    import sentencepiece as spm
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = int(self._sp.get_piece_size())
    pad = self._sp.pad_id()
    self.pad_id = pad if pad >= 0 else 0
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

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
    try:
      from tokenizers import Tokenizer as _Tok
    except ImportError as e:
      raise ImportError("HF tokenizers need the [hf] extra: pip install -e '.[hf]'") from e
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise FileNotFoundError(f"no tokenizer.json at {path}")
    self.path = path
    self._tok = _Tok.from_file(file)
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    self.chat_template: str | None = None
    cfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
    model_cfg = _read_json(os.path.join(directory, "config.json"))
    self.chat_template = cfg.get("chat_template")

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

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Formats chat messages with the model's Jinja chat template (instruct teachers)."""
    if not self.chat_template:
      raise ValueError(f"{self.path}: tokenizer_config.json has no chat_template")
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    return env.from_string(self.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=self._tok.id_to_token(self.bos_id) if self.bos_id is not None else "",
        eos_token=self._tok.id_to_token(self.eos_id) if self.eos_id is not None else "")

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


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
  with open(path, encoding="utf-8") as f:
    return json.load(f)


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


def iter_texts(source, kind: str, opts, limit: int | None = None) -> Iterable[str]:
  """Texts of a source in order, skipping bad records per `opts` (a ParseOptions)."""
  from earlyrl_jax.data.sources import parse_document
  n = len(source) if limit is None else min(limit, len(source))
  for i in range(n):
    text, _ = parse_document(source[i], kind, opts)
    if text is not None:
      yield text


def main(argv=None):
  import argparse
  from earlyrl_jax.data.sources import ParseOptions, make_source
  p = argparse.ArgumentParser(description="Train a SentencePiece model on a corpus.")
  p.add_argument("--input", required=True, help="comma-separated globs")
  p.add_argument("--format", default="jsonl", help="jsonl | text | parquet | arrayrecord")
  p.add_argument("--text_field", default="text")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", default="bpe")
  p.add_argument("--max_documents", type=int, default=None)
  p.add_argument("--output", required=True, help="output prefix (writes PREFIX.model)")
  args = p.parse_args(argv)
  src = make_source(args.format, args.input, text_field=args.text_field, field="--input")
  opts = ParseOptions(text_field=args.text_field, on_error="skip")
  path = train_sentencepiece(iter_texts(src, src.kind, opts, args.max_documents), args.output,
                             args.vocab_size, model_type=args.model_type)
  tok = SentencePieceTokenizer(path)
  print(f"wrote {path} (vocab {tok.vocab_size}) from {len(src)} records")


if __name__ == "__main__":
  main()
