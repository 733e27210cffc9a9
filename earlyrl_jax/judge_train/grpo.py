"""GRPO with the 0/1 agreement reward (the paper's judge training): per prompt, n verdicts
sampled in the generative format through the compiled sampler, reward 1 when the parsed final
'Answer: ...' matches the label, else 0 (an unparsable reply earns 0), group-normalised
advantages (`rewriter.group_advantages`), and a REINFORCE loss on the sampled tokens (one update
per batch of rollouts: the PPO ratio is 1, clipping would be inert).

Each step's prompts (`batch_order`) and sampling seed are functions of the step, and the samples
come from the params the step starts from: a killed run resumes with the batches it would have
drawn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from earlyrl_jax.judge_train import examples as E
from earlyrl_jax.teacher.backends.base import prompt_ids
from earlyrl_jax.teacher.prompts.paper import parse_answer
from earlyrl_jax.teacher.rewriter import group_advantages
from earlyrl_jax.train import losses


def agreement_reward(reply: str | None, ex: E.Example) -> float:
  """1.0 when the reply's last 'Answer: ...' is the label's option, else 0.0 (none, or another)."""
  v = parse_answer(reply, ex.fmt)
  return float(v is not None and abs(v - ex.value) < 1e-9)


def pg_terms(model, batch, frozen=None):
  """{'pg': (-Σ advantage · log π(sampled token), sampled tokens)}; the mean log-prob of the
  samples as a diagnostic. Chunked log-probs: no [B, T, V] buffer."""
  del frozen
  _, _, logp = losses.sequence_logprobs(model, batch)
  mask = batch["loss_mask"].astype(jnp.float32)
  tokens = jnp.sum(mask)
  pg = -jnp.sum(batch["advantages"][:, None] * logp * mask)
  return {"pg": (pg, tokens)}, {"grpo/sample_logp": (jnp.sum(logp * mask), tokens)}


class GrpoBatches:
  """`Job.next_batch`: `batch_size` prompts x `samples_per_prompt` sampled verdicts per step."""

  def __init__(self, backend, prompts, examples: list, *, batch_size: int, samples_per_prompt: int,
               steps: int, seed: int, max_new_tokens: int, temperature: float, top_p: float):
    if not examples:
      raise ValueError("judge_train: no labelled (non-tie) example on the asked axes to train on")
    self.backend, self.examples = backend, examples
    tok = backend.tokenizer
    self.ids = [prompt_ids(tok, ex.prompt(prompts, "generative")) for ex in examples]
    self.G, self.K = int(batch_size), int(samples_per_prompt)
    self.max_new, self.temperature, self.top_p = int(max_new_tokens), float(temperature), float(top_p)
    self.length = E.round_up(max(map(len, self.ids)) + self.max_new + 1)
    self.order = E.batch_order(len(examples), self.G, steps, seed)
    self.seed = int(seed)
    self.eos = getattr(tok, "eos_id", None)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    R, L = self.G * self.K, self.length
    spec = {k: jax.ShapeDtypeStruct((R, L), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
    spec["loss_mask"] = jax.ShapeDtypeStruct((R, L), np.float32)
    spec["advantages"] = jax.ShapeDtypeStruct((R,), np.float32)
    return spec

  def sample(self, params, idx, seed: int):
    """(per prompt: its K samples {'text', 'tokens', 'finish_reason'}, rewards [G, K])."""
    self.backend.params = params
    res = self.backend.generate_ids([self.ids[i] for i in idx], max_new_tokens=self.max_new,
                                    temperature=self.temperature, top_p=self.top_p, n=self.K,
                                    seed=seed)
    rewards = np.array([[agreement_reward(s["text"], self.examples[i]) for s in samples]
                        for i, samples in zip(idx, res)], np.float64)
    return res, rewards

  def __call__(self, state, step: int):
    idx = [int(i) for i in self.order[step]]
    res, rewards = self.sample(state.params, idx, self.seed * 1_000_003 + step)
    adv = group_advantages(rewards).reshape(-1)
    seqs = []
    for i, samples in zip(idx, res):
      for s in samples:
        gen = list(s["tokens"]) + ([self.eos] if s["finish_reason"] == "stop" and self.eos is not None else [])
        seqs.append((self.ids[i] + gen, len(self.ids[i])))
    rows = E.rows_of(seqs, self.length)
    rows["advantages"] = adv.astype(np.float32)
    parsed = np.mean([parse_answer(s["text"], self.examples[i].fmt) is not None
                      for i, samples in zip(idx, res) for s in samples])
    return rows, {"grpo/reward": float(rewards.mean()), "grpo/parsed": float(parsed),
                  "grpo/groups_with_signal": float(np.mean(rewards.std(axis=1) > 0))}
