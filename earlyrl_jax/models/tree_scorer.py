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

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.models.scoring import agree_max, local_batch_multiple, local_rows, put_rows
from earlyrl_jax.parallel import mesh as mesh_lib

ROW_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192)
MIN_ROWS = 1
READ_CHUNK = 64   # reads per vocabulary-projection block


class Reads(NamedTuple):
  """Per prompt, at each read position p (the distribution of the token after p)."""
  verdicts: list[np.ndarray]   # float32 [n_reads, n_cand]: log-softmax at the candidate ids
  logprobs: list[np.ndarray]   # float32 [n_reads]: log p(target)
  gaps: list[np.ndarray]       # float32 [n_reads]: log p(top token) - log p(target)


class _Trie:
  """Token trie of one group: node = one token; children keyed by token id."""

  def __init__(self):
    self.token: list[int] = []
    self.depth: list[int] = []
    self.children: list[dict[int, int]] = [{}]    # node 0 is the root (no token)
    self.parent: list[int] = [-1]

  @property
  def size(self) -> int:
    return len(self.children) - 1

  def new_tokens(self, ids: Sequence[int]) -> int:
    """Tokens `insert(ids)` would add (those after the longest shared beginning)."""
    node = 0
    for d, t in enumerate(ids):
      node = self.children[node].get(int(t))
      if node is None:
        return len(ids) - d
    return 0

  def insert(self, ids: Sequence[int]) -> list[int]:
    """The node of each token of `ids` (created where new)."""
    node, path = 0, []
    for d, t in enumerate(ids):
      nxt = self.children[node].get(int(t))
      if nxt is None:
        nxt = len(self.children)
        self.children[node][int(t)] = nxt
        self.children.append({})
        self.parent.append(node)
        self.token.append(int(t))
        self.depth.append(d)
      node = nxt
      path.append(node)
    return path

  def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Depth-first (tokens, positions, subtree ends, slot of each node); slots count from 0."""
    n = len(self.children) - 1
    slot = np.zeros((n + 1,), np.int64)
    end = np.zeros((n + 1,), np.int64)
    order, stack, nxt = [], [(0, False)], 0
    while stack:
      node, done = stack.pop()
      if done:
        end[node] = nxt
        continue
      if node:
        slot[node] = nxt
        nxt += 1
        order.append(node)
      stack.append((node, True))
      for child in reversed(list(self.children[node].values())):
        stack.append((child, False))
    tok = np.array([self.token[i - 1] for i in order], np.int32)
    pos = np.array([self.depth[i - 1] for i in order], np.int32)
    until = np.array([end[i] for i in order], np.int32)
    return tok, pos, until, slot


class TreeScorer:
  """`read(params, prompts, groups, reads, ...)`: next-token read-outs of many prompts, packed."""

  def __init__(self, graphdef, *, mesh=None, pad_id: int = 0, row_buckets: Sequence[int] = ROW_BUCKETS,
               max_rows: int = 64, min_row_len: int = 256):
    self.graphdef, self.mesh, self.pad_id = graphdef, mesh, pad_id
    self.row_buckets = tuple(sorted(int(b) for b in row_buckets))
    self.min_row_len = int(min_row_len)
    self.max_rows = int(max_rows)
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
    # Rows of L slots: the smallest bucket that holds the longest prompt (the attention is a
    # dense [L, L] per row, so rows stay short); a group's trie grows up to L tokens, then the
    # group goes on in a new trie.
    (g_longest,) = agree_max(max([len(p) for p in prompts] + [1]))
    L = next((b for b in self.row_buckets if b >= max(g_longest, self.min_row_len)), g_longest)
    tries: dict = {}
    open_trie: dict = {}
    where = []   # per prompt: (trie key, node of each token)
    for i, p in enumerate(prompts):
      key = open_trie.get(groups[i])
      if key is None or tries[key].size + tries[key].new_tokens(p) > L:
        key = (len(tries),)
        open_trie[groups[i]] = key
        tries[key] = _Trie()
      where.append((key, tries[key].insert(p)))
    laid = {k: t.layout() for k, t in tries.items()}
    # First fit, largest trie first, into the rows.
    sizes = {k: len(v[0]) for k, v in laid.items()}
    rows: list[list] = []
    fill: list[int] = []
    place = {}
    for k in sorted(sizes, key=lambda k: -sizes[k]):
      r = next((j for j, f in enumerate(fill) if f + sizes[k] <= L), None)
      if r is None:
        rows.append([])
        fill.append(0)
        r = len(rows) - 1
      place[k] = (r, fill[r], len(rows[r]) + 1)   # row, first slot, segment id
      rows[r].append(k)
      fill[r] += sizes[k]
    # Reads: per row, the slot of each read token; targets default to the next prompt token.
    per_row: list[list[tuple[int, int, int, int]]] = [[] for _ in rows]   # (slot, target, prompt, k)
    for i, (key, path) in enumerate(where):
      r, start, _ = place[key]
      slot_of = laid[key][3]
      for j, pidx in enumerate(reads[i]):
        t = (targets[i][j] if targets is not None
             else (int(prompts[i][pidx + 1]) if pidx + 1 < len(prompts[i]) else 0))
        per_row[r].append((start + int(slot_of[path[pidx]]), int(t), i, j))
    mult = local_batch_multiple(self.mesh)
    n_rows, n_reads = len(rows), max([len(x) for x in per_row] + [1])
    g_rows, g_reads = agree_max(max(n_rows, 1), n_reads)
    cap = -(-max(1, self.max_rows * 256 // L) // mult) * mult   # rows per call: ~max_rows x 256 slots
    R = min(-(-max(MIN_ROWS, 1 << (g_rows - 1).bit_length()) // mult) * mult, cap)
    calls = -(-g_rows // R)
    N = max(8, 1 << (g_reads - 1).bit_length())
    if N > READ_CHUNK:
      N = -(-N // READ_CHUNK) * READ_CHUNK
    R_all = R * calls
    tok = np.full((R_all, L), self.pad_id, np.int32)
    pos = np.zeros((R_all, L), np.int32)
    seg = np.zeros((R_all, L), np.int32)
    until = np.zeros((R_all, L), np.int32)
    slots = np.zeros((R_all, N), np.int32)
    tgts = np.zeros((R_all, N), np.int32)
    for key, (r, start, sid) in place.items():
      t, p, u, _ = laid[key]
      sl = slice(start, start + len(t))
      tok[r, sl], pos[r, sl], seg[r, sl], until[r, sl] = t, p, sid, start + u
    for r, items in enumerate(per_row):
      for j, (s, t, _, _) in enumerate(items):
        slots[r, j], tgts[r, j] = s, t
    self.tokens_prompts += sum(len(p) for p in prompts)
    self.tokens_tries += sum(sizes.values())
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
