"""Compiled batched sampling with a preallocated KV cache.

    prompts ──left-pad to a bucket──▶ prefill (one jit) ──▶ prompt cache [B, P]
        ──▶ decode B*K rows: lax.scan (or while_loop) over T steps (one jit), each row's
            tokens in its own cache [B*K, T], the prompt's read once per group of K

Design (after the Tunix / Gemma samplers):
- Functional: `sample(params, prompts, ...)` takes the weights per call, so a sampler
  never holds buffers that a donating train step has freed. `Sampler(model)(...)`
  reads the model's current weights at each call.
- Prompts are left-padded to a few bucket lengths, so every row writes its next
  token at the same cache slot; per-row RoPE positions keep the math exact.
- The decode length is bucketed too (static scan length); per-row `max_new_tokens`
  are traced values, so asking for 20 or 30 tokens reuses one compiled program.
- Stops are per row: single stop tokens and multi-token stop sequences are one
  table `[rows, S, W]` (right-aligned, -1 = wildcard) compared inside the compiled
  step with a rolling window of each row's last W generated tokens.
- Shared-prefix fan-out without copies: the K samples of a prompt attend to its one
  prompt cache (`PrefixCache`) and to their own decode cache, in the slot order of a
  single [P + T] cache, so the tokens are those of K copies (`tests/test_sampler.py`),
  and a prompt of 1920 tokens with K=16 holds one cache, not 16.
- Only sampled tokens and their log-probs are kept: no [B, T, V] logits buffer.
- Token choice never sorts the vocabulary (`sample_rows`: top-k / top-p cuts by
  bisection, inverse-CDF draw): on XLA:CPU a sort per step cost more than the model.
- Rows are padded to a multiple of the data-parallel size and sharded over
  ('data', 'fsdp'); padding rows start done, so they never hold `early_stop` back. Greedy
  calls pad further, to a power of two (at least GREEDY_MIN_ROWS): a rewriter's calls with 1,
  3 or 5 prompts share one program. Sampled calls keep their row count, because the random
  draws of a step are one array over the rows.
- Multi-host: each process passes its own prompts and gets back its own rows; the
  buckets (rows, prompt length, decode length, stop table) are agreed across processes.
  Every process must pass the same key, temperature, top_k, top_p and num_samples.

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

from earlyrl_jax.models.scoring import agree_max, local_batch_multiple, local_rows, put_rows
from earlyrl_jax.models.transformer import PrefixCache, init_cache
from earlyrl_jax.parallel import mesh as mesh_lib

DEFAULT_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MIN_STOP_SLOTS = 8   # stop table rows per sample row (grows to the next power of two)
MIN_STOP_WIDTH = 4   # longest stop sequence the table holds (grows to the next power of two)
GREEDY_MIN_ROWS = 8  # greedy calls pad their prompts to a power of two, at least this many


class SampleOutput(NamedTuple):
  tokens: np.ndarray          # int32 [B*K, T]: generated tokens, pad_id after a stop / the row's limit
  logprobs: np.ndarray        # float32 [B*K, T]: log-prob of each token (0 after a stop)
  lengths: np.ndarray         # int32 [B*K]: generated tokens per row, matched stop sequence included
  prompt_lengths: np.ndarray  # int32 [B*K]
  stop_lengths: np.ndarray | None = None  # int32 [B*K]: tokens of the matched stop (0: no stop hit)
  decode_steps: int = 0       # decode steps run (fewer than T when early_stop ended the loop)

  def texts(self, tokenizer, strip_stop: bool = True) -> list[str]:
    """Detokenized rows; with strip_stop, the matched stop sequence (or a final EOS) is dropped."""
    out = []
    stops = self.stop_lengths if self.stop_lengths is not None else np.zeros(len(self.lengths), int)
    for row, n, s in zip(self.tokens, self.lengths, stops):
      ids = row[:n].tolist()
      if strip_stop:
        if s:
          ids = ids[:len(ids) - int(s)]
        elif ids and getattr(tokenizer, "eos_id", None) is not None and ids[-1] == tokenizer.eos_id:
          ids = ids[:-1]
      out.append(tokenizer.decode(ids))
    return out


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything that selects a compiled program."""
  batch: int          # rows of the program (prompts for prefill, prompts x K for decode)
  prompt_len: int
  cache_len: int
  decode_len: int
  num_samples: int
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
  """Temperature, then top-k, then nucleus filtering; masked entries become -inf.

  The sort-based reference (what `sample_rows` computes without sorting).
  """
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


