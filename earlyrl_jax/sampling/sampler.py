"""Compiled batched sampling with a preallocated KV cache.

    prompts ──left-pad to a bucket──▶ prefill (one jit) ──▶ cache [B, S]
        ──repeat K (shared-prefix fan-out)──▶ decode: lax.scan (or while_loop) over T steps

Design (after the Tunix / Gemma samplers):
- The model is split once; params are a jit argument, so the policy's sampler
  follows training by `update_params` without recompiling.
- Prompts are left-padded to a few bucket lengths, so every row writes its next
  token at the same cache slot; per-row RoPE positions keep the math exact.
- The decode length is bucketed too (static scan length); `max_new_tokens` is a
  traced value, so asking for 20 or 30 tokens reuses one compiled program.
- Only sampled tokens and their log-probs are kept: no [B, T, V] logits buffer.
- Batches are padded to a multiple of the data-parallel size and sharded over
  ('data', 'fsdp'); heads follow the params' 'tensor' sharding.

Log-probs are those of the distribution actually sampled from (after
temperature, top-k and top-p); with greedy decoding they are the model's own
log-probs of the chosen tokens.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.models.transformer import KVCache, init_cache
from earlyrl_jax.parallel import mesh as mesh_lib

DEFAULT_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MAX_STOP_TOKENS = 8  # stop-token slots per row (padded with -1)


class SampleOutput(NamedTuple):
  tokens: np.ndarray          # int32 [B*K, T]: generated tokens, pad_id after a stop
  logprobs: np.ndarray        # float32 [B*K, T]: log-prob of each token (0 after a stop)
  lengths: np.ndarray         # int32 [B*K]: generated tokens per row, stop token included
  prompt_lengths: np.ndarray  # int32 [B*K]

  def texts(self, tokenizer, strip_stop: bool = True) -> list[str]:
    out = []
    for row, n in zip(self.tokens, self.lengths):
      ids = row[:n].tolist()
      if strip_stop and ids and tokenizer.eos_id is not None and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
      out.append(tokenizer.decode(ids))
    return out


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything that selects a compiled program."""
  batch: int
  prompt_len: int
  cache_len: int
  decode_len: int
  top_k: int
  greedy: bool
  use_top_p: bool
  early_stop: bool


def _bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return n  # beyond the largest bucket: exact length (compiles once per length)


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def process_logits(logits_BxV, temperature, top_k: int, top_p, use_top_p: bool):
  """Temperature, then top-k, then nucleus filtering; masked entries become -inf."""
  logits = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if use_top_p:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    # Keep the smallest prefix of tokens whose mass reaches top_p (always >= 1 token).
    keep = cum_before < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


