"""Text helpers every prompt family shares: sentences, clipping, character budgets.

No markup and no quoting here (each family quotes untrusted text its own way): only how a
text is cut into sentences and clipped to a budget, so that every family, the editor and the
judges agree on what a sentence is.
"""
from __future__ import annotations

import dataclasses
import re


def _sentences(text: str) -> list[str]:
  return [s for s in re.split(r"(?<=[.?!:])(\s+)", text)]


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n\s*")


def split_sentences(text: str) -> list[str]:
  """Sentences with their trailing whitespace: ''.join(result) == text, so keeping every piece
  reproduces the text exactly (the editor's copy). A break follows . ? ! or a newline.
  Blank text has no sentences."""
  if not text.strip():
    return []
  pieces, start = [], 0
  for m in _SENTENCE_END.finditer(text):
    if m.end() > start and text[start:m.start()].strip():
      pieces.append(text[start:m.end()])
      start = m.end()
  if start < len(text):
    if pieces and not text[start:].strip():
      pieces[-1] += text[start:]
    else:
      pieces.append(text[start:])
  return pieces


def clip_start(text: str, max_chars: int) -> str:
  """Keeps whole leading sentences up to max_chars (the first sentence is cut if it alone is longer)."""
  if len(text) <= max_chars:
    return text
  out = ""
  for piece in _sentences(text):
    if len(out) + len(piece) > max_chars:
      break
    out += piece
  return out.rstrip() if out.strip() else text[:max_chars]


def clip_prefix(text: str, max_chars: int) -> str:
  """Keeps the first sentence (the topic) and as much of the end as fits: 'first ... last'."""
  if len(text) <= max_chars:
    return text
  parts = re.split(r"(?<=[.?!:])\s+", text)
  first = parts[0][:max_chars // 2]
  room = max_chars - len(first) - 5
  tail = ""
  for s in reversed(parts[1:]):
    if len(tail) + len(s) + 1 > room:
      break
    tail = s + (" " + tail if tail else "")
  if not tail:
    tail = text[-max(0, room):]
  return f"{first} ... {tail}"


@dataclasses.dataclass(frozen=True)
class PromptLimits:
  """Character budgets of quoted text (the teacher's max_seq_len bounds their sum)."""
  prefix_chars: int = 200
  candidate_chars: int = 320
  reference_chars: int = 320


DEFAULT_LIMITS = PromptLimits()


SENTENCE_ENDS = (".", "?", "!")


def trim_to_sentence_end(text: str) -> str:
  """The text up to its last sentence end (generation stops mid-sentence at a token limit)."""
  cut = max(text.rfind(end) for end in SENTENCE_ENDS)
  return text[:cut + 1].strip() if cut > 0 else text.strip()


def is_unfinished(sentence: str) -> bool:
  return not sentence.rstrip().endswith(SENTENCE_ENDS)
