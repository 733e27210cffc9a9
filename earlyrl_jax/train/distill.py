"""Distillation for consolidation (`sip.distill_coef`): the `distill` loss term of the one step.

Token level (`sip.distill_level='token'`): Σ_t KL(q_teacher(·|ctx_t) || π(·|ctx_t)) over the
candidate tokens the term reads (`sip.distill_on`: the chosen candidate, or every candidate of
the row), per token. ctx_t is the policy's own context (prefix + candidate so far), which the
teacher reads too: this needs one vocabulary (`check_same_vocabulary`). No pass of the pipeline
already covers that context with the teacher (its judge reads prompt-formatted text), so the
teacher makes one forward pass over the row per batch, outside the gradient, like the
reference policy (`teacher_topk`). It keeps the teacher's top-k log-probs per position
(`sip.distill_top_k`, 0 = the whole vocabulary) and the KL is taken on the coarsened
distributions {top-k ids, everything else}: exact at k = V, a lower bound of the full KL
otherwise (coarsening never increases a KL).

Sequence level (`'sequence'`, any two tokenizers): the NLL of the teacher's rewrite given the
prefix (Kim & Rush 2016's sequence-level distillation: train on the teacher's output), in its
own branch of the row. `'auto'` takes the token level when the vocabularies match, else this.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = ("auto", "token", "sequence")
ON = ("chosen", "candidates")
DEFAULT_CHUNK = 128


def vocabulary_mismatch(policy_tok, policy_vocab: int, teacher_tok, teacher_vocab: int) -> str | None:
  """None when the policy and the teacher share one vocabulary (model sizes and every piece),
  else what differs."""
  if policy_vocab != teacher_vocab:
    return f"model.vocab_size={policy_vocab} but the teacher's model has {teacher_vocab}"
  if policy_tok.vocab_size != teacher_tok.vocab_size:
    return (f"the policy's tokenizer has {policy_tok.vocab_size} pieces, the teacher's "
            f"{teacher_tok.vocab_size}")
  for i in range(policy_tok.vocab_size):
    if policy_tok.decode([i]) != teacher_tok.decode([i]):
      return f"token id {i} is {policy_tok.decode([i])!r} to the policy, {teacher_tok.decode([i])!r} to the teacher"
  return None


def check_same_vocabulary(policy_tok, policy_vocab: int, teacher_tok, teacher_vocab: int) -> None:
  """Raises the one-line error of token-level distillation across vocabularies."""
  why = vocabulary_mismatch(policy_tok, policy_vocab, teacher_tok, teacher_vocab)
  if why:
    raise ValueError(f"sip.distill_level='token' needs the teacher's vocabulary (data.tokenizer / "
                     f"teacher.path): {why}; use sip.distill_level='sequence' (NLL on the teacher's "
                     "rewrite) or 'auto'")


def _map_positions(fn, h_BxTxD, extras, chunk: int):
  """fn(h [B, c, D], *extras [B, c, ...]) -> [B, c], one sequence chunk at a time (remat)."""
  B, T, D = h_BxTxD.shape
  c = max(1, min(chunk, T))
  n = -(-T // c)
  pad = n * c - T

  def split(x):
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, n, c) + x.shape[2:]), 1, 0)

  out = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), (split(h_BxTxD),) + tuple(split(e) for e in extras))
  return jnp.moveaxis(out, 0, 1).reshape(B, n * c)[:, :T]


def teacher_topk(model, batch, length: int, k: int, chunk: int = DEFAULT_CHUNK):
  """The teacher's top-k (log-prob [G, T, k] f32, ids [G, T, k] i32) at each of the row's first
  `length` positions (k = 0 or >= V: the whole vocabulary, sorted)."""
  cut = {f: batch[f][:, :length] for f in ("tokens", "positions", "segment_ids", "visible_until")}
  h, _ = model.hidden_states(cut["tokens"], positions=cut["positions"], segment_ids=cut["segment_ids"],
                             visible_until=cut["visible_until"])
  V = int(model.cfg.vocab_size)
  kk = int(k) if 0 < k < V else V
  B, T, _ = h.shape
  c = max(1, min(chunk, T))
  n = -(-T // c)
  hp = jnp.pad(h, ((0, 0), (0, n * c - T), (0, 0)))
  hs = jnp.moveaxis(hp.reshape(B, n, c, -1), 1, 0)

  def body(h_BxCxD):
    logp = jax.nn.log_softmax(model.logits_from_hidden(h_BxCxD).astype(jnp.float32), axis=-1)
    vals, ids = jax.lax.top_k(logp, kk)
    return vals, ids.astype(jnp.int32)

  vals, ids = jax.lax.map(body, hs)
  unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape(B, n * c, kk)[:, :T]
  return unchunk(vals), unchunk(ids)


def topk_kl(logq_k, logp_k):
  """KL(q || p) [...] over {the k ids, the rest}: logq_k, logp_k [..., k] (log-probs of the same
  ids under the teacher q and the policy p)."""
  q = jnp.exp(logq_k)
  q_rest = jnp.clip(1.0 - jnp.sum(q, axis=-1), 0.0, 1.0)
  p_rest = jnp.clip(1.0 - jnp.sum(jnp.exp(logp_k), axis=-1), 1e-12, 1.0)
  head = jnp.sum(q * (logq_k - logp_k), axis=-1)
  on = q_rest > 1e-6
  safe_q = jnp.where(on, q_rest, 1.0)
  tail = jnp.where(on, safe_q * (jnp.log(safe_q) - jnp.log(p_rest)), 0.0)
  return head + tail


def token_kl(model, h_BxTxD, teacher_logp_BxTxK, teacher_ids_BxTxK, chunk: int = DEFAULT_CHUNK):
  """KL(teacher || policy) per position [B, T] from the policy's final hidden states (T: the
  teacher's columns), one chunk of logits at a time (differentiable)."""
  T = teacher_ids_BxTxK.shape[1]

  def fn(h, logq, ids):
    logp = jax.nn.log_softmax(model.logits_from_hidden(h).astype(jnp.float32), axis=-1)
    return topk_kl(logq.astype(jnp.float32), jnp.take_along_axis(logp, ids, axis=-1))

  return _map_positions(fn, h_BxTxD[:, :T], (teacher_logp_BxTxK, teacher_ids_BxTxK), chunk)
