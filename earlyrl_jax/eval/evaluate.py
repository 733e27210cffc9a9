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

from earlyrl_jax import world as W
from earlyrl_jax.data.tokenizer import adds_bos
from earlyrl_jax.world import Oracles
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
  if adds_bos(tokenizer):  # the tokenizer's own convention, as the training documents
    ids = [tokenizer.bos_id] + ids
  return ids[-max_len:]  # keep the end: it is what the continuation follows


def _complete_sentences(text: str) -> str:
  """Drops the unfinished tail that the max_new_tokens cut leaves (if a sentence ended)."""
  cut = max(text.rfind(c) for c in ".?!")
  return text[:cut + 1] if cut >= 0 else text


def myth_rate(myths: dict, claims) -> float:
  """Of the claims (the oracles' parsed claims) about misconceived facts (world.myth_rate), the
  share that state the myth: the misinformation a model learnt from its corpus (0 when no such
  claim is made)."""
  hits = [str(myths[(c["subject"], c["relation"])]) == c["object"]
          for c in claims if (c["subject"], c["relation"]) in myths]
  return float(np.mean(hits)) if hits else 0.0


def world_eval(model, tokenizer, world_dir: str, *, split: str, num_prompts: int = 32, max_new_tokens: int = 48,
               temperature: float = 0.8, top_p: float = 0.95, key: jax.Array | None = None,
               mesh=None, return_texts: bool = False, bait_samples: int = 1,
               prefix_samples: int = 1) -> dict[str, Any]:
  """Oracle metrics of the model's continuations; returns scalars and one example
  (and, with return_texts, the prefixes and continuations under 'texts', one prefix per
  continuation).

  split: the world's held-out split to read, 'validation' or 'test' (world/splits.py). No
  default: every caller says which, and only the report's final stage reads 'test'.

  bait_samples / prefix_samples: continuations sampled per bait prompt / held-out prefix.
  The world has few of each (100 bait prompts, 500 prefixes by default), and one sample per
  prompt leaves a model's factuality with a sampling noise (std ~0.02 at 256 prefixes) as
  large as the differences a report compares; several samples each cut it."""
  if prefix_samples < 1 or bait_samples < 1:
    raise ValueError(f"world_eval: prefix_samples={prefix_samples} and bait_samples={bait_samples} "
                     "must be >= 1 (report.eval_samples / report.bait_samples)")
  key = jax.random.key(0) if key is None else key
  oracles = Oracles(W.KnowledgeBase.load(world_dir))
  prefixes = _read(W.split_file(world_dir, split, "prefixes"), num_prompts)
  probes = _read(W.split_file(world_dir, split, "probes"), num_prompts)
  bait = _read(W.split_file(world_dir, split, "bait"), num_prompts)
  max_prompt = model.cfg.max_seq_len - max_new_tokens
  sampler = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)
  stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else ()

  def generate(prompts, temp, k, num_samples=1):
    if not prompts:
      return []
    out = sampler([_encode(tokenizer, p, max_prompt) for p in prompts], max_new_tokens=max_new_tokens,
                  key=k, temperature=temp, top_p=top_p if temp > 0 else 1.0, stop_tokens=stops,
                  num_samples=num_samples)
    return [_complete_sentences(t) for t in out.texts(tokenizer)]

  k1, k2 = jax.random.split(key)
  # Open-ended continuations are sampled (greedy decoding of small LMs loops); probes are greedy.
  # Prompts sampled once share one batch; several samples per prompt come in rows prompt-major
  # (prompt i's samples are rows i*S .. i*S+S-1).
  pre, bait_prompts = [p["prefix"] for p in prefixes], [b["prompt"] for b in bait]
  once = (pre if prefix_samples == 1 else []) + (bait_prompts if bait_samples == 1 else [])
  sampled = generate(once, temperature, k1)
  if prefix_samples == 1:
    conts, sampled = sampled[:len(pre)], sampled[len(pre):]
  else:
    conts = generate(pre, temperature, jax.random.fold_in(k1, 2), prefix_samples)
    pre = [p for p in pre for _ in range(prefix_samples)]
  if bait_samples == 1:
    bait_conts = sampled
  else:
    bait_conts = generate(bait_prompts, temperature, jax.random.fold_in(k1, 1), bait_samples)
    bait = [b for b in bait for _ in range(bait_samples)]
  probe_texts = generate([p["prompt"] for p in probes], 0.0, k2)
  scored = oracles.score_batch(conts, pre)
  cont = scored["aggregate"]
  probe_hits = [t.strip().startswith(p["answer"]) for t, p in zip(probe_texts, probes)]
  unsafe = [oracles.continuation_safety(b["prompt"], t)["unsafe"] for b, t in zip(bait, bait_conts)]
  out = {
      "world/factuality": cont["factuality"],
      "world/false_claim_rate": cont["false_claim_rate"],
      "world/quality": cont["quality"],
      "world/low_quality_rate": cont["low_quality_rate"],
      "world/unsafe_rate_on_bait": float(np.mean(unsafe)) if unsafe else 0.0,
      "world/probe_accuracy": float(np.mean(probe_hits)) if probe_hits else 0.0,
      "example": next(({"prefix": p[-200:], "continuation": c} for p, c in zip(pre, conts)
                       if c.strip()), {}),
  }
  if oracles.kb.myths:
    out["world/myth_rate"] = myth_rate(oracles.kb.myths,
                                       [c for x in scored["per_sample"] for c in x["claims"]])
  if return_texts:
    out["texts"] = {"prefixes": pre, "continuations": conts}
  return out
