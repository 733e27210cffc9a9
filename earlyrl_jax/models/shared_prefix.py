"""Verdict log-probs for many judge prompts that share a long prefix, one prefill per prefix.

Why: every comparison of one SIP prefix repeats the same judge prompt up to the candidates
(instructions + the quoted document prefix); with C candidates that is C(C-1) rows per prefix in
both orders. Here the shared part is prefilled once per group into a KV cache, the cache is
gathered out to the rows of the group (the sampler's shared-prefix fan-out, with a gather instead
of `repeat` so groups may have any number of rows), and only each row's remainder (candidates +
verdict question) runs per row.

    shared [G, Ps] (left-padded) ──prefill──▶ cache [G, Ps+R] ──take(group_of_row)──▶ [N, Ps+R]
    rests  [N, R]  (left-padded, seg 0 on padding, RoPE positions continue per row) ──▶ last slot
    ──▶ full-vocabulary log-softmax at the candidate verdict ids [N, n_cand]

Padding between a group's shared part and a row's remainder carries segment id 0, so the one
masking rule of the model (same non-zero segment, causal by slot) makes the result equal to the
forward pass of the concatenated prompt. Rows, groups and both lengths are bucketed so a new
batch does not recompile.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.models.scoring import agree_max, local_batch_multiple, local_rows, put_rows
from earlyrl_jax.models.transformer import KVCache, ModelConfig, init_cache
from earlyrl_jax.parallel import mesh as mesh_lib

SHARED_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REST_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return n


def _rows_bucket(n: int, multiple: int, least: int = 8) -> int:
  """Next power of two (at least `least`), rounded up to a multiple of the data-parallel size."""
  b = max(least, 1 << max(0, (n - 1).bit_length()))
  return -(-b // multiple) * multiple


class SharedPrefixScorer:
  """`verdict_logprobs(params, shared, rests, group_of_row, candidate_ids)` with prefix reuse."""

  def __init__(self, model_or_graphdef, *, cfg: ModelConfig | None = None, mesh=None,
               pad_id: int = 0, shared_buckets: Sequence[int] = SHARED_BUCKETS,
               rest_buckets: Sequence[int] = REST_BUCKETS):
    if isinstance(model_or_graphdef, nnx.Module):
      self.graphdef, self.params = nnx.split(model_or_graphdef)
      cfg = model_or_graphdef.cfg
    else:
      if cfg is None:
        raise ValueError("SharedPrefixScorer: pass cfg= (the ModelConfig) with a graphdef")
      self.graphdef, self.params = model_or_graphdef, None
    self.cfg = cfg
    self.mesh = mesh
    self.pad_id = pad_id
    self.shared_buckets = tuple(sorted(shared_buckets))
    self.rest_buckets = tuple(sorted(rest_buckets))
    self.num_compilations = 0   # incremented while tracing: tests check that batches do not retrace
    self.tokens_real = 0        # tokens forwarded (shared parts once + rests), without padding
    self.tokens_padded = 0      # the same with bucket padding: what the device computes
    # Both outputs stay split over the batch axis: each process reads back its own rows.
    out = None if mesh is None else (mesh_lib.named_sharding(mesh, ("batch", None)),) * 2
    self._fn = jax.jit(self._impl, static_argnums=(0,), out_shardings=out)

  # ----------------------------------------------------------------- compiled part
  def _impl(self, has_shared: bool, params, s_tok, s_seg, s_pos, r_tok, r_seg, r_pos, group_N,
            cand_ids):
    self.num_compilations += 1
    model = nnx.merge(self.graphdef, params)
    G, Ps = s_tok.shape
    N, R = r_tok.shape
    cache = init_cache(self.cfg, G, Ps + R)
    lp_shared = jnp.zeros((G, cand_ids.shape[0]), jnp.float32)
    if has_shared:
      h, cache = model.hidden_states(s_tok, positions=s_pos, segment_ids=s_seg, cache=cache)
      lp_shared = self._verdict(model, h[:, -1:], cand_ids)
    take = lambda a: mesh_lib.constrain(jnp.take(a, group_N, axis=0),
                                        ("batch", "cache_length", "kv_heads", "head_dim"))
    rows = KVCache(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)),
                   segment_ids=jnp.take(cache.segment_ids, group_N, axis=0), index=cache.index)
    h, _ = model.hidden_states(r_tok, positions=r_pos, segment_ids=r_seg, cache=rows)
    return self._verdict(model, h[:, -1:], cand_ids), lp_shared

  @staticmethod
  def _verdict(model, h_Bx1xD, cand_ids):
    logits = model.logits_from_hidden(h_Bx1xD)[:, 0]                       # [B, V] float32
    return jnp.take(jax.nn.log_softmax(logits, axis=-1), cand_ids, axis=-1)

  # ----------------------------------------------------------------- public API
  def verdict_logprobs(self, params, shared: Sequence[Sequence[int]],
                       rests: Sequence[Sequence[int]], group_of_row: Sequence[int],
                       candidate_ids: Sequence[int]) -> np.ndarray:
    """log p(next token = c | shared[group_of_row[r]] + rests[r]) for each row r: f32 [n, n_cand].

    params: the model's nnx.State (None: the weights of the model given at construction).
    """
    params = self.params if params is None else params
    if params is None:
      raise ValueError("SharedPrefixScorer.verdict_logprobs: params=None but built from a graphdef")
    n, G = len(rests), len(shared)
    if n == 0:
      raise ValueError("verdict_logprobs: no rows given")
    if len(group_of_row) != n:
      raise ValueError(f"group_of_row has {len(group_of_row)} entries for {n} rows")
    grp = np.asarray(group_of_row, np.int64).reshape(-1)
    if G == 0 or grp.min() < 0 or grp.max() >= G:
      raise ValueError(f"group_of_row must index the {G} shared prefixes, got range "
                       f"[{grp.min()}, {grp.max()}]")
    cands = np.asarray(candidate_ids, np.int32).reshape(-1)
    if cands.size == 0 or cands.min() < 0 or cands.max() >= self.cfg.vocab_size:
      raise ValueError(f"candidate_ids {cands.tolist()} must be non-empty ids below "
                       f"vocab_size={self.cfg.vocab_size}")
    s_rows = [np.asarray(s, np.int32).reshape(-1) for s in shared]
    r_rows = [np.asarray(r, np.int32).reshape(-1) for r in rests]
    for i, r in enumerate(r_rows):
      if len(r) == 0 and len(s_rows[grp[i]]) == 0:
        raise ValueError(f"row {i}: its shared prefix and its rest are both empty")

    # Multi-host: each process passes its own groups and rows; the shapes are agreed by all.
    mult = local_batch_multiple(self.mesh)
    g_G, g_n, longest_s, longest_r = agree_max(G, n, max(len(s) for s in s_rows),
                                               max(1, max(len(r) for r in r_rows)))
    Gb, Nb = _rows_bucket(g_G, mult, least=1), _rows_bucket(g_n, mult)
    has_shared = longest_s > 0
    Ps = _bucket(longest_s, self.shared_buckets) if has_shared else 0
    R = _bucket(longest_r, self.rest_buckets)

    s_tok = np.full((Gb, Ps), self.pad_id, np.int32)
    s_seg = np.zeros((Gb, Ps), np.int32)
    s_pos = np.zeros((Gb, Ps), np.int32)
    for g, s in enumerate(s_rows):
      if len(s):
        s_tok[g, Ps - len(s):], s_seg[g, Ps - len(s):] = s, 1
        s_pos[g, Ps - len(s):] = np.arange(len(s))
    r_tok = np.full((Nb, R), self.pad_id, np.int32)
    r_seg = np.zeros((Nb, R), np.int32)
    r_pos = np.zeros((Nb, R), np.int32)
    group_N = np.zeros((Nb,), np.int32)
    group_N[:n] = grp
    group_N += jax.process_index() * Gb  # this process's groups in the global [processes x Gb]
    for i, r in enumerate(r_rows):
      start = len(s_rows[grp[i]])
      if len(r):
        r_tok[i, R - len(r):], r_seg[i, R - len(r):] = r, 1
        r_pos[i, R - len(r):] = start + np.arange(len(r))

    self.tokens_real += sum(len(x) for x in s_rows) + sum(len(x) for x in r_rows)
    self.tokens_padded += Gb * Ps + Nb * R
    with mesh_lib.use_mesh(self.mesh):
      args = put_rows(self.mesh, s_tok, s_seg, s_pos, r_tok, r_seg, r_pos, group_N)
      lp_rows, lp_shared = self._fn(has_shared, params, *args, jnp.asarray(cands))
    lp_rows, lp_shared = np.array(local_rows(lp_rows)[:n]), local_rows(lp_shared)
    empty = np.array([len(r) == 0 for r in r_rows])
    if empty.any():   # the verdict is read right after the shared part
      lp_rows[empty] = lp_shared[grp[empty]]
    return lp_rows.astype(np.float32)

  def verdict_logprobs_unshared(self, params, prompts: Sequence[Sequence[int]],
                                candidate_ids: Sequence[int]) -> np.ndarray:
    """The same read-out with no reuse (every prompt whole): the baseline of the benchmark."""
    return self.verdict_logprobs(params, [[]], prompts, [0] * len(prompts), candidate_ids)


def split_shared(prompts: Sequence[Sequence[int]], group_of_row: Sequence[int]
                 ) -> tuple[list[list[int]], list[list[int]]]:
  """(shared per group, rest per row) from whole prompts: the longest common token prefix of
  each group's rows, leaving every row at least its last token (for judges that tokenise
  whole prompts)."""
  groups: dict[int, list[int]] = {}
  for i, g in enumerate(group_of_row):
    groups.setdefault(int(g), []).append(i)
  G = max(groups) + 1 if groups else 0
  shared: list[list[int]] = [[] for _ in range(G)]
  for g, rows in groups.items():
    first = list(prompts[rows[0]])
    k = min(len(prompts[i]) for i in rows) - 1     # every row keeps >= 1 token of its own
    for i in rows[1:]:
      p = prompts[i]
      m = min(k, len(p))
      j = 0
      while j < m and p[j] == first[j]:
        j += 1
      k = j
    shared[g] = first[:k]
  rests = [list(prompts[i])[len(shared[int(g)]):] for i, g in enumerate(group_of_row)]
  return shared, rests
