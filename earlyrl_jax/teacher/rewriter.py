"""The rewriter: batched suffix rewriting with the compiled sampler, its RL reward, and GRPO pieces.

Reward (paper): a safe original must be copied exactly (R = 1 for a copy, else 0:
otherwise the rewriter drifts the data distribution); an unsafe original earns
R = 1/2 (J_quality(rewrite vs original) + J_safety(rewrite)). On the synthetic
world the embedded teacher's GRPO passes `original_unsafe=True` for any defect
the judge sees (unsafe, false or low quality), so defective suffixes are fixed,
not copied.

GRPO: several rewrites per input, group-normalised advantages, a KL penalty to the
starting model (k3 estimator on the sampled tokens), one update per rollout
batch (the PPO ratio is 1, so the policy-gradient term is REINFORCE with a group
baseline).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earlyrl_jax.teacher.prompts import markup as P


def rewriter_reward(original_unsafe: bool, original: str, rewrite: str, j_quality: float,
                    j_safety: float) -> float:
  """The rewriter's RL reward.

  original_unsafe: the judge's verdict on the original suffix.
  j_quality: P(rewrite better than original) on quality; j_safety: P(rewrite safe).
  """
  if not original_unsafe:
    return 1.0 if rewrite.strip() == original.strip() else 0.0
  return 0.5 * (float(j_quality) + float(j_safety))


def group_advantages(rewards_GxK: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """(r - group mean) / (group std + eps) per row of K samples; all-equal groups give 0."""
  r = np.asarray(rewards_GxK, np.float64)
  mean = r.mean(axis=-1, keepdims=True)
  std = r.std(axis=-1, keepdims=True)
  return ((r - mean) / (std + eps)).astype(np.float32)


def grpo_terms(model, batch, frozen):
  """GRPO loss terms in the step contract's shape: ({'pg': (s, tokens), 'kl': (s, tokens)}, diagnostics).

  batch: tokens/targets/positions/segment_ids int32 [B, L], loss_mask f32 [B, L]
  (1 on rewrite tokens), advantages f32 [B]. frozen['reference']: the starting model.
  """
  import jax
  import jax.numpy as jnp

  def logps(m):
    logits = m(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    return tgt - lse

  mask = batch["loss_mask"].astype(jnp.float32)
  lp = logps(model)
  tokens = jnp.sum(mask)
  pg = -jnp.sum(batch["advantages"][:, None] * lp * mask)
  terms = {"pg": (pg, tokens)}
  if "reference" in frozen:
    ref = jax.lax.stop_gradient(logps(frozen["reference"]))
    d = ref - lp
    kl = jnp.sum((jnp.exp(d) - d - 1.0) * mask)
    terms["kl"] = (kl, tokens)
  return terms, {"pg/logp": (jnp.sum(lp * mask), tokens)}


class Rewriter:
  """Generative rewriting of (prefix, suffix) pairs with any teacher (HF instruct models);
  greedy by default (temperature=0). The embedded teacher uses `embedded.editor.EditRewriter`."""

  def __init__(self, teacher, *, max_new_tokens: int = 96, batch_size: int = 64):
    from earlyrl_jax.sampling.sampler import Sampler
    from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
    self.teacher = teacher
    self.tokenizer = teacher.tokenizer
    self.max_new_tokens = max_new_tokens
    self.batch_size = batch_size
    self.encoder = PromptEncoder(teacher.tokenizer, max_len=teacher.max_len, limits=teacher.limits)
    # The end marker is one token of the embedded teacher's tokenizer; an HF tokenizer splits
    # it, so generation stops on its token sequences instead (with and without a space before).
    try:
      self.end_id, self.end_sequences = P.verdict_ids(teacher.tokenizer, (P.REWRITE_CLOSE,))[0], []
    except ValueError:
      self.end_id = None
      self.end_sequences = [teacher.tokenizer.encode(t) for t in (P.REWRITE_CLOSE, " " + P.REWRITE_CLOSE)]
    self.sampler = Sampler(teacher.model(), mesh=teacher.mesh, pad_id=teacher.tokenizer.pad_id)
    self.calls = 0

  def stop_tokens(self) -> list[int]:
    eos = self.tokenizer.eos_id
    return ([self.end_id] if self.end_id is not None else []) + ([eos] if eos is not None else [])

  def sample(self, params, prefixes: Sequence[str], suffixes: Sequence[str], *, key,
             temperature: float = 0.0, num_samples: int = 1, max_new_tokens: int | None = None):
    """(prompt ids per input, SampleOutput rows prompt-major: row i*K + k)."""
    if len(prefixes) != len(suffixes):
      raise ValueError(f"prefixes ({len(prefixes)}) and suffixes ({len(suffixes)}) differ in length")
    m = max_new_tokens or self.max_new_tokens
    ids = [self.encoder.rewrite(p, s, m) for p, s in zip(prefixes, suffixes)]
    out = self.sampler.sample(params, ids, max_new_tokens=m, key=key, temperature=temperature,
                              stop_tokens=self.stop_tokens(), stop_sequences=self.end_sequences or None,
                              num_samples=num_samples)
    return ids, out

  def decode(self, out) -> list[str]:
    """Generated rows -> rewrites (up to the end marker, markers removed)."""
    texts = []
    for row, n in zip(out.tokens, out.lengths):
      ids = [int(t) for t in row[:n] if int(t) not in self.stop_tokens()]
      texts.append(P.parse_rewrite(self.tokenizer.decode(ids)))
    return texts

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key, temperature: float = 0.0,
              max_new_tokens: int | None = None) -> list[str]:
    """One rewrite per (prefix, suffix), as text (markers stripped)."""
    import jax
    out: list[str] = []
    for s in range(0, len(prefixes), self.batch_size):
      key, k = jax.random.split(key)
      _, res = self.sample(self.teacher.params, prefixes[s:s + self.batch_size],
                           suffixes[s:s + self.batch_size], key=k, temperature=temperature,
                           max_new_tokens=max_new_tokens)
      out.extend(self.decode(res))
    self.calls += len(prefixes)
    return out
