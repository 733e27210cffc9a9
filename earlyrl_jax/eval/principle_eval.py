"""The principle's evaluation: how often a policy mentions the banned entity, with and without
the principle in its prompt (docs/principles.md).

Prompts: from the held-out documents of one split of the world (world/splits.py), every cut
right before a sentence that mentions a banned name (after at least one sentence): the document
itself went on to mention it, so a model of the corpus is invited to. Each prompt is continued
`samples` times (sampled, like world_eval's continuations), twice over: as it is, and preceded
by the principle line ('Do not mention X; discuss Y instead.', kept whole: `with_prompt_ids`).

  principle/mention_rate           share of continuations that mention a banned name (exact:
                                   world.Oracles.mentions), without the principle in the prompt
  principle/mention_rate_prompted  the same with the principle line before the prompt
  principle/instead_rate(_prompted) share that mention the alternative Y
"""
from __future__ import annotations

import json
import re
from typing import Any

import jax
import numpy as np

from earlyrl_jax import world as W
from earlyrl_jax.data.tokenizer import adds_bos
from earlyrl_jax.eval.evaluate import _complete_sentences   # the same cut as world_eval's
from earlyrl_jax.sampling.sampler import Sampler
from earlyrl_jax.teacher.principles import Principle, with_prompt_ids

_SENTENCE_START = re.compile(r"(?<=[.?!:])\s+")


def principle_prompts(world_dir: str, split: str, principle: Principle, limit: int) -> list[str]:
  """Up to `limit` prefixes of the split's documents, each cut right before a sentence that
  mentions a banned name (its own text, without trailing whitespace); in file order, no repeats."""
  oracles = W.Oracles.from_dir(world_dir)
  out: list[str] = []
  with open(W.split_file(world_dir, split, "docs"), encoding="utf-8") as f:
    for line in f:
      text = json.loads(line)["text"]
      starts = [m.end() for m in _SENTENCE_START.finditer(text)]
      for a, b in zip(starts, starts[1:] + [len(text)]):
        if oracles.mentions(text[a:b], principle.banned):
          prefix = text[:a].rstrip()
          if prefix and prefix not in out:
            out.append(prefix)
          if len(out) >= limit:
            return out
  return out


def mention_eval(model, tokenizer, world_dir: str, principle: Principle, *, split: str,
                 num_prompts: int = 64, samples: int = 4, max_new_tokens: int = 48,
                 temperature: float = 0.8, top_p: float = 0.95, key=None, mesh=None,
                 return_texts: bool = False) -> dict[str, Any]:
  """The mention rates of the module docstring for one model (both prompt forms share the key,
  so the difference is the principle line's)."""
  oracles = W.Oracles.from_dir(world_dir)
  prompts = principle_prompts(world_dir, split, principle, num_prompts)
  key = jax.random.key(0) if key is None else key
  if not prompts:
    raise ValueError(f"principle: no {split} document of {world_dir} mentions {list(principle.banned)}; "
                     "choose an entity the world's documents mention (principle.banned)")
  max_prompt = model.cfg.max_seq_len - max_new_tokens
  sampler = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)
  stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else ()
  bos = [tokenizer.bos_id] if adds_bos(tokenizer) else []
  line = np.asarray(tokenizer.encode(principle.prompt_line()), np.int32)
  out: dict[str, Any] = {"principle/prompts": len(prompts), "principle/samples": samples}
  texts = {}
  for name, prompted in (("", False), ("_prompted", True)):
    ids = []
    for p in prompts:
      x = np.asarray(bos + tokenizer.encode(p), np.int32)
      x = (with_prompt_ids(x, line, max_prompt, tokenizer.bos_id) if prompted else x[-max_prompt:])
      ids.append(x.tolist())
    got = sampler(ids, max_new_tokens=max_new_tokens, key=key, temperature=temperature,
                  top_p=top_p if temperature > 0 else 1.0, stop_tokens=stops, num_samples=samples)
    conts = [_complete_sentences(t) for t in got.texts(tokenizer)]
    out[f"principle/mention_rate{name}"] = oracles.mention_rate(conts, principle.banned)
    out[f"principle/instead_rate{name}"] = oracles.mention_rate(conts, [principle.instead])
    texts[name or "plain"] = conts
  if return_texts:
    out["texts"] = {"prompts": prompts, **texts}
  return out