class Sampler:
  """Samples continuations from a Transformer. Reusable across calls and param updates."""

  def __init__(self, model: nnx.Module, *, mesh=None, pad_id: int = 0,
               prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
               max_cache_len: int | None = None):
    self.graphdef, self.params = nnx.split(model)
    self.cfg = model.cfg
    self.mesh = mesh
    self.pad_id = pad_id
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.max_cache_len = max_cache_len or self.cfg.max_seq_len
    self.num_compilations = 0  # incremented when a prefill/decode program is traced
    self._prefill = jax.jit(self._prefill_impl, static_argnums=(0,))
    self._decode = jax.jit(self._decode_impl, static_argnums=(0,))

  def update_params(self, params) -> None:
    """Swaps in new weights of the same structure (e.g. the policy after a train step)."""
    self.params = params

  # ----------------------------------------------------------------- compiled parts
  def _prefill_impl(self, st: _Static, params, tokens_BxP, segs_BxP, pos_BxP):
    self.num_compilations += 1  # runs only while tracing
    model = nnx.merge(self.graphdef, params)
    cache = init_cache(self.cfg, st.batch, st.cache_len)
    logits, cache = model(tokens_BxP, positions=pos_BxP, segment_ids=segs_BxP, cache=cache)
    return logits[:, -1], cache  # left padding: the last slot is every row's last prompt token

  def _decode_impl(self, st: _Static, params, cache: KVCache, logits_BxV, key, pos_B,
                   max_new_tokens, temperature, top_p, stop_BxS):
    self.num_compilations += 1
    model = nnx.merge(self.graphdef, params)
    B, T = st.batch, st.decode_len

    def sample(logits, k):
      raw = logits.astype(jnp.float32)
      if st.greedy:
        tok = jnp.argmax(raw, axis=-1)
        lp = jax.nn.log_softmax(raw, axis=-1)
      else:
        proc = process_logits(raw, temperature, st.top_k, top_p, st.use_top_p)
        tok = jax.random.categorical(k, proc, axis=-1)
        lp = jax.nn.log_softmax(proc, axis=-1)
      return tok.astype(jnp.int32), jnp.take_along_axis(lp, tok[:, None].astype(jnp.int32), -1)[:, 0]

    def step(carry):
      i, cache, logits, key, pos, done, lengths, toks, lps = carry
      key, k = jax.random.split(key)
      tok, lp = sample(logits, k)
      tok = jnp.where(done, self.pad_id, tok)
      lp = jnp.where(done, 0.0, lp)
      toks = jax.lax.dynamic_update_slice_in_dim(toks, tok[:, None], i, axis=1)
      lps = jax.lax.dynamic_update_slice_in_dim(lps, lp[:, None], i, axis=1)
      lengths = lengths + (~done).astype(jnp.int32)
      hit_stop = jnp.any(tok[:, None] == stop_BxS, axis=-1)
      done = done | hit_stop | (i + 1 >= max_new_tokens)
      logits, cache = model(tok[:, None], positions=pos[:, None],
                            segment_ids=jnp.ones((B, 1), jnp.int32), cache=cache)
      return (i + 1, cache, logits[:, 0], key, pos + 1, done, lengths, toks, lps)

    init = (jnp.zeros((), jnp.int32), cache, logits_BxV, key, pos_B, jnp.zeros((B,), bool),
            jnp.zeros((B,), jnp.int32), jnp.full((B, T), self.pad_id, jnp.int32),
            jnp.zeros((B, T), jnp.float32))
    if st.early_stop:
      out = jax.lax.while_loop(lambda c: (c[0] < T) & ~jnp.all(c[5]), step, init)
    else:
      out, _ = jax.lax.scan(lambda c, _: (step(c), None), init, None, length=T)
    return out[7], out[8], out[6]

  # ----------------------------------------------------------------- public API
  def __call__(self, prompts, *, max_new_tokens: int, key: jax.Array, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, stop_tokens=(), num_samples: int = 1,
               early_stop: bool = False, prompt_lengths=None) -> SampleOutput:
    """Samples `num_samples` continuations of each prompt.

    prompts: a list of token-id sequences, or an int array [B, P] right-padded
      with `prompt_lengths` [B].
    stop_tokens: ids shared by all rows, or one sequence of ids per prompt.
    temperature=0 means greedy. Rows are ordered prompt-major: row b*K + k is
    sample k of prompt b.
    """
    rows = _as_rows(prompts, prompt_lengths)
    if max_new_tokens is None or int(max_new_tokens) <= 0:
      raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or temperature < 0:
      raise ValueError(f"top_k and temperature must be >= 0, got top_k={top_k}, temperature={temperature}")
    longest = max(len(r) for r in rows)
    if longest + max_new_tokens > self.max_cache_len:
      raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds "
                       f"the cache length {self.max_cache_len} (model.max_seq_len)")

    dp = mesh_lib.data_parallel_size(self.mesh) if self.mesh is not None else 1
    n = len(rows)
    B = -(-n // dp) * dp                                   # prompts padded to the dp size
    P = min(_bucket(longest, self.prompt_buckets), self.max_cache_len - max_new_tokens)
    T = min(_pow2_at_least(max_new_tokens), self.max_cache_len - P)
    toks = np.full((B, P), self.pad_id, np.int32)
    segs = np.zeros((B, P), np.int32)
    pos = np.zeros((B, P), np.int32)
    lens = np.ones((B,), np.int32)
    for b in range(B):
      r = rows[b] if b < n else rows[0]  # padding rows repeat a real prompt; dropped at the end
      toks[b, P - len(r):] = r
      segs[b, P - len(r):] = 1
      pos[b, P - len(r):] = np.arange(len(r))
      lens[b] = len(r)
    stops = _stop_array(stop_tokens, n, B)

    K = num_samples
    greedy = temperature == 0.0
    pre = _Static(B, P, P + T, T, 0, False, False, False)
    dec = _Static(B * K, P, P + T, T, 0 if greedy else int(top_k), greedy,
                  (not greedy) and top_p < 1.0, early_stop)
    with mesh_lib.use_mesh(self.mesh):
      args = self._put(toks, segs, pos)
      logits, cache = self._prefill(pre, self.params, *args)
      if K > 1:  # shared-prefix fan-out: one prefill, K decodes
        cache = cache.repeat(K)
        logits = jnp.repeat(logits, K, axis=0)
      pos_B = self._put(np.repeat(lens, K))[0]
      stop_B = self._put(np.repeat(stops, K, axis=0))[0]
      out_toks, out_lps, out_lens = self._decode(
          dec, self.params, cache, logits, key, pos_B, jnp.int32(max_new_tokens),
          jnp.float32(temperature), jnp.float32(top_p), stop_B)
    out_toks, out_lps, out_lens = (_fetch(x) for x in (out_toks, out_lps, out_lens))
    keep = n * K
    return SampleOutput(tokens=np.asarray(out_toks[:keep, :max_new_tokens]),
                        logprobs=np.asarray(out_lps[:keep, :max_new_tokens]),
                        lengths=np.asarray(out_lens[:keep]),
                        prompt_lengths=np.repeat(lens, K)[:keep])

  def _put(self, *arrays):
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    return tuple(jax.device_put(a, mesh_lib.named_sharding(
        self.mesh, ("batch",) + (None,) * (a.ndim - 1))) for a in arrays)


def _fetch(x: jax.Array) -> np.ndarray:
  """Device -> host; on multi-host meshes every process gets the whole (global) result."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _as_rows(prompts, prompt_lengths) -> list[np.ndarray]:
  if prompt_lengths is not None:
    arr = np.asarray(prompts)
    rows = [arr[i, :int(l)] for i, l in enumerate(np.asarray(prompt_lengths))]
  else:
    rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not rows:
    raise ValueError("no prompts given")
  for i, r in enumerate(rows):
    if len(r) == 0:
      raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
  return rows


def _stop_array(stop_tokens, n: int, B: int) -> np.ndarray:
  """[B, MAX_STOP_TOKENS] int32, -1 = unused slot."""
  out = np.full((B, MAX_STOP_TOKENS), -1, np.int32)
  if stop_tokens is None or len(stop_tokens) == 0:
    return out
  per_row = isinstance(stop_tokens[0], (list, tuple, np.ndarray))
  if per_row and len(stop_tokens) != n:
    raise ValueError(f"stop_tokens has {len(stop_tokens)} rows for {n} prompts")
  for b in range(n):
    ids = list(stop_tokens[b] if per_row else stop_tokens)
    if len(ids) > MAX_STOP_TOKENS:
      raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens per row, got {len(ids)}")
    out[b, :len(ids)] = ids
  return out
