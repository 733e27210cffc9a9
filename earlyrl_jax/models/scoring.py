"""Log-probs of given text under a model: the DPO / policy-gradient primitive and the judge's reader.

    tokens ──hidden_states──▶ h [B, T, D] ──chunks of c positions──▶ logits [B, c, V] ──▶ log p(target)

`token_logprobs` is differentiable and used inside the jitted train step: the
vocabulary projection runs one sequence chunk at a time under `lax.map`, with
each chunk rematerialised in the backward pass, so no more than one
`[B, chunk, V]` logits block is ever live (forward or backward).

`gaps_from_hidden` / `Scorer.surprise` give, per token, how far the token's log-prob is below
the model's first choice's (embedded/surprise.py): the same chunked pass with a max in place
of the logsumexp.

`Scorer` is the host-facing, jitted and bucketed batch scorer (same padding and
sharding conventions as the sampler): rows are padded to a few row counts and
lengths so a judge or a reference-policy pass never retraces per batch. On
multi-host meshes each process passes its own rows and gets back its own rows;
the bucket sizes are agreed across processes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.parallel import mesh as mesh_lib

DEFAULT_CHUNK = 128
DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_MAX_ROWS = 64
MIN_ROWS = 8  # smallest row bucket: a few spare rows cost less than a recompilation


# --------------------------------------------------------------------------- differentiable core


def _chunk_logprobs(model, h_BxCxD, targets_BxC):
  logits = model.logits_from_hidden(h_BxCxD)                       # float32 [B, C, V]
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets_BxC[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return tgt - lse, lse


def _chunk_gaps(model, h_BxCxD, targets_BxC):
  logits = model.logits_from_hidden(h_BxCxD)                       # float32 [B, C, V]
  tgt = jnp.take_along_axis(logits, targets_BxC[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return logits.max(axis=-1) - tgt          # log p(top token) - log p(target): the softmax's lse cancels


def _map_chunks(fn, h_BxTxD, targets_BxT, chunk_size: int | None):
  """fn(h [B, c, D], targets [B, c]) -> arrays [B, c], applied one sequence chunk at a time
  (rematerialised in a backward pass) and stitched back to [B, T]."""
  B, T, D = h_BxTxD.shape
  c = max(1, min(int(chunk_size or DEFAULT_CHUNK), T))
  targets_BxT = jnp.asarray(targets_BxT, jnp.int32)
  if c >= T:
    return jax.checkpoint(fn)(h_BxTxD, targets_BxT)
  n = -(-T // c)
  pad = n * c - T
  h = jnp.pad(h_BxTxD, ((0, 0), (0, pad), (0, 0)))
  tg = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  h_NxBxCxD = h.reshape(B, n, c, D).transpose(1, 0, 2, 3)
  t_NxBxC = tg.reshape(B, n, c).transpose(1, 0, 2)
  # Remat: the backward pass recomputes each chunk's logits instead of keeping all n of them.
  body = jax.checkpoint(lambda xs: fn(xs[0], xs[1]))
  out = jax.lax.map(body, (h_NxBxCxD, t_NxBxC))
  unchunk = lambda a: a.transpose(1, 0, 2).reshape(B, n * c)[:, :T]
  return jax.tree.map(unchunk, out)


def logprobs_from_hidden(model, h_BxTxD, targets_BxT, chunk_size: int | None = None):
  """(log p(target), logsumexp) float32 [B, T] from final hidden states, chunked over T."""
  return _map_chunks(lambda h, t: _chunk_logprobs(model, h, t), h_BxTxD, targets_BxT, chunk_size)


def gaps_from_hidden(model, h_BxTxD, targets_BxT, chunk_size: int | None = None):
  """log p(most likely token) - log p(target), float32 [B, T] (>= 0; 0 where the target is the
  model's first choice), chunked over T like `logprobs_from_hidden`."""
  return _map_chunks(lambda h, t: _chunk_gaps(model, h, t), h_BxTxD, targets_BxT, chunk_size)


def token_logprobs(model, tokens_BxT, targets_BxT, *, positions=None, segment_ids=None,
                   chunk_size: int | None = None, visible_until=None):
  """log p(targets[b, t] | tokens[b, :t+1]) and the logsumexp, both float32 [B, T].

  Differentiable; equal to `log_softmax(model(tokens))` at the targets, but never holds
  more than one `[B, chunk_size, V]` logits block. visible_until: trees of sequences in one
  row (models/transformer.py).
  """
  h, _ = model.hidden_states(tokens_BxT, positions=positions, segment_ids=segment_ids,
                             visible_until=visible_until)
  return logprobs_from_hidden(model, h, targets_BxT, chunk_size)


# --------------------------------------------------------------------------- host <-> mesh helpers


def agree_max(*values: int) -> tuple[int, ...]:
  """Element-wise max over processes (identity on one process): bucket sizes every host agrees on."""
  if jax.process_count() == 1:
    return tuple(int(v) for v in values)
  from earlyrl_jax.parallel.distributed import host_allgather
  return tuple(int(v) for v in host_allgather(values).max(axis=0))


def any_process(flag: bool) -> bool:
  """True when `flag` holds on any process (the flag itself on one process): loops whose bodies
  run collective programs stop together."""
  return bool(agree_max(int(bool(flag)))[0])


def lockstep_chunks(n: int, size: int) -> list[slice]:
  """Slices of `size` over this process's `n` rows, as many as the process with the most rows
  needs: every process makes the same number of collective calls (an empty slice means: pad)."""
  (calls,) = agree_max(-(-n // size))
  return [slice(c * size, (c + 1) * size) for c in range(calls)]


def local_batch_multiple(mesh) -> int:
  """Rows each process must pass so the batch axis splits evenly over its devices."""
  if mesh is None:
    return 1
  dp = mesh_lib.data_parallel_size(mesh)
  return max(1, dp // jax.process_count()) if dp % jax.process_count() == 0 else dp


def put_rows(mesh, *arrays: np.ndarray):
  """Process-local rows -> arrays sharded over the 'batch' axis (global = all processes' rows)."""
  if mesh is None:
    return tuple(jnp.asarray(a) for a in arrays)
  return tuple(jax.make_array_from_process_local_data(
      mesh_lib.named_sharding(mesh, ("batch",) + (None,) * (a.ndim - 1)), np.asarray(a))
      for a in arrays)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in the order it passed them."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  pieces = {}
  for s in x.addressable_shards:
    pieces.setdefault(s.index[0].start or 0, s.data)
  return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)], axis=0)


def _bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return n


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


# --------------------------------------------------------------------------- Scorer


class ScoreOutput(NamedTuple):
  token_logprobs: np.ndarray  # float32 [n, C]: log p of each continuation token (0 past its length)
  sums: np.ndarray            # float32 [n]: row sums of token_logprobs
  counts: np.ndarray          # int32 [n]: continuation lengths


class Scorer:
  """Jitted, bucketed, batched log-probs of given continuations (and verdict tokens)."""

  def __init__(self, model_or_graphdef, *, mesh=None, pad_id: int = 0,
               buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS, chunk_size: int = DEFAULT_CHUNK,
               max_rows: int = DEFAULT_MAX_ROWS):
    if isinstance(model_or_graphdef, nnx.Module):
      self.graphdef, _ = nnx.split(model_or_graphdef)  # params are passed per call, never held
      self.cfg = model_or_graphdef.cfg
    else:
      self.graphdef, self.cfg = model_or_graphdef, None  # read from the first params seen
    self.mesh = mesh
    self.pad_id = pad_id
    self.buckets = tuple(sorted(int(b) for b in buckets))
    self.chunk_size = int(chunk_size)
    if max_rows < 1:
      raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    self.max_rows = int(max_rows)
    self.num_compilations = 0  # incremented each time a program is traced
    out = None if mesh is None else mesh_lib.named_sharding(mesh, ("batch", None))
    self._score = jax.jit(self._score_impl, out_shardings=out)
    self._gaps = jax.jit(self._gaps_impl, out_shardings=out)
    self._verdict = jax.jit(self._verdict_impl, out_shardings=out)

  # ----------------------------------------------------------------- compiled parts
  def _score_impl(self, params, tokens_BxL, targets_BxL, segs_BxL):
    self.num_compilations += 1  # runs only while tracing
    model = nnx.merge(self.graphdef, params)
    logp, _ = token_logprobs(model, tokens_BxL, targets_BxL, segment_ids=segs_BxL,
                             chunk_size=self.chunk_size)
    return logp

  def _gaps_impl(self, params, tokens_BxL, targets_BxL, segs_BxL):
    self.num_compilations += 1
    model = nnx.merge(self.graphdef, params)
    h, _ = model.hidden_states(tokens_BxL, segment_ids=segs_BxL)
    return gaps_from_hidden(model, h, targets_BxL, self.chunk_size)

  def _verdict_impl(self, params, tokens_BxL, segs_BxL, last_B, cand_C):
    self.num_compilations += 1
    model = nnx.merge(self.graphdef, params)
    h, _ = model.hidden_states(tokens_BxL, segment_ids=segs_BxL)
    h_last = jnp.take_along_axis(h, last_B[:, None, None], axis=1)   # [B, 1, D]
    lp = jax.nn.log_softmax(model.logits_from_hidden(h_last)[:, 0], axis=-1)
    return jnp.take(lp, cand_C, axis=-1)

  # ----------------------------------------------------------------- batching
  def _config(self, params):
    if self.cfg is None:
      self.cfg = nnx.merge(self.graphdef, params).cfg
    return self.cfg

  def _plan(self, lengths: Sequence[int]):
    """(rows per micro-batch, number of micro-batches, padded length): agreed by all processes."""
    n, longest = agree_max(len(lengths), max(lengths) if len(lengths) else 1)
    if longest > self.cfg.max_seq_len:
      raise ValueError(f"a scored row has {longest} tokens, more than model.max_seq_len="
                       f"{self.cfg.max_seq_len}")
    L = min(_bucket(longest, self.buckets), self.cfg.max_seq_len)
    mult = local_batch_multiple(self.mesh)
    rows = min(_pow2_at_least(max(n, MIN_ROWS)), _pow2_at_least(self.max_rows))
    rows = -(-rows // mult) * mult
    return rows, max(1, -(-n // rows)), L

  def _per_continuation_token(self, fn, name: str, params, prompts, continuations) -> np.ndarray:
    """fn's value at each continuation token, float32 [n, longest continuation] (0 past a row's end)."""
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    conts = [np.asarray(c, np.int32).reshape(-1) for c in continuations]
    if len(prompts) != len(conts):
      raise ValueError(f"{name}: {len(prompts)} prompts but {len(conts)} continuations")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"{name}: prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
    n = len(prompts)
    self._config(params)
    rows, batches, L = self._plan([len(p) + len(c) for p, c in zip(prompts, conts)])
    C = max([len(c) for c in conts] + [0])
    out = np.zeros((n, C), np.float32)
    for mb in range(batches):
      toks = np.full((rows, L), self.pad_id, np.int32)
      tgts = np.zeros((rows, L), np.int32)
      segs = np.zeros((rows, L), np.int32)
      idx = range(mb * rows, min(n, (mb + 1) * rows))
      for r, i in enumerate(idx):
        seq = np.concatenate([prompts[i], conts[i]])
        toks[r, :len(seq)] = seq
        tgts[r, :len(seq) - 1] = seq[1:]
        segs[r, :len(seq)] = 1
      with mesh_lib.use_mesh(self.mesh):
        val = local_rows(fn(params, *put_rows(self.mesh, toks, tgts, segs)))
      for r, i in enumerate(idx):
        p, c = len(prompts[i]), len(conts[i])
        out[i, :c] = val[r, p - 1:p - 1 + c]
    return out

  def score(self, params, prompts: Sequence[Sequence[int]],
            continuations: Sequence[Sequence[int]]) -> ScoreOutput:
    """log p(continuation_i | prompt_i) per token, with row sums and counts."""
    out = self._per_continuation_token(self._score, "score", params, prompts, continuations)
    counts = np.array([np.size(c) for c in continuations], np.int32)
    return ScoreOutput(token_logprobs=out, sums=out.sum(axis=1, dtype=np.float32), counts=counts)

  def surprise(self, params, prompts: Sequence[Sequence[int]],
               continuations: Sequence[Sequence[int]]) -> np.ndarray:
    """Per continuation token, log p(the model's first choice) - log p(the token): float32
    [n, longest continuation], 0 past a row's end. Large where the model confidently expected
    something else (embedded/surprise.py)."""
    return self._per_continuation_token(self._gaps, "surprise", params, prompts, continuations)

  def verdict_logprobs(self, params, prompts: Sequence[Sequence[int]],
                       candidate_ids: Sequence[int]) -> np.ndarray:
    """log p(next token = c | prompt) under the full-vocabulary softmax: float32 [n, len(candidates)]."""
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    cand = np.asarray(candidate_ids, np.int32).reshape(-1)
    self._config(params)
    if cand.size == 0:
      raise ValueError("verdict_logprobs: candidate_ids is empty")
    if cand.min() < 0 or cand.max() >= self.cfg.vocab_size:
      raise ValueError(f"verdict_logprobs: candidate_ids {cand.tolist()} outside the vocabulary "
                       f"[0, {self.cfg.vocab_size})")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"verdict_logprobs: prompt {i} is empty")
    n = len(prompts)
    rows, batches, L = self._plan([len(p) for p in prompts])
    out = np.zeros((n, cand.size), np.float32)
    for mb in range(batches):
      toks = np.full((rows, L), self.pad_id, np.int32)
      segs = np.zeros((rows, L), np.int32)
      last = np.zeros((rows,), np.int32)
      idx = range(mb * rows, min(n, (mb + 1) * rows))
      for r, i in enumerate(idx):
        toks[r, :len(prompts[i])] = prompts[i]
        segs[r, :len(prompts[i])] = 1
        last[r] = len(prompts[i]) - 1
      with mesh_lib.use_mesh(self.mesh):
        args = put_rows(self.mesh, toks, segs, last)
        lp = local_rows(self._verdict(params, *args, jnp.asarray(cand)))
      out[idx.start:idx.stop] = lp[:len(idx)]
    return out