SAMPLE_BLOCK = 128  # vocabulary block of the two-level inverse-CDF sampler


def _block_sums(p_BxV):
  """Row sums via [B, V/128, 128] blocks: flat [B, V] reductions are ~10x slower on XLA:CPU."""
  B, V = p_BxV.shape
  nb = -(-V // SAMPLE_BLOCK)
  p_blk = jnp.pad(p_BxV, ((0, 0), (0, nb * SAMPLE_BLOCK - V))).reshape(B, nb, SAMPLE_BLOCK)
  return p_blk, jnp.sum(p_blk, axis=-1)


def _largest_threshold(p_BxV, enough):
  """Per row, the largest t >= 0 with enough(p, t) (monotone: true at t=0), by bisection on
  the float bits (exact in 31 passes over [B, V]; non-negative floats order like their bits)."""
  B = p_BxV.shape[0]
  to_f = lambda b: jax.lax.bitcast_convert_type(b, jnp.float32)
  hi = jax.lax.bitcast_convert_type(jnp.max(p_BxV, axis=-1), jnp.int32)
  lo = jnp.zeros((B,), jnp.int32)

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo + 1) // 2
    ok = enough(p_BxV, to_f(mid)[:, None])
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
  lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
  return to_f(lo)[:, None]


def _uncommitted_key(key):
  """The same key, free to move to this sampler's devices: a key made on the policy's mesh may
  drive a teacher on its own sub-mesh (teacher.placement='submesh'). Every process holds the
  whole key (replicated), so its local copy is the key."""
  if isinstance(key, jax.core.Tracer):
    return key
  data = jax.random.key_data(key)
  local = data.addressable_data(0) if hasattr(data, "addressable_data") else data
  return jax.random.wrap_key_data(np.asarray(local), impl=jax.random.key_impl(key))


def sample_rows(logits_BxV, key, greedy: bool, top_k: int = 0, top_p=None):
  """One token per row from softmax(logits) after top-k / nucleus filtering, and its log-prob
  under the filtered distribution: (tokens int32 [B], logp float32 [B]).

  Same semantics as `process_logits` + categorical (ties at a cut are kept), without its
  sort / top_k: on XLA:CPU a [64, 8192] sort costs ~250 ms, `jax.random.categorical` (a
  Gumbel draw per vocabulary entry + a variadic argmax) ~10 ms, while these passes cost
  well under a millisecond (a few ms with top-k / top-p: 31 bisection passes each).
  Sampling is exact inverse-CDF with one uniform per row, two-level over vocabulary
  blocks. Greedy takes the first index of the maximum, as argmax does.
  """
  B, V = logits_BxV.shape
  x = logits_BxV.astype(jnp.float32)
  m = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, (B, V), 1)
  p = jnp.exp(x - m)                                     # masked (-inf) entries are 0; max is 1
  if not greedy and top_k and top_k < V:
    cut = _largest_threshold(p, lambda p, t: jnp.sum(_block_sums((p >= t).astype(jnp.float32))[1],
                                                     axis=-1) >= top_k)
    p = jnp.where(p >= cut, p, 0.0)
  if not greedy and top_p is not None:
    want = top_p * jnp.sum(_block_sums(p)[1], axis=-1)
    cut = _largest_threshold(p, lambda p, t: jnp.sum(_block_sums(jnp.where(p >= t, p, 0.0))[1],
                                                     axis=-1) >= want)
    p = jnp.where(p >= cut, p, 0.0)
  p_blk, blk_sum = _block_sums(p)
  blk_cum = jnp.cumsum(blk_sum, axis=-1)
  total = blk_cum[:, -1]
  if greedy:
    tok = jnp.min(jnp.where(x == m, iota, V), axis=-1)
  else:
    nb = blk_sum.shape[1]
    target = (1.0 - jax.random.uniform(key, (B, 1))) * blk_cum[:, -1:]   # in (0, total]
    blk = jnp.minimum(jnp.sum(blk_cum < target, axis=-1), nb - 1)
    before = (jnp.take_along_axis(blk_cum, blk[:, None], -1)
              - jnp.take_along_axis(blk_sum, blk[:, None], -1))
    p_in = jnp.take_along_axis(p_blk, blk[:, None, None], axis=1)[:, 0]  # [B, block]
    cum_in = jnp.cumsum(p_in, axis=-1) + before
    j = jnp.sum(cum_in < target, axis=-1)
    last_nonzero = jnp.max(jnp.where(p_in > 0, jnp.arange(SAMPLE_BLOCK), 0), axis=-1)
    tok = blk * SAMPLE_BLOCK + jnp.minimum(j, last_nonzero)
    # Rounding could in theory land on a zero-probability entry; then take the mode.
    p_tok = jnp.take_along_axis(p, jnp.minimum(tok, V - 1)[:, None], -1)[:, 0]
    tok = jnp.where(p_tok > 0, tok, jnp.min(jnp.where(x == m, iota, V), axis=-1))
  tok = tok.astype(jnp.int32)
  p_tok = jnp.take_along_axis(p, tok[:, None], -1)[:, 0]
  return tok, jnp.log(p_tok) - jnp.log(total)


