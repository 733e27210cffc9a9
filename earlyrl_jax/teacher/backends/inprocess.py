"""The teacher's model in this JAX program: the `Backend` contract over a Flax model.

    backend = InProcessBackend.from_teacher(load_teacher("/models/SmolLM2"))
    backend.continuation_logprobs(["...Answer:"] * 2, [" Yes", " No"])      # float64 [2]
    backend.generate(["...Rewrite:"], max_new_tokens=128, stop=["</rewrite>"])

Scoring (`continuation_logprobs`, and `token_logprobs` for the server's echo): rows are grouped
by their shared token prefix (a judge asks 2-3 answers of one prompt: Option 1/2, YES/NO, the
factuality labels); each group's prefix is prefilled once into a KV cache, gathered to its rows,
and only the continuation tokens run per row:

    shared [G, Ps] (left-padded) ──prefill──▶ cache [G, Ps+R], log p(shared[t+1]) [G, Ps]
        ──take(group_of_row)──▶ [N, Ps+R]; rest [N, R] (right-padded) ──▶ log p(rest[j+1]) [N, R]
    log p(rest[0]) = the shared part's last position, per row

Log-probs come from `models/scoring.logprobs_from_hidden` (chunks of the vocabulary projection):
no [B, T, V] buffer. Rows, groups and both lengths are bucketed (powers of two and fixed length
buckets) and agreed across processes, so a new batch reuses a compiled program.

Generation runs the compiled sampler (prefill + scan decode, K-way fan-out for n samples, EOS and
stop sequences inside the loop); stop strings are also cut on the text, as servers do. Rows are
padded to a power of two so that calls of different sizes share programs.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.models.scoring import (agree_max, local_batch_multiple, local_rows,
                                        logprobs_from_hidden, lockstep_chunks, put_rows)
from earlyrl_jax.models.transformer import KVCache, init_cache
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.teacher.backends.base import TeacherFailure, prompt_ids, scoring_ids

SHARED_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
REST_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _bucket(n: int, buckets: Sequence[int]) -> int:
  return next((b for b in buckets if n <= b), n)


def _pow2(n: int, least: int = 1) -> int:
  return max(least, 1 << max(0, (n - 1).bit_length()))


def group_rows(ids: Sequence[Sequence[int]], min_share: float = 0.5) -> tuple[list[int], list[int]]:
  """(group of each row, shared length per group) for rows that arrive prompt-major: a row joins
  the group before it when their common prefix covers `min_share` of the shorter (what a served
  request of prompt+answer rows looks like). Each row keeps at least its last token."""
  group, shared, firsts = [], [], []
  for row in ids:
    if firsts:
      first = firsts[-1]
      m = min(len(row), len(first), shared[-1] + 1) - 1
      j = 0
      while j < m and row[j] == first[j]:
        j += 1
      if j >= max(1, min_share * min(len(row), len(first))):
        shared[-1] = min(shared[-1], j)
        group.append(len(firsts) - 1)
        continue
    firsts.append(list(row))
    shared.append(len(row) - 1)
    group.append(len(firsts) - 1)
  return group, shared


class InProcessBackend:
  """`Backend` (teacher/backends/base.py) over (graphdef, params, tokenizer) on `mesh`."""

  def __init__(self, graphdef, params, tokenizer, *, model_cfg, mesh=None, name: str = "",
               max_len: int | None = None, max_rows: int = 64, max_cache_bytes: int = 2 * 2**30):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.cfg, self.mesh = model_cfg, mesh
    self.name = name or f"in-process model ({model_cfg.num_params() / 1e6:.0f}M params)"
    self.max_len = int(min(max_len or model_cfg.max_seq_len, model_cfg.max_seq_len))
    self.max_rows = int(max_rows)
    self.max_cache_bytes = int(max_cache_bytes)   # the gathered KV cache of one scoring call
    self.failures: collections.Counter = collections.Counter()
    self.num_compilations = 0                     # tests check that calls reuse programs
    out = None if mesh is None else (mesh_lib.named_sharding(mesh, ("batch", None)),) * 3
    self._score = jax.jit(self._score_impl, static_argnums=(0,), out_shardings=out)
    self._sampler = None

  @classmethod
  def from_teacher(cls, teacher, *, name: str = "", **kw) -> "InProcessBackend":
    """From the teacher bundle (`teacher/teacher.py`'s Teacher: graphdef, params, tokenizer, mesh)."""
    where = teacher.info.get("hf_dir") or teacher.info.get("path") or "embedded teacher"
    kw["max_len"] = min(kw.get("max_len") or teacher.max_len, teacher.max_len)
    return cls(teacher.graphdef, teacher.params, teacher.tokenizer, model_cfg=teacher.model_cfg,
               mesh=teacher.mesh, name=name or f"{where} (in-process)", **kw)

  # ----------------------------------------------------------------- scoring
  def _score_impl(self, with_shared: bool, params, s_tok, s_seg, s_pos, s_tgt, r_tok, r_seg, r_pos,
                  r_tgt, group_N, first_N, last_N):
    self.num_compilations += 1  # runs only while tracing
    model = nnx.merge(self.graphdef, params)
    G, Ps = s_tok.shape
    N, R = r_tok.shape
    cache = init_cache(self.cfg, G, Ps + R)
    h_s, cache = model.hidden_states(s_tok, positions=s_pos, segment_ids=s_seg, cache=cache)
    # The shared tokens' own log-probs only when asked (a server's echo): verdicts need none,
    # and the vocabulary projection of every prompt position is a fifth of a 135M model's work.
    lp_s = (logprobs_from_hidden(model, h_s, s_tgt)[0] if with_shared
            else jnp.zeros((G, Ps), jnp.float32))                            # [G, Ps]
    last = model.logits_from_hidden(h_s[:, -1:])[:, 0]                        # [G, V] float32
    last = last - jax.nn.logsumexp(last, axis=-1, keepdims=True)
    lp_first = last[group_N, first_N]                                         # [N]
    take = lambda a: mesh_lib.constrain(jnp.take(a, group_N, axis=0),
                                        ("batch", "cache_length", "kv_heads", "head_dim"))
    rows = KVCache(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)),
                   segment_ids=jnp.take(cache.segment_ids, group_N, axis=0), index=cache.index)
    h_r, _ = model.hidden_states(r_tok, positions=r_pos, segment_ids=r_seg, cache=rows)
    lp_r, _ = logprobs_from_hidden(model, h_r, r_tgt)                        # [N, R]
    # The model's first choice after each row's last token and its log-prob (a server's echo
    # with max_tokens=1 at temperature 0 answers it from this pass).
    h_end = jnp.take_along_axis(h_r, last_N[:, None, None], axis=1)          # [N, 1, D]
    end = jax.nn.log_softmax(model.logits_from_hidden(h_end)[:, 0], axis=-1)  # [N, V]
    nxt = jnp.argmax(end, axis=-1)
    nxt_lp = jnp.take_along_axis(end, nxt[:, None], axis=-1)[:, 0]
    return (lp_s, jnp.concatenate([lp_first[:, None], lp_r], axis=1),
            jnp.stack([nxt.astype(jnp.float32), nxt_lp], axis=1))

  def _run_groups(self, shared, rests, group_of_row, with_shared: bool):
    """Per group: log p of shared tokens 1.. (len-1; zeros unless with_shared); per row: log p
    of each rest token; per row: the greedy next token and its log-prob."""
    G, n = len(shared), len(rests)
    mult = local_batch_multiple(self.mesh)
    g_G, g_n, longest_s, longest_r = agree_max(G, n, max(map(len, shared)), max(map(len, rests)))
    Gb, Nb = -(-_pow2(g_G, 4) // mult) * mult, -(-_pow2(g_n, 8) // mult) * mult
    Ps, R = _bucket(longest_s, SHARED_BUCKETS), _bucket(longest_r, REST_BUCKETS)
    if Ps + R > self.cfg.max_seq_len:   # the bucket passes the context, the rows may not
      Ps = max(longest_s, self.cfg.max_seq_len - R)
    if Ps + R > self.cfg.max_seq_len:
      raise ValueError(f"a scored row needs {longest_s + longest_r} tokens, more than the "
                       f"teacher's context ({self.cfg.max_seq_len})")
    s = {k: np.zeros((Gb, Ps), np.int32) for k in ("tok", "seg", "pos", "tgt")}
    for g, ids in enumerate(shared):
      L = len(ids)
      s["tok"][g, Ps - L:], s["seg"][g, Ps - L:], s["pos"][g, Ps - L:] = ids, 1, np.arange(L)
      s["tgt"][g, Ps - L:Ps - 1] = ids[1:]
    r = {k: np.zeros((Nb, R), np.int32) for k in ("tok", "seg", "pos", "tgt")}
    group_N, first_N, last_N = (np.zeros((Nb,), np.int32) for _ in range(3))
    for i, ids in enumerate(rests):
      L, g = len(ids), group_of_row[i]
      r["tok"][i, :L], r["seg"][i, :L] = ids, 1
      r["pos"][i, :L] = len(shared[g]) + np.arange(L)
      r["tgt"][i, :L - 1] = ids[1:]
      group_N[i], first_N[i], last_N[i] = g, ids[0], L - 1
    group_N += jax.process_index() * Gb   # this process's groups in the global batch
    with mesh_lib.use_mesh(self.mesh):
      args = put_rows(self.mesh, s["tok"], s["seg"], s["pos"], s["tgt"], r["tok"], r["seg"],
                      r["pos"], r["tgt"], group_N, first_N, last_N)
      lp_s, lp_r, nxt = self._score(bool(with_shared), self.params, *args)
    lp_s, lp_r, nxt = local_rows(lp_s), local_rows(lp_r), local_rows(nxt)
    shared_lp = [lp_s[g, Ps - len(ids):Ps - 1].astype(np.float64) for g, ids in enumerate(shared)]
    rest_lp = [lp_r[i, :len(ids)].astype(np.float64) for i, ids in enumerate(rests)]
    return shared_lp, rest_lp, [(int(nxt[i, 0]), float(nxt[i, 1])) for i in range(len(rests))]

  def score_groups(self, shared, rests, group_of_row, with_shared: bool = False):
    """(per group: log p of shared tokens 1.., per row: log p of each rest token, per row: the
    greedy next token and its log-prob), by `_run_groups` in calls of at most `max_rows` rows and `max_cache_bytes` of gathered KV
    cache (whole groups per call; every process makes the same number of calls)."""
    per_slot = self.cfg.n_layers * self.cfg.n_kv_heads * self.cfg.head_dim * 2 * 4
    members = collections.defaultdict(list)
    for i, g in enumerate(group_of_row):
      members[g].append(i)
    calls, cur, rows, width = [], [], 0, 0
    for g in range(len(shared)):
      w = max(width, len(shared[g]) + max(len(rests[i]) for i in members[g]))
      k = len(members[g])
      if cur and (rows + k > self.max_rows or (rows + k) * w * per_slot > self.max_cache_bytes):
        calls.append(cur)
        cur, rows, w = [], 0, len(shared[g]) + max(len(rests[i]) for i in members[g])
      cur.append(g)
      rows, width = rows + k, w
    if cur:
      calls.append(cur)
    shared_lp, rest_lp, nxt = [None] * len(shared), [None] * len(rests), [None] * len(rests)
    for c in lockstep_chunks(len(calls), 1):
      groups = calls[c][0] if calls[c] else [0]          # a process with fewer calls repeats one
      idx = [i for g in groups for i in members[g]]
      local = {g: j for j, g in enumerate(groups)}
      s_lp, r_lp, r_nxt = self._run_groups([shared[g] for g in groups], [rests[i] for i in idx],
                                           [local[group_of_row[i]] for i in idx], with_shared)
      if calls[c]:
        for g, x in zip(groups, s_lp):
          shared_lp[g] = x
        for i, x, y in zip(idx, r_lp, r_nxt):
          rest_lp[i], nxt[i] = x, y
    return shared_lp, rest_lp, nxt

  def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not len(prompts):
      return np.zeros((0,), np.float64)
    rows = [scoring_ids(self.tokenizer, p, c) for p, c in zip(prompts, continuations)]
    for ids, _ in rows:
      if len(ids) > self.max_len:
        raise ValueError(f"{self.name}: a prompt + continuation of {len(ids)} tokens exceeds the "
                         f"teacher's context ({self.max_len} tokens: teacher.max_len)")
    keys: dict[tuple, int] = {}
    group = [keys.setdefault(tuple(ids[:k0]), len(keys)) for ids, k0 in rows]
    shared = [list(k) for k in keys]
    try:
      _, rest_lp, _ = self.score_groups(shared, [ids[k0:] for ids, k0 in rows], group)
    except (ValueError, TypeError):
      raise
    except Exception as e:  # a device or compiler error: no verdict can be made up from it
      self.failures["error"] += len(rows)
      raise TeacherFailure(f"{self.name}: scoring failed: {type(e).__name__}: {e}") from e
    return np.array([x.sum() for x in rest_lp], np.float64)

  def token_logprobs(self, rows: Sequence[Sequence[int]]):
    """(per row: log p(token t | tokens < t) for t >= 1, len - 1 values; per row: the greedy next
    token and its log-prob, None for a one-token row): what a server's `echo` returns. Adjacent
    rows with a long common prefix share its prefill."""
    lps: list[np.ndarray] = [np.zeros((0,), np.float64)] * len(rows)
    ends: list[tuple[int, float] | None] = [None] * len(rows)
    live = [i for i, r in enumerate(rows) if len(r) >= 2]
    if not live:
      return lps, ends
    ids = [list(rows[i]) for i in live]
    group, shared_len = group_rows(ids)      # every shared part holds >= 1 token
    shared = [ids[group.index(g)][:shared_len[g]] for g in range(len(shared_len))]
    s_lp, r_lp, nxt = self.score_groups(shared, [r[shared_len[g]:] for r, g in zip(ids, group)],
                                        group, with_shared=True)
    for j, (i, g) in enumerate(zip(live, group)):
      lps[i], ends[i] = np.concatenate([s_lp[g], r_lp[j]]), nxt[j]
    return lps, ends

  # ----------------------------------------------------------------- generation
  @property
  def sampler(self):
    if self._sampler is None:
      from earlyrl_jax.sampling.sampler import Sampler
      model = nnx.merge(self.graphdef, self.params)
      self._sampler = Sampler(model, mesh=self.mesh, pad_id=self.tokenizer.pad_id,
                              max_cache_len=self.max_len)
    return self._sampler

  def _stop_sequences(self, stop: Sequence[str]) -> list[list[int]]:
    seqs = []
    for s in stop:
      for ids in (self.tokenizer.encode_continuation(s), self.tokenizer.encode(s)):
        if ids and list(ids) not in seqs:
          seqs.append(list(ids))
    return seqs

  def generate_ids(self, rows: Sequence[Sequence[int]], *, max_new_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                   stop: Sequence[str] = (), seed: int = 0) -> list[list[dict]]:
    """n samples per token-id prompt: {'text', 'tokens', 'logprobs', 'finish_reason'} each."""
    if max_new_tokens < 1 or n < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} and n={n} must be >= 1")
    tok = self.tokenizer
    eos = tok.eos_id
    stop = [s for s in stop if s]
    seqs = self._stop_sequences(stop)
    out: list[list[dict]] = []
    room = self.max_len - max_new_tokens
    for i, r in enumerate(rows):
      if not len(r) or len(r) > room:
        raise ValueError(f"{self.name}: prompt {i} has {len(r)} tokens; 1 to {room} fit before "
                         f"max_new_tokens={max_new_tokens} in the teacher's context ({self.max_len})")
    key = jax.random.key(seed)
    for c in lockstep_chunks(len(rows), self.max_rows):
      part = [list(x) for x in rows[c]]
      size = _pow2(max(len(part), 1))
      padded = part + [part[0] if part else [tok.pad_id]] * (size - len(part))
      res = self.sampler.sample(
          self.params, padded, max_new_tokens=int(max_new_tokens), key=jax.random.fold_in(key, c.start),
          temperature=float(temperature), top_p=float(top_p), num_samples=int(n),
          stop_tokens=[eos] if eos is not None else (), stop_sequences=seqs or None,
          early_stop=True)
      for b in range(len(part)):
        samples = []
        for k in range(n):
          row = b * n + k
          ids = res.tokens[row, :int(res.lengths[row])].tolist()
          lps = res.logprobs[row, :int(res.lengths[row])].tolist()
          reason = "length"
          if ids and eos is not None and ids[-1] == eos:
            ids, lps, reason = ids[:-1], lps[:-1], "stop"
          text = tok.decode_continuation(ids)
          cut = min((text.find(s) for s in stop if s in text), default=-1)
          if cut >= 0:
            text, reason = text[:cut], "stop"
          samples.append({"text": text, "tokens": ids, "logprobs": lps, "finish_reason": reason})
        out.append(samples)
    return out

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, n: int = 1, stop: Sequence[str] = (), seed: int = 0
               ) -> list[list[str | None]]:
    rows = [prompt_ids(self.tokenizer, p) for p in prompts]
    if not rows:
      return []
    try:
      res = self.generate_ids(rows, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, n=n, stop=stop, seed=seed)
    except (ValueError, TypeError):
      raise
    except Exception as e:
      self.failures["error"] += len(rows) * n
      raise TeacherFailure(f"{self.name}: generation failed: {type(e).__name__}: {e}") from e
    return [[s["text"] for s in samples] for samples in res]
