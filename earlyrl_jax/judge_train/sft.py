"""SFT on the verdict: the NLL of the label's answer after the judge's own prompt.

'logprob' variant: the prompt ends with the forced lead 'Answer:' and the loss is the NLL of the
option's tokens (' Option 1', ' YES', ' Definite', ...) over the FULL vocabulary. The log-prob
judge reads the options renormalised among themselves (judges/logprob.py); raising the right
option's absolute probability raises its share among the options too, and the full-vocabulary
loss also keeps the model's mass on the options (a judge whose options hold 1% of the mass
reads its verdict from noise). 'generative' variant: the reply 'Answer: <option>' then EOS
after the generative prompt: the format the GRPO stage then samples and rewards.

Batches are a function of the step (`batch_order`), so a killed run resumes with the very
batches it would have drawn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from earlyrl_jax.judge_train import examples as E
from earlyrl_jax.train import losses


def verdict_nll_terms(model, batch, frozen=None):
  """{'nll': (Σ -log p(answer tokens), answer tokens)}; the per-row answer log-prob as a
  diagnostic. Log-probs come from the chunked scorer: no [B, T, V] logits buffer."""
  del frozen
  row_lp, row_n, _ = losses.sequence_logprobs(model, batch)
  tokens = jnp.sum(row_n)
  rows = jnp.sum((row_n > 0).astype(jnp.float32))
  return {"nll": (-jnp.sum(row_lp), tokens)}, {"verdict/answer_logp": (jnp.sum(row_lp), rows)}


class SftBatches:
  """`Job.next_batch`: rows of the examples `order[step]` names (all tokenized up front)."""

  def __init__(self, tokenizer, prompts, examples: list, *, variant: str, batch_size: int, steps: int,
               seed: int):
    if not examples:
      raise ValueError("judge_train: no labelled (non-tie) example on the asked axes to train on")
    self.seqs = [E.sft_ids(tokenizer, ex.prompt(prompts, variant), ex, variant) for ex in examples]
    self.length = E.round_up(max(len(ids) for ids, _ in self.seqs))
    self.batch_size = int(batch_size)
    self.order = E.batch_order(len(self.seqs), self.batch_size, steps, seed)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    B, L = self.batch_size, self.length
    spec = {k: jax.ShapeDtypeStruct((B, L), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
    spec["loss_mask"] = jax.ShapeDtypeStruct((B, L), np.float32)
    return spec

  def __call__(self, state, step: int):
    del state
    idx = self.order[step]
    return E.rows_of([self.seqs[i] for i in idx], self.length), {}