class Sampler:
  """Samples continuations from a Transformer. Reusable across calls and param updates."""

  def __init__(self, model: nnx.Module, *, mesh=None, pad_id: int = 0,
               prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
               max_cache_len: int | None = None):
    self.graphdef = nnx.graphdef(model)
    self._model = model
    self.cfg = model.cfg
    self.mesh = mesh
    self.pad_id = pad_id
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.max_cache_len = max_cache_len or self.cfg.max_seq_len
    self.num_compilations = 0  # incremented when a prefill/decode program is traced
    self._prefill = jax.jit(self._prefill_impl, static_argnums=(0,))
    # The decode loop's own cache lives inside its program (updated in place).
    self._decode = jax.jit(self._decode_impl, static_argnums=(0,))

  @property
  def params(self):
    """The wrapped model's current weights (read at each call, never cached)."""
    return nnx.state(self._model)

  # ----------------------------------------------------------------- compiled parts
  def _prefill_impl(self, st: _Static, params, tokens_BxP, segs_BxP, pos_BxP):
    self.num_compilations += 1  # runs only while tracing
    model = nnx.merge(self.graphdef, params)
    cache = init_cache(self.cfg, st.batch, st.prompt_len)
    h, cache = model.hidden_states(tokens_BxP, positions=pos_BxP, segment_ids=segs_BxP, cache=cache)
    # Left padding: the last slot is every row's last prompt token, and only it goes through
    # the vocabulary projection (all P positions would be a [B, P, V] float32 buffer).
    logits = model.logits_from_hidden(h[:, -1:])[:, 0]
    if st.num_samples > 1:  # shared-prefix fan-out: one prefill, K decodes (row b*K + k)
      logits = jnp.repeat(logits, st.num_samples, axis=0)
    return logits, PrefixCache.of(cache, st.num_samples)

  def _decode_impl(self, st: _Static, params, prompt: PrefixCache, logits_BxV, key, pos_B, max_new_B,
                   done_B, stops_BxSxW, temperature, top_p):
    self.num_compilations += 1
    model = nnx.merge(self.graphdef, params)
    B, T = st.batch, st.decode_len
    cache = init_cache(self.cfg, B, T)   # each row's own tokens; slot 0 follows the prompt's last
    W = stops_BxSxW.shape[-1]
    stop_len_BxS = jnp.sum(stops_BxSxW >= 0, axis=-1)

    def sample(logits, k):
      raw = logits.astype(jnp.float32)
      if st.greedy:
        return sample_rows(raw, k, True)
      return sample_rows(raw / jnp.maximum(temperature, 1e-6), k, False, st.top_k,
                         top_p if st.use_top_p else None)

    def step(carry):
      i, cache, logits, key, pos, done, lengths, window, stop_lens, toks, lps = carry
      key, k = jax.random.split(key)
      tok, lp = sample(logits, k)
      tok = jnp.where(done, self.pad_id, tok)
      lp = jnp.where(done, 0.0, lp)
      toks = jax.lax.dynamic_update_slice_in_dim(toks, tok[:, None], i, axis=1)
      lps = jax.lax.dynamic_update_slice_in_dim(lps, lp[:, None], i, axis=1)
      lengths = lengths + (~done).astype(jnp.int32)
      # Stop sequences: right-aligned, -1 matches anything; the window starts at -2 (no token).
      window = jnp.concatenate([window[:, 1:], tok[:, None]], axis=1)
      match = jnp.all((stops_BxSxW < 0) | (stops_BxSxW == window[:, None, :]), axis=-1)
      hit_len = jnp.max(jnp.where(match & (stop_len_BxS > 0), stop_len_BxS, 0), axis=-1)
      hit = (hit_len > 0) & ~done
      stop_lens = jnp.where(hit, hit_len, stop_lens)
      done = done | hit | (i + 1 >= max_new_B)
      logits, cache = model(tok[:, None], positions=pos[:, None],
                            segment_ids=jnp.ones((B, 1), jnp.int32), cache=cache, prefix=prompt)
      return (i + 1, cache, logits[:, 0], key, pos + 1, done, lengths, window, stop_lens, toks, lps)

    init = (jnp.zeros((), jnp.int32), cache, logits_BxV, key, pos_B, done_B,
            jnp.zeros((B,), jnp.int32), jnp.full((B, W), -2, jnp.int32), jnp.zeros((B,), jnp.int32),
            jnp.full((B, T), self.pad_id, jnp.int32), jnp.zeros((B, T), jnp.float32))
    if st.early_stop:
      out = jax.lax.while_loop(lambda c: (c[0] < T) & ~jnp.all(c[5]), step, init)
    else:
      out, _ = jax.lax.scan(lambda c, _: (step(c), None), init, None, length=T)
    return out[9], out[10], out[6], out[8], out[0]

  # ----------------------------------------------------------------- public API
  def __call__(self, prompts, **kw) -> SampleOutput:
    """`sample(self.params, prompts, ...)` with the wrapped model's current weights."""
    return self.sample(self.params, prompts, **kw)

  def sample(self, params, prompts, *, max_new_tokens: int | Sequence[int], key: jax.Array,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop_tokens=(),
             stop_sequences=None, num_samples: int = 1, early_stop: bool = False,
             prompt_lengths=None) -> SampleOutput:
    """Samples `num_samples` continuations of each prompt with the given weights.

    prompts: a list of token-id sequences, or an int array [B, P] right-padded
      with `prompt_lengths` [B]. On multi-host meshes: this process's prompts.
    max_new_tokens: one limit for all rows, or one per prompt.
    stop_tokens: ids shared by all rows, or one sequence of ids per prompt.
    stop_sequences: token-id sequences that end a row when its last generated
      tokens equal one of them (e.g. the ids of "\\n\\n"; pass every tokenization
      you want to catch): a list of sequences shared by all rows, or one such list
      per prompt. The matched sequence is counted in `lengths` and reported in
      `stop_lengths`, so `texts()` can strip it.
    temperature=0 means greedy. Rows are ordered prompt-major: row b*K + k is
    sample k of prompt b.
    """
    _check_live(params)
    rows = _as_rows(prompts, prompt_lengths)
    n = len(rows)
    max_new = _per_row_limits(max_new_tokens, n)
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or temperature < 0:
      raise ValueError(f"top_k and temperature must be >= 0, got top_k={top_k}, temperature={temperature}")
    stops = _stop_table(stop_tokens, stop_sequences, n)
    longest = max(len(r) for r in rows)
    if longest + int(max_new.max()) > self.max_cache_len:
      raise ValueError(f"prompt of {longest} tokens + max_new_tokens={int(max_new.max())} exceeds "
                       f"the cache length {self.max_cache_len} (model.max_seq_len)")

    # Buckets every process agrees on (identity on one process).
    g_n, g_longest, g_new, g_S, g_W = agree_max(n, longest, int(max_new.max()), *stops.shape[1:])
    mult = local_batch_multiple(self.mesh)
    B = -(-g_n // mult) * mult                              # this process's prompt rows
    if temperature == 0.0:   # greedy rows draw no random numbers: pad to a few row counts, so a
      B = -(-max(GREEDY_MIN_ROWS, _pow2_at_least(g_n)) // mult) * mult   # new count reuses a program
    P = min(_bucket(g_longest, self.prompt_buckets), self.max_cache_len - g_new)
    T = min(_pow2_at_least(g_new), self.max_cache_len - P)
    K = num_samples
    toks = np.full((B, P), self.pad_id, np.int32)
    segs = np.zeros((B, P), np.int32)
    pos = np.zeros((B, P), np.int32)
    lens = np.ones((B,), np.int32)
    for b in range(B):
      r = rows[b] if b < n else np.asarray([self.pad_id], np.int32)  # padding rows: dropped
      toks[b, P - len(r):] = r
      segs[b, P - len(r):] = 1
      pos[b, P - len(r):] = np.arange(len(r))
      lens[b] = len(r)
    table = np.full((B, g_S, g_W), -1, np.int32)
    table[:n, :stops.shape[1], g_W - stops.shape[2]:] = stops
    limits = np.ones((B,), np.int32)
    limits[:n] = max_new
    done = np.arange(B) >= n                                # padding rows start done

    greedy = temperature == 0.0
    rep = lambda a: np.repeat(a, K, axis=0)
    with mesh_lib.use_mesh(self.mesh):
      prompt_args = put_rows(self.mesh, toks, segs, pos)
      G = prompt_args[0].shape[0]                           # global rows (all processes)
      pre = _Static(G, P, P, 0, K, 0, False, False, False)   # the prompt's cache only
      dec = _Static(G * K, P, P + T, T, K, 0 if greedy else int(top_k), greedy,
                    (not greedy) and top_p < 1.0, early_stop)
      logits, cache = self._prefill(pre, params, *prompt_args)
      out = self._decode(dec, params, cache, logits, _uncommitted_key(key),
                         *put_rows(self.mesh, rep(lens), rep(limits), rep(done), rep(table)),
                         jnp.float32(temperature), jnp.float32(top_p))
    out_toks, out_lps, out_lens, out_stops = (local_rows(x) for x in out[:4])
    keep, T_out = n * K, int(max_new.max())
    return SampleOutput(tokens=out_toks[:keep, :T_out], logprobs=out_lps[:keep, :T_out],
                        lengths=out_lens[:keep], prompt_lengths=rep(lens)[:keep],
                        stop_lengths=out_stops[:keep], decode_steps=int(jax.device_get(out[4])))


def _check_live(params) -> None:
  for x in jax.tree.leaves(params):
    if isinstance(x, jax.Array) and x.is_deleted():
      raise ValueError("sample: params hold deleted buffers (donated to a train step?); pass the "
                       "current params: sampler.sample(state.params, ...)")


def _as_rows(prompts, prompt_lengths) -> list[np.ndarray]:
  if prompt_lengths is not None:
    arr = np.asarray(prompts)
    rows = [arr[i, :int(l)].astype(np.int32) for i, l in enumerate(np.asarray(prompt_lengths))]
  else:
    rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not rows:
    raise ValueError("no prompts given")
  for i, r in enumerate(rows):
    if len(r) == 0:
      raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
  return rows


def _per_row_limits(max_new_tokens, n: int) -> np.ndarray:
  if max_new_tokens is None:
    raise ValueError("max_new_tokens must be positive, got None")
  if np.ndim(max_new_tokens) == 0:
    limits = np.full((n,), int(max_new_tokens), np.int32)
  else:
    limits = np.asarray(max_new_tokens, np.int32).reshape(-1)
    if len(limits) != n:
      raise ValueError(f"max_new_tokens has {len(limits)} entries for {n} prompts")
  if (limits <= 0).any():
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  return limits


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _stop_table(stop_tokens, stop_sequences, n: int) -> np.ndarray:
  """[n, S, W] int32: each row's stop sequences right-aligned, -1 = wildcard / unused slot.

  Single stop tokens are sequences of length one. S and W are rounded up to powers
  of two (at least MIN_STOP_SLOTS x MIN_STOP_WIDTH) so programs are reused.
  """
  per_row: list[list[list[int]]] = [[] for _ in range(n)]
  if stop_tokens is not None and len(stop_tokens):
    if _is_int(stop_tokens[0]):
      for r in per_row:
        r.extend([int(t)] for t in stop_tokens)
    else:
      if len(stop_tokens) != n:
        raise ValueError(f"stop_tokens has {len(stop_tokens)} rows for {n} prompts")
      for r, ids in zip(per_row, stop_tokens):
        r.extend([int(t)] for t in ids)
  if stop_sequences is not None and len(stop_sequences):
    first = next((s for s in stop_sequences if len(s)), None)
    shared = first is not None and _is_int(first[0])
    if shared:
      for r in per_row:
        r.extend([int(t) for t in s] for s in stop_sequences)
    else:
      if len(stop_sequences) != n:
        raise ValueError(f"stop_sequences has {len(stop_sequences)} rows for {n} prompts "
                         "(pass one list of sequences per prompt, or one list shared by all)")
      for r, seqs in zip(per_row, stop_sequences):
        r.extend([int(t) for t in s] for s in seqs)
  for i, r in enumerate(per_row):
    for s in r:
      if len(s) == 0:
        raise ValueError(f"stop_sequences: row {i} has an empty stop sequence")
      if min(s) < 0:
        raise ValueError(f"stop_sequences / stop_tokens: row {i} has a negative id in {s}")
  S = max(MIN_STOP_SLOTS, _pow2_at_least(max(len(r) for r in per_row)))
  W = max(MIN_STOP_WIDTH, _pow2_at_least(max([len(s) for r in per_row for s in r] + [1])))
  out = np.full((n, S, W), -1, np.int32)
  for i, r in enumerate(per_row):
    for j, s in enumerate(r):
      out[i, j, W - len(s):] = s
  return out
