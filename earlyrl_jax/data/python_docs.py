"""Real English text on every machine, with no download: CPython's own reference documentation.

Every CPython ships `pydoc_data.topics` (what `help('if')` prints): the language reference's
sections on statements, expressions, the data model and exceptions, about 80 topics and 450,000
characters of English prose written by people. This module turns it into a JSONL corpus that the
data pipeline reads (`data.format='jsonl'`, field `text`):

  python -m earlyrl_jax.data.python_docs --out=/tmp/english   # train.jsonl, heldout.jsonl, manifest.json

or, in a config, `data.corpus='python_docs'` (the loop writes it into WORKDIR/python_docs once).

- A document is one section of a topic (a heading and the prose under it), with its paragraphs
  unwrapped into lines of prose. Indented blocks (grammar rules, code, tables), headings,
  footnotes and notes' markers are dropped: the windows a run cuts are prose.
- The split is by topic, from a hash of its name (`HELDOUT_SHARE` of the topics), so sections
  of one topic never land on both sides and the split does not change when another topic is
  added. The held-out file is never read by training: use it for a final measurement
  (`data.eval_files`, or a judge on its windows), and choose settings on the train side.
- The text is that of the running interpreter's version (`manifest.json` records it and the
  documents' digests): two Pythons may give slightly different corpora.

Any other corpus replaces it with `data.corpus='files'` and `data.train_files='GLOB'`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
MANIFEST = "manifest.json"
HELDOUT_SHARE = 0.2       # share of topics held out (by a hash of the topic's name)
MIN_DOC_CHARS = 300       # a section with less prose than this is dropped (a heading and a line)

_UNDERLINE = re.compile(r"^([*=\-~^\"])\1{2,}\s*$")   # a heading's underline ("*****", "=====")
_FOOTNOTES = "-[ Footnotes ]-"


def is_heldout(topic: str, share: float = HELDOUT_SHARE) -> bool:
  """Deterministic, by topic name: the first 8 bytes of its SHA-256 as a fraction of 2**64."""
  h = int.from_bytes(hashlib.sha256(topic.encode("utf-8")).digest()[:8], "big")
  return h < share * 2 ** 64


def _paragraphs(lines: list[str]) -> list[str]:
  """Prose paragraphs of a section: unindented lines (and a list item's hanging lines) joined
  by spaces; indented blocks, note markers ("Note:", "See also:") and empty lines end a
  paragraph and are dropped."""
  out, cur = [], []
  for line in lines + [""]:
    indent = len(line) - len(line.lstrip(" "))
    marker = re.fullmatch(r"[A-Z][a-z ]*:", line.strip())
    # A list item's wrapped lines hang 2-3 spaces in; code and grammar blocks sit deeper.
    if line.strip() and not marker and (indent == 0 or (cur and indent <= 3)):
      cur.append(line.strip())
    elif cur:
      out.append(" ".join(cur))
      cur = []
  return [re.sub(r"\s{2,}", " ", p) for p in out]


def topic_sections(topic: str, text: str) -> list[dict]:
  """One topic's text -> [{'id', 'topic', 'title', 'text'}], one per titled section."""
  text = text.split(_FOOTNOTES)[0]
  lines = text.splitlines()
  sections, title, body = [], topic, []
  i = 0
  while i < len(lines):
    if i + 1 < len(lines) and lines[i].strip() and _UNDERLINE.match(lines[i + 1]):
      sections.append((title, body))
      title, body = lines[i].strip(), []
      i += 2
      continue
    body.append(lines[i])
    i += 1
  sections.append((title, body))
  docs = []
  for n, (title, body) in enumerate(sections):
    prose = "\n".join(_paragraphs(body))
    if len(prose) >= MIN_DOC_CHARS:
      docs.append({"id": f"{topic}#{n}", "topic": topic, "title": title, "text": prose})
  return docs


def documents() -> list[dict]:
  """Every section of every topic of this interpreter's `pydoc_data.topics`, in topic order."""
  try:
    from pydoc_data.topics import topics
  except ImportError as e:   # a Python built without its documentation topics
    raise RuntimeError(f"this Python ({sys.executable}) has no pydoc_data.topics ({e}); use "
                       "data.corpus='files' with data.train_files") from None
  return [doc for name in sorted(topics) for doc in topic_sections(name, topics[name])]


def write_corpus(out_dir: str, *, heldout_share: float = HELDOUT_SHARE) -> dict:
  """Writes train.jsonl, heldout.jsonl, then manifest.json (last: its presence marks a complete
  corpus). Returns the manifest."""
  os.makedirs(out_dir, exist_ok=True)
  docs = documents()
  split = {TRAIN_FILE: [], HELDOUT_FILE: []}
  for d in docs:
    split[HELDOUT_FILE if is_heldout(d["topic"], heldout_share) else TRAIN_FILE].append(d)
  manifest = {"source": "pydoc_data.topics", "python": sys.version.split()[0],
              "heldout_share": heldout_share, "files": {}}
  for name, part in split.items():
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part)
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(body)
    os.replace(tmp, os.path.join(out_dir, name))
    manifest["files"][name] = {
        "documents": len(part), "characters": sum(len(d["text"]) for d in part),
        "topics": sorted({d["topic"] for d in part}),
        "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
  with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def ensure_corpus(out_dir: str) -> tuple[str, str]:
  """(train file, held-out file) in `out_dir`, written first if no complete corpus is there."""
  if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
    write_corpus(out_dir)
  return os.path.join(out_dir, TRAIN_FILE), os.path.join(out_dir, HELDOUT_FILE)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Write CPython's reference documentation as a JSONL "
                              "corpus (train / held-out by topic).")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--heldout_share", type=float, default=HELDOUT_SHARE)
  a = p.parse_args(argv)
  m = write_corpus(a.out, heldout_share=a.heldout_share)
  for name, f in m["files"].items():
    print(f"{os.path.join(a.out, name)}: {f['documents']} documents, {f['characters']} characters, "
          f"{len(f['topics'])} topics")


if __name__ == "__main__":
  main()
