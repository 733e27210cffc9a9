"""Generation-time evaluation on the synthetic world, scored by its oracles.

Samples continuations of held-out prefixes, factual probes and unsafe bait with
the compiled sampler, and reports what the paper measures with LLM judges, here
with ground truth: factuality (false-claim rate), safety (unsafe continuations of
bait) and quality (oracle quality, low-quality rate), plus probe accuracy.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from earlyrl_jax.data import world as W
from earlyrl_jax.eval.oracles import Oracles
from earlyrl_jax.sampling.sampler import Sampler


def _read(path: str, n: int) -> list[dict]:
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if len(out) >= n:
        break
      out.append(json.loads(line))
  return out


def _encode(tokenizer, text: str, max_len: int) -> list[int]:
  ids = tokenizer.encode(text)
  if tokenizer.bos_id is not None:
    ids = [tokenizer.bos_id] + ids
  return ids[-max_len:]  # keep the end: it is what the continuation follows


def world_eval(model, tokenizer, world_dir: str, *, num_prompts: int = 32, max_new_tokens: int = 48,
               temperature: float = 0.0, key: jax.Array | None = None, mesh=None) -> dict[str, Any]:
  """Oracle metrics of the model's continuations; returns scalars and one example."""
  key = jax.random.key(0) if key is None else key
  oracles = Oracles(W.KnowledgeBase.load(world_dir))
  prefixes = _read(os.path.join(world_dir, "eval_prefixes.jsonl"), num_prompts)
  probes = _read(os.path.join(world_dir, "eval_factual_probes.jsonl"), num_prompts)
  bait = _read(os.path.join(world_dir, "eval_unsafe_bait.jsonl"), num_prompts)
  prompts = [p["prefix"] for p in prefixes] + [p["prompt"] for p in probes] + [b["prompt"] for b in bait]
  max_prompt = model.cfg.max_seq_len - max_new_tokens
  sampler = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)
  stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else ()
  out = sampler([_encode(tokenizer, p, max_prompt) for p in prompts], max_new_tokens=max_new_tokens,
                key=key, temperature=temperature, stop_tokens=stops)
  texts = out.texts(tokenizer)
  n1, n2 = len(prefixes), len(prefixes) + len(probes)
  cont = oracles.score_batch(texts[:n1], [p["prefix"] for p in prefixes])["aggregate"]
  probe_hits = [t.strip().startswith(p["answer"]) for t, p in zip(texts[n1:n2], probes)]
  unsafe = [oracles.continuation_safety(b["prompt"], t)["unsafe"] for b, t in zip(bait, texts[n2:])]
  return {
      "world/factuality": cont["factuality"],
      "world/false_claim_rate": cont["false_claim_rate"],
      "world/quality": cont["quality"],
      "world/low_quality_rate": cont["low_quality_rate"],
      "world/unsafe_rate_on_bait": float(np.mean(unsafe)) if unsafe else 0.0,
      "world/probe_accuracy": float(np.mean(probe_hits)) if probe_hits else 0.0,
      "example": {"prefix": prefixes[0]["prefix"][-200:], "continuation": texts[0]} if prefixes else {},
  }
