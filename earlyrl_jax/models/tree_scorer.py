"""Many prompts that share beginnings, read in a few fixed-shape forward passes (no padding waste).

A judge's prompts for one window repeat the same head (instructions + the quoted prefix), a
candidate's safety prompts cut after each of its sentences repeat its earlier sentences, an
edit prompt is read at every CHECK token, and a surprise row repeats the window's prefix for
each candidate. Here the prompts of a group become one token trie, laid out depth first
(every shared token once), and tries are packed into rows of one length:

    group g: prompts ──trie──▶ [head | tail a | tail b' | tail b'' ...]  (visible_until: a token
                                                                          is hidden outside its subtree)
    tries ──first fit──▶ rows [R, L] (one segment per trie) ──one forward──▶ hidden states
        ──gather the read slots──▶ [R, n_reads, V] logits ──▶ verdict log-probs, gaps, log-probs

Every read equals the forward pass of its own prompt alone (models/transformer.py: trees in a
row; positions are each token's depth). Rows, row length and reads per row come from a few
buckets, so a new batch rarely compiles, and a row holds several tries, so little is padding.
Multi-host: each process passes its own prompts; the shapes are agreed by all.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.models.scoring import agree_max, local_batch_multiple, local_rows, put_rows
from earlyrl_jax.parallel import mesh as mesh_lib

ROW_BUCKETS = (128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192)
MIN_ROWS = 1
READ_CHUNK = 64   # reads per vocabulary-projection block


# Few programs for a stream of batches (a SIP run's judge and editor): rows of at least 192 slots
# (a window's judge prompts, ~100-170 tokens each, share one trie), 4 rows per forward pass,
# three read buckets. Measured on the SIP step's own calls (benchmarks/RESULTS.md): 2 programs
# instead of 12, and 0.8 s of CPU per step instead of 1.2 s (less padding than row buckets).
FEW_SHAPES = dict(min_row_len=192, rows_per_call=4, read_buckets=(16, 64, 192))


class Reads(NamedTuple):
  """Per prompt, at each read position p (the distribution of the token after p)."""
  verdicts: list[np.ndarray]   # float32 [n_reads, n_cand]: log-softmax at the candidate ids
  logprobs: list[np.ndarray]   # float32 [n_reads]: log p(target)
  gaps: list[np.ndarray]       # float32 [n_reads]: log p(top token) - log p(target)


def _rows_bucket(n: int) -> int:
  """Powers of two up to 8, then multiples of 8: few programs, under 1/3 of the rows padding."""
  return max(MIN_ROWS, 1 << (n - 1).bit_length()) if n <= 8 else -(-n // 8) * 8


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
  n = min(len(a), len(b))
  diff = np.flatnonzero(a[:n] != b[:n])
  return int(diff[0]) if diff.size else n


def _trie_layout(seqs: list[np.ndarray]):
  """The token trie of `seqs` laid out depth first: (tokens, positions, visible_until, the slot
  of every token of every sequence). In lexicographic order each sequence adds the tokens after
  its longest common beginning with the previous one, and a token's subtree ends where the
  first later sequence leaves its path."""
  order = sorted(range(len(seqs)), key=lambda i: seqs[i].tolist())
  tok, pos, until = [], [], []
  paths: list[np.ndarray] = [None] * len(seqs)
  prev, prev_path, size = np.zeros((0,), np.int32), np.zeros((0,), np.int64), 0
  for i in order:
    s = seqs[i]
    k = _lcp(prev, s)
    for slot in prev_path[k:]:   # nodes the previous path opened below depth k end here
      until[slot] = size
    new = np.arange(size, size + len(s) - k)
    tok.append(s[k:])
    pos.append(np.arange(k, len(s), dtype=np.int32))
    until.extend([0] * len(new))
    path = np.concatenate([prev_path[:k], new])
    paths[i] = path
    prev, prev_path, size = s, path, size + len(new)
  for slot in prev_path:
    until[slot] = size
  cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros((0,), dt)
  return cat(tok, np.int32), cat(pos, np.int32), np.asarray(until, np.int32), paths


class TreeScorer:
  """`read(params, prompts, groups, reads, ...)`: next-token read-outs of many prompts, packed."""

  def __init__(self, graphdef, *, mesh=None, pad_id: int = 0, row_buckets: Sequence[int] = ROW_BUCKETS,
               max_rows: int = 64, min_row_len: int = 128, rows_per_call: int | None = None,
               read_buckets: Sequence[int] | None = None):
    """rows_per_call: a fixed number of rows per forward pass (more calls for more rows), so
    every batch runs the same program and pads fewer than rows_per_call rows; None: rows in
    buckets up to ~max_rows x 256 slots per call. read_buckets: reads per row (each at most
    READ_CHUNK or a multiple of it), fewer programs than the default powers of two."""
    self.graphdef, self.mesh, self.pad_id = graphdef, mesh, pad_id
    self.row_buckets = tuple(sorted(int(b) for b in row_buckets))
    self.min_row_len = int(min_row_len)
    self.max_rows = int(max_rows)
    self.rows_per_call = None if rows_per_call is None else int(rows_per_call)
    self.read_buckets = None if read_buckets is None else tuple(sorted(int(b) for b in read_buckets))
    for b in self.read_buckets or ():
      if b < 1 or (b > READ_CHUNK and b % READ_CHUNK):
        raise ValueError(f"read_buckets: {b} is not in [1, {READ_CHUNK}] nor a multiple of {READ_CHUNK}")
    self.num_compilations = 0
    self.tokens_prompts = 0   # tokens of the prompts as given (what rows of their own would run)
    self.tokens_tries = 0     # tokens of the tries (each shared beginning once)
    self.tokens_packed = 0    # slots the forward passes ran (tries + padding)
    out = None if mesh is None else (mesh_lib.named_sharding(mesh, ("batch", None, None)),
                                     *(mesh_lib.named_sharding(mesh, ("batch", None)),) * 2)
    self._fn = jax.jit(self._impl, out_shardings=out)

  def _impl(self, params, tok_RxL, pos_RxL, seg_RxL, until_RxL, slot_RxN, tgt_RxN, cand_C):
    self.num_compilations += 1   # runs only while tracing
    model = nnx.merge(self.graphdef, params)
    h, _ = model.hidden_states(tok_RxL, positions=pos_RxL, segment_ids=seg_RxL, visible_until=until_RxL)
    h_read = jnp.take_along_axis(h, slot_RxN[:, :, None], axis=1)              # [R, N, D]
    R, N, D = h_read.shape
    c = min(N, READ_CHUNK)   # the vocabulary projection a chunk of reads at a time: [R, c, V]

    def chunk(args):
      h_c, t_c = args
      logits = model.logits_from_hidden(h_c)
      lse = jax.nn.logsumexp(logits, axis=-1)
      tgt = jnp.take_along_axis(logits, t_c[:, :, None], axis=-1)[..., 0]
      return jnp.take(logits, cand_C, axis=-1) - lse[..., None], tgt - lse, logits.max(axis=-1) - tgt
    split = lambda x: jnp.swapaxes(x.reshape((R, N // c, c) + x.shape[2:]), 0, 1)
    out = jax.lax.map(chunk, (split(h_read), split(tgt_RxN)))
    join = lambda x: jnp.swapaxes(x, 0, 1).reshape((R, N) + x.shape[3:])
    return tuple(join(x) for x in out)

  def read(self, params, prompts: Sequence[Sequence[int]], groups: Sequence, reads: Sequence[Sequence[int]],
           *, targets: Sequence[Sequence[int]] | None = None,
           candidate_ids: Sequence[int] = (0,)) -> Reads:
    """Read-outs at positions `reads[i]` of prompt i (the next-token distribution after that
    token), prompts of the same `groups[i]` sharing one trie. targets[i]: the token whose
    log-prob and gap is read at each position (default: the prompt's next token, 0 at its end)."""
    n = len(prompts)
    if not (len(groups) == len(reads) == n) or (targets is not None and len(targets) != n):
      raise ValueError(f"read: {n} prompts, {len(groups)} groups, {len(reads)} read lists")
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    cand = np.asarray(candidate_ids, np.int32).reshape(-1)
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"read: prompt {i} is empty")
      for r in reads[i]:
        if not 0 <= r < len(p):
          raise ValueError(f"read: position {r} outside prompt {i} of {len(p)} tokens")
    # Rows of L slots: the smallest bucket that holds the longest prompt. The attention is a
    # dense [L, L] per row, so rows stay short (a small model's forward pass costs 1.5x per
    # token at L=256 what it costs at 128); a group's trie grows up to L tokens, then the group
    # goes on in a new trie.
    (g_longest,) = agree_max(max([len(p) for p in prompts] + [1]))
    L = next((b for b in self.row_buckets if b >= max(g_longest, self.min_row_len)), g_longest)
    # Each group's prompts in tries of at most L tokens (a group too large for one row goes on
    # in another trie), then first fit, largest trie first, into rows.
    members: dict = {}
    for i, g in enumerate(groups):
      members.setdefault(g, []).append(i)
    tries: list[list[int]] = []
    for idx in members.values():
      idx = sorted(idx, key=lambda i: prompts[i].tolist())
      cur, size, prev = [], 0, None
      for i in idx:
        add = len(prompts[i]) - (_lcp(prev, prompts[i]) if prev is not None else 0)
        if cur and size + add > L:
          tries.append(cur)
          cur, size, add = [], 0, len(prompts[i])
        cur.append(i)
        size += add
        prev = prompts[i]
      if cur:
        tries.append(cur)
    laid = [_trie_layout([prompts[i] for i in t]) for t in tries]
    sizes = [len(x[0]) for x in laid]
    rows: list[list[int]] = []
    fill: list[int] = []
    place = [None] * len(tries)   # trie -> (row, first slot, segment id)
    for k in sorted(range(len(tries)), key=lambda k: -sizes[k]):
      r = next((j for j, f in enumerate(fill) if f + sizes[k] <= L), None)
      if r is None:
        rows.append([])
        fill.append(0)
        r = len(rows) - 1
      place[k] = (r, fill[r], len(rows[r]) + 1)
      rows[r].append(k)
      fill[r] += sizes[k]
    where = [None] * n   # prompt -> (row, slot of each token)
    for k, t in enumerate(tries):
      r, start, _ = place[k]
      for i, path in zip(t, laid[k][3]):
        where[i] = (r, start + path)
    # Reads: per row, the slot of each read token; targets default to the next prompt token.
    per_row: list[list[tuple[int, int, int, int]]] = [[] for _ in rows]   # (slot, target, prompt, k)
    for i, (r, slots_i) in enumerate(where):
      p = prompts[i]
      for j, pidx in enumerate(reads[i]):
        t = targets[i][j] if targets is not None else (int(p[pidx + 1]) if pidx + 1 < len(p) else 0)
        per_row[r].append((int(slots_i[pidx]), int(t), i, j))
    mult = local_batch_multiple(self.mesh)
    n_rows, n_reads = len(rows), max([len(x) for x in per_row] + [1])
    g_rows, g_reads = agree_max(max(n_rows, 1), n_reads)
    if self.rows_per_call:
      R = -(-self.rows_per_call // mult) * mult
    else:
      cap = -(-max(1, self.max_rows * 256 // L) // mult) * mult   # rows per call: ~max_rows x 256 slots
      R = min(-(-_rows_bucket(g_rows) // mult) * mult, cap)
    calls = -(-g_rows // R)
    N = next((b for b in self.read_buckets or () if b >= g_reads), None) or max(8, 1 << (g_reads - 1).bit_length())
    if N > READ_CHUNK:
      N = -(-N // READ_CHUNK) * READ_CHUNK
    R_all = R * calls
    tok = np.full((R_all, L), self.pad_id, np.int32)
    pos = np.zeros((R_all, L), np.int32)
    seg = np.zeros((R_all, L), np.int32)
    until = np.zeros((R_all, L), np.int32)
    slots = np.zeros((R_all, N), np.int32)
    tgts = np.zeros((R_all, N), np.int32)
    for k, (r, start, sid) in enumerate(place):
      t, p, u, _ = laid[k]
      sl = slice(start, start + len(t))
      tok[r, sl], pos[r, sl], seg[r, sl], until[r, sl] = t, p, sid, start + u
    for r, items in enumerate(per_row):
      for j, (s, t, _, _) in enumerate(items):
        slots[r, j], tgts[r, j] = s, t
    self.tokens_prompts += sum(len(p) for p in prompts)
    self.tokens_tries += sum(sizes)
    self.tokens_packed += R_all * L
    parts = []
    for c in range(calls):
      sl = slice(c * R, (c + 1) * R)
      with mesh_lib.use_mesh(self.mesh):
        args = put_rows(self.mesh, tok[sl], pos[sl], seg[sl], until[sl], slots[sl], tgts[sl])
        parts.append([local_rows(x) for x in self._fn(params, *args, jnp.asarray(cand))])
    verd, lp, gap = (np.concatenate([p[k] for p in parts]) for k in range(3))
    V = [np.zeros((len(r), cand.size), np.float32) for r in reads]
    LP = [np.zeros((len(r),), np.float32) for r in reads]
    GP = [np.zeros((len(r),), np.float32) for r in reads]
    for r, items in enumerate(per_row):
      for j, (_, _, i, k) in enumerate(items):
        V[i][k], LP[i][k], GP[i][k] = verd[r, j], lp[r, j], gap[r, j]
    return Reads(V, LP, GP)

  def verdict_logprobs(self, params, prompts, groups, candidate_ids) -> np.ndarray:
    """log p(next token = c | prompt) at each prompt's end: float32 [n, n_cand] (the judge's read)."""
    out = self.read(params, prompts, groups, [[len(p) - 1] for p in prompts], candidate_ids=candidate_ids)
    return np.stack([v[0] for v in out.verdicts]) if prompts else np.zeros((0, len(candidate_ids)), np.float32)


@functools.lru_cache(maxsize=8)
def few_shapes_scorer(graphdef, mesh=None, pad_id: int = 0) -> TreeScorer:
  """One TreeScorer with FEW_SHAPES per model (graphdef, mesh, pad id): the embedded teacher's
  editor and judge share its compiled programs."""
  return TreeScorer(graphdef, mesh=mesh, pad_id=pad_id, **FEW_SHAPES)
