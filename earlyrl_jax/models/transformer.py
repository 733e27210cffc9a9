"""Llama-style decoder LM in Flax NNX with a functional KV cache.

RMSNorm, RoPE (with linear or Llama-3 scaling), grouped-query attention, SwiGLU,
optional tied embeddings and qkv bias (Qwen2). Parameters are float32 masters
that carry logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`, `norm`); `earlyrl_jax.parallel.mesh` maps them onto a device mesh.
Computation runs in `ModelConfig.dtype` (bfloat16 on accelerators, float32 on CPU).

Shape letters: B batch, T query length, S key/cache length, D d_model,
N query heads, K kv heads, G = N // K, H head_dim, F d_ff, V vocab, L layers.

Attention masking is one rule used everywhere: a query at slot t may attend to
a key at slot s iff s <= t, both carry the same segment id, and the id is not 0
(0 marks padding / empty cache slots). Training passes packed sequences with
segment ids; the sampler passes left-padded prompts and a cache.

Trees in a row (optional `visible_until`, training and scoring only): a key at slot s is
also hidden from queries at slots >= visible_until[s]. Laid out depth first, a tree of
sequences that share beginnings (a trunk, then several continuations of it, each with RoPE
positions that continue its parent's) fits in one row: every token stays visible until
its node's subtree ends, so a continuation sees its ancestors and never a sibling, and
computes exactly what the row ancestors + continuation computes alone, while the shared
part runs once (a DPO pair shares its window's prefix: train/objectives.py; prompts that
share a head: models/scoring.py). Without it every key stays visible to the row's end.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from earlyrl_jax.parallel.mesh import constrain

_NEG_INF = -1e30  # finite, so fully masked rows (padding) give uniform weights, not NaN


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of the decoder. Field names follow HF Llama where they exist."""
  vocab_size: int = 512
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 384
  max_seq_len: int = 256
  rope_theta: float = 10_000.0
  # None, {'type': 'linear', 'factor': f} or {'type': 'llama3', 'factor': 8,
  # 'low_freq_factor': 1, 'high_freq_factor': 4, 'original_max_position_embeddings': 8192}.
  rope_scaling: dict | None = None
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  qkv_bias: bool = False
  dtype: str = "float32"        # compute dtype: 'float32' or 'bfloat16'
  param_dtype: str = "float32"  # master weights
  remat: bool = False           # rematerialise each block in the backward pass
  init_std: float = 0.02

  def __post_init__(self):
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
              "max_seq_len"):
      if int(getattr(self, f)) <= 0:
        raise ValueError(f"model.{f}={getattr(self, f)} must be positive")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"model.n_heads={self.n_heads} must be a multiple of "
                       f"model.n_kv_heads={self.n_kv_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype={self.dtype!r}: expected 'float32', 'bfloat16' or 'float16'")
    if self.rope_scaling is not None:
      kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
      if kind not in ("linear", "llama3", "default"):
        raise ValueError(f"model.rope_scaling type {kind!r} is not supported "
                         "(supported: 'linear', 'llama3')")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self) -> int:
    """Exact parameter count (matches the built model)."""
    D, F, N, K, H, V = self.d_model, self.d_ff, self.n_heads, self.n_kv_heads, self.head_dim, self.vocab_size
    attn = D * N * H + 2 * D * K * H + N * H * D + (N * H + 2 * K * H if self.qkv_bias else 0)
    block = attn + 3 * D * F + 2 * D
    return V * D + self.n_layers * block + D + (0 if self.tie_embeddings else D * V)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * params (excluding embeddings lookup) + attention."""
    matmul_params = self.num_params() - self.vocab_size * self.d_model * (0 if self.tie_embeddings else 1)
    # Attention scores and weighted sum: 2 matmuls of T x S x H per head, causal
    # halves the useful work; x3 for forward + backward.
    attn = 6 * self.n_layers * self.n_heads * self.head_dim * seq_len
    return 6 * matmul_params + attn


# Preset shapes. The 1B / 8B shapes follow Llama-3.2-1B and Llama-3.1-8B.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                 d_ff=384, max_seq_len=256),
    "small": dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64,
                  d_ff=768, max_seq_len=512),
    "bench": dict(vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=64,
                  d_ff=1536, max_seq_len=512),
    "1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
               d_ff=8192, max_seq_len=8192, rope_theta=500_000.0, tie_embeddings=True,
               rope_scaling={"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
               d_ff=14336, max_seq_len=8192, rope_theta=500_000.0,
               rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r}: unknown, choose from {sorted(PRESETS)}")
  return ModelConfig(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------- RoPE


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [H/2], with the configured context scaling applied."""
  H = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
  sc = cfg.rope_scaling
  if not sc:
    return inv
  kind = sc.get("type", sc.get("rope_type"))
  if kind == "linear":
    return inv / sc["factor"]
  if kind == "llama3":
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return jnp.where(medium, smoothed, scaled)
  return inv


def rope_tables(positions_BxT: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sin, cos), each float32 [B, T, 1, H/2]; computed once per forward, shared by layers."""
  angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq
  return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def apply_rope(x_BxTxNxH: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotary embedding, HF 'rotate_half' layout (first half / second half of H)."""
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def attention_bias(q_seg_BxT, q_slot_T, kv_seg_BxS, kv_slot_S, kv_until_BxS=None) -> jax.Array:
  """The one masking rule as an additive float32 bias [B, T, S] (0 = attend); with
  `kv_until`, a key is also hidden from queries at slots >= its value (trees in a row)."""
  mask = ((kv_slot_S[None, None, :] <= q_slot_T[None, :, None])
          & (q_seg_BxT[:, :, None] == kv_seg_BxS[:, None, :])
          & (kv_seg_BxS[:, None, :] != 0))
  if kv_until_BxS is not None:
    mask = mask & (q_slot_T[None, :, None] < kv_until_BxS[:, None, :])
  return jnp.where(mask, 0.0, _NEG_INF).astype(jnp.float32)


# --------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
  """Preallocated per-layer keys/values. Slots are filled left to right.

  k, v: tuples over layers of [B, S, K, H]; segment_ids: [B, S] (0 = empty);
  index: [] int32, the next slot to write (shared by all rows: prompts are
  left-padded so that every row writes at the same slot).
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  segment_ids: jax.Array
  index: jax.Array

  @property
  def size(self) -> int:
    return self.segment_ids.shape[1]

  @property
  def batch_size(self) -> int:
    return self.segment_ids.shape[0]


CACHE_AXES = ("batch", "cache_length", "kv_heads", "head_dim")


@flax.struct.dataclass
class PrefixCache:
  """A prompt's keys/values shared by the `group` consecutive rows that continue it.

  k, v: tuples over layers of [G, P, K, H]; segment_ids: [G, P] (0 = padding). Decoding
  G*group rows against it reads the prompt once per group instead of holding group copies;
  each row's own tokens go to a per-row KVCache whose slots follow the prompt's.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  segment_ids: jax.Array
  group: int = flax.struct.field(pytree_node=False, default=1)

  @classmethod
  def of(cls, cache: KVCache, group: int) -> "PrefixCache":
    return cls(k=cache.k, v=cache.v, segment_ids=cache.segment_ids, group=int(group))


def init_cache(cfg: ModelConfig, batch_size: int, cache_size: int, dtype=None) -> KVCache:
  dtype = dtype or cfg.compute_dtype
  shape = (batch_size, cache_size, cfg.n_kv_heads, cfg.head_dim)
  zeros = lambda: constrain(jnp.zeros(shape, dtype), CACHE_AXES)
  return KVCache(k=tuple(zeros() for _ in range(cfg.n_layers)),
                 v=tuple(zeros() for _ in range(cfg.n_layers)),
                 segment_ids=jnp.zeros((batch_size, cache_size), jnp.int32),
                 index=jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------- layers


def _param(rngs: nnx.Rngs, shape, names, std, dtype) -> nnx.Param:
  init = jax.nn.initializers.normal(std) if std else jax.nn.initializers.zeros
  return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)), out_sharding=names)


def _dense(x_MxD: jax.Array, w: jax.Array, dt) -> jax.Array:
  """[M, D] @ [D, F] as one 2-D matmul (heads folded into F by the caller).

  Projections flatten (batch, length) into one row axis: XLA turns the weight
  gradient into a plain [D, M] @ [M, F] matmul, about 1.7x faster on CPU than the
  3-D dot_general of an einsum over 'BTD' (and no slower on accelerators).
  """
  return x_MxD @ w.astype(dt)


def _decode_attention_shared(q_BxKxGxH, pk_GxPxKxH, pv_GxPxKxH, pbias_GxRxP, keys_BxSxKxH,
                             values_BxSxKxH, bias_BxS):
  """`_decode_attention` for B = G*R rows whose first P keys are their group's prompt.

  The same logits, in the same slot order (prompt, then the row's own tokens), and one
  softmax and one weighted sum over both parts: the prompt's keys are broadcast over the
  group's R rows inside the fused product instead of being copied R times in the cache.
  """
  B, K, Gq, H = q_BxKxGxH.shape
  G, P = pk_GxPxKxH.shape[:2]
  R = B // G
  dt = values_BxSxKxH.dtype
  qf = q_BxKxGxH.astype(jnp.float32)
  q_g = qf.reshape(G, R, 1, K, Gq, H)
  lp = jnp.sum(q_g * pk_GxPxKxH.astype(jnp.float32)[:, None, :, :, None, :], axis=-1)   # [G, R, P, K, Gq]
  ls = jnp.sum(qf[:, None] * keys_BxSxKxH.astype(jnp.float32)[:, :, :, None, :], axis=-1)  # [B, S, K, Gq]
  logits = jnp.concatenate([lp, ls.reshape(G, R, -1, K, Gq)], axis=2) / math.sqrt(H)
  bias = jnp.concatenate([pbias_GxRxP, bias_BxS.reshape(G, R, -1)], axis=2)
  logits = logits + bias[..., None, None]                                               # [G, R, P+S, K, Gq]
  probs = jax.nn.softmax(logits, axis=2).astype(dt).astype(jnp.float32)
  # The values are joined before the query groups' broadcast: joining [G, R, P+S, K, Gq, H]
  # broadcasts made XLA:CPU run the reduction ~10x slower when R = 1 (no fan-out).
  v = jnp.concatenate([jnp.broadcast_to(pv_GxPxKxH.astype(jnp.float32)[:, None], (G, R, P, K, H)),
                       values_BxSxKxH.astype(jnp.float32).reshape(G, R, -1, K, H)], axis=2)
  out = jnp.sum(probs[..., None] * v[:, :, :, :, None, :], axis=2)                      # [G, R, K, Gq, H]
  return out.reshape(B, K, Gq, H)


def _decode_attention(q_BxKxGxH, keys_BxSxKxH, values_BxSxKxH, bias_BxS):
  """One query token against the cache, as broadcast-multiply-reduce.

  Batched matmuls of a single query row make XLA transpose the whole cache to a
  matmul layout at every step (and XLA:CPU runs such tiny matmuls slowly);
  elementwise products with reductions read the cache once, in place.
  Numerics match the prefill/training path exactly in kind: products of
  compute-dtype inputs summed in float32, softmax in float32, probabilities
  rounded to the compute dtype before the weighted sum (float32 accumulation).
  """
  H = q_BxKxGxH.shape[-1]
  dt = values_BxSxKxH.dtype
  qf = q_BxKxGxH.astype(jnp.float32)
  logits = jnp.sum(qf[:, None] * keys_BxSxKxH.astype(jnp.float32)[:, :, :, None, :], axis=-1)
  logits = logits / math.sqrt(H) + bias_BxS[:, :, None, None]          # [B, S, K, G]
  probs = jax.nn.softmax(logits, axis=1).astype(dt).astype(jnp.float32)
  return jnp.sum(probs[..., None] * values_BxSxKxH.astype(jnp.float32)[:, :, :, None, :], axis=1)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype: str):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(param_dtype)), out_sharding=("norm",))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (xf * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D, N, K, H, pd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.param_dtype
    std = cfg.init_std
    self.q = _param(rngs, (D, N, H), ("embed", "heads", "head_dim"), std, pd)
    self.k = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), std, pd)
    self.v = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), std, pd)
    self.o = _param(rngs, (N, H, D), ("heads", "head_dim", "embed"), std / math.sqrt(2 * cfg.n_layers), pd)
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, (N, H), ("heads", "head_dim"), 0.0, pd)
      self.k_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), 0.0, pd)
      self.v_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), 0.0, pd)

  def __call__(self, x_BxTxD, rope, bias_BxTxS, layer_cache=None, prefix=None):
    """prefix: (keys [G, P, K, H], values, bias [G, R, P]) of a shared prompt (decoding only)."""
    cfg = self.cfg
    dt = cfg.compute_dtype
    B, T, D = x_BxTxD.shape
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x = x_BxTxD.astype(dt).reshape(B * T, D)
    q = _dense(x, self.q[...].reshape(D, N * H), dt).reshape(B, T, N, H)
    k = _dense(x, self.k[...].reshape(D, K * H), dt).reshape(B, T, K, H)
    v = _dense(x, self.v[...].reshape(D, K * H), dt).reshape(B, T, K, H)
    if cfg.qkv_bias:
      q = q + self.q_bias[...].astype(dt)
      k = k + self.k_bias[...].astype(dt)
      v = v + self.v_bias[...].astype(dt)
    q = apply_rope(q, *rope)
    k = apply_rope(k, *rope)

    if layer_cache is None:
      keys, values, new_cache = k, v, None
    else:
      ck, cv, index = layer_cache
      keys = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
      values = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
      keys, values = constrain(keys, CACHE_AXES), constrain(values, CACHE_AXES)
      new_cache = (keys, values)

    q = q.reshape(B, T, K, N // K, H)
    if T == 1 and prefix is not None:
      pk, pv, pbias = prefix
      out = _decode_attention_shared(q[:, 0], pk.astype(dt), pv.astype(dt), pbias, keys.astype(dt),
                                     values.astype(dt), bias_BxTxS[:, 0])
      out = out.astype(dt).reshape(B, N * H)
    elif T == 1:
      out = _decode_attention(q[:, 0], keys.astype(dt), values.astype(dt), bias_BxTxS[:, 0])
      out = out.astype(dt).reshape(B, N * H)
    else:
      # Logits accumulate in float32 (preferred_element_type), not rounded to the
      # compute dtype: in bfloat16 the train step's log-probs then match the
      # sampler's decode (which sums in float32), as DPO and KL terms need.
      logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, keys.astype(dt),
                          preferred_element_type=jnp.float32)
      logits = logits / math.sqrt(H) + bias_BxTxS[:, None, None]
      probs = jax.nn.softmax(logits, axis=-1).astype(dt)
      out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, values.astype(dt),
                       preferred_element_type=jnp.float32)
      out = out.astype(dt).reshape(B * T, N * H)
    y = _dense(out, self.o[...].reshape(N * H, D), dt).reshape(B, T, D)
    return y, new_cache


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D, F, pd, std = cfg.d_model, cfg.d_ff, cfg.param_dtype, cfg.init_std
    self.gate = _param(rngs, (D, F), ("embed", "mlp"), std, pd)
    self.up = _param(rngs, (D, F), ("embed", "mlp"), std, pd)
    self.down = _param(rngs, (F, D), ("mlp", "embed"), std / math.sqrt(2 * cfg.n_layers), pd)

  def __call__(self, x_BxTxD):
    dt = self.cfg.compute_dtype
    B, T, D = x_BxTxD.shape
    x = x_BxTxD.astype(dt).reshape(B * T, D)
    h = jax.nn.silu(_dense(x, self.gate[...], dt)) * _dense(x, self.up[...], dt)
    h = constrain(h, ("batch", "act_mlp"))
    return _dense(h, self.down[...], dt).reshape(B, T, D)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, rope, bias, layer_cache=None, prefix=None):
    h, new_cache = self.attn(self.attn_norm(x), rope, bias, layer_cache, prefix)
    x = x + h
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("batch", "length", "act_embed")), new_cache


def embed_init_std(cfg: ModelConfig) -> float:
  """Initial std of the token embedding.

  Untied: 1.0 (the input side only; RMSNorm rescales it, the separate head starts
  at init_std). Tied, the same matrix is the output head: the final-normed hidden
  state has unit RMS, so logits have std ~ embed_std * sqrt(d_model); std 1.0
  would start at ~sqrt(d_model) (11 at d_model=128, 45 at 2048: a near one-hot
  softmax and a huge first loss). min(init_std, 1/sqrt(d_model)) keeps them <= 1.
  """
  if cfg.tie_embeddings:
    return min(cfg.init_std, 1.0 / math.sqrt(cfg.d_model))
  return 1.0


class Transformer(nnx.Module):
  """Decoder-only LM. `model(tokens)` -> logits [B, T, V] (float32).

  With `cache=`, it writes the new keys/values at `cache.index` and returns
  `(logits, new_cache)`; used by the sampler for prefill and decode.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # Sharding is applied explicitly (jit out_shardings, device_put) by
    # parallel.mesh, so building a model never needs a mesh context.
    with nnx.use_eager_sharding(False):
      self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), embed_init_std(cfg),
                          cfg.param_dtype)
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
      self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
      if not cfg.tie_embeddings:
        self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std,
                              cfg.param_dtype)

  def __call__(self, tokens_BxT: jax.Array, *, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: KVCache | None = None,
               visible_until: jax.Array | None = None, prefix: PrefixCache | None = None):
    logits, new_cache = self.forward(tokens_BxT, positions=positions, segment_ids=segment_ids,
                                     cache=cache, visible_until=visible_until, prefix=prefix)
    return logits if cache is None else (logits, new_cache)

  def hidden_states(self, tokens_BxT, *, positions=None, segment_ids=None, cache=None,
                    visible_until=None, prefix: PrefixCache | None = None):
    """Final-norm hidden states [B, T, D] and the updated cache (or None).

    visible_until [B, T]: the slot from which each token is hidden (trees in a row, see the
    module docstring); without a cache only. prefix: one decode step (T = 1) of B = G*group rows whose keys
    are their group's prompt in `prefix`, then their own tokens in `cache` (its slot 0
    follows the prompt's last)."""
    cfg = self.cfg
    if visible_until is not None and cache is not None:
      raise ValueError("visible_until is for cache-free passes (training, scoring)")
    if prefix is not None and (cache is None or jnp.shape(tokens_BxT)[1] != 1):
      raise ValueError("prefix= is for decoding one token with a per-row cache")
    tokens_BxT = jnp.asarray(tokens_BxT)
    B, T = tokens_BxT.shape
    if segment_ids is None:
      segment_ids = jnp.ones((B, T), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    q_slot = jnp.arange(T, dtype=jnp.int32) + (0 if cache is None else cache.index)
    rope = rope_tables(positions, rope_inv_freq(cfg))

    x = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(cfg.compute_dtype)
    x = constrain(x, ("batch", "length", "act_embed"))
    new_k, new_v = [], []
    cache_seg = None
    if cache is None:
      bias = attention_bias(segment_ids, q_slot, segment_ids, q_slot, visible_until)
    else:
      cache_seg = jax.lax.dynamic_update_slice_in_dim(
          cache.segment_ids, segment_ids.astype(jnp.int32), cache.index, axis=1)
      bias = attention_bias(segment_ids, q_slot, cache_seg, jnp.arange(cache.size, dtype=jnp.int32))
    prefix_bias = None
    if prefix is not None:   # every prompt slot precedes the query: same non-zero segment only
      G = prefix.segment_ids.shape[0]
      q_seg = segment_ids[:, 0].reshape(G, B // G)
      kv_seg = prefix.segment_ids[:, None, :]
      prefix_bias = jnp.where((kv_seg == q_seg[:, :, None]) & (kv_seg != 0), 0.0, _NEG_INF).astype(jnp.float32)
    for i, block in enumerate(self.blocks):
      if cache is None and cfg.remat:
        x, _ = nnx.remat(lambda blk, *a: blk(*a))(block, x, rope, bias)
      else:
        layer_cache = None if cache is None else (cache.k[i], cache.v[i], cache.index)
        shared = None if prefix is None else (prefix.k[i], prefix.v[i], prefix_bias)
        x, lc = block(x, rope, bias, layer_cache, shared)
        if lc is not None:
          new_k.append(lc[0])
          new_v.append(lc[1])
    x = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), segment_ids=cache_seg,
                          index=cache.index + T)
    return x, new_cache

  def logits_from_hidden(self, h_BxTxD):
    dt = self.cfg.compute_dtype
    if self.cfg.tie_embeddings:
      w = self.embed[...].astype(dt).T
    else:
      w = self.lm_head[...].astype(dt)
    B, T, D = h_BxTxD.shape
    logits = (h_BxTxD.astype(dt).reshape(B * T, D) @ w).reshape(B, T, -1)
    return constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def forward(self, tokens_BxT, *, positions=None, segment_ids=None, cache=None, visible_until=None,
              prefix=None):
    h, new_cache = self.hidden_states(tokens_BxT, positions=positions, segment_ids=segment_ids,
                                      cache=cache, visible_until=visible_until, prefix=prefix)
    return self.logits_from_hidden(h), new_cache


def abstract_model(cfg: ModelConfig) -> Transformer:
  """The model with ShapeDtypeStruct leaves: no memory, any size (e.g. 8B on a laptop)."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def split_abstract(cfg: ModelConfig):
  """(graphdef, abstract nnx.State of ShapeDtypeStructs) without allocating anything."""
  return nnx.split(abstract_model(cfg))


def count_params(model_or_state) -> int:
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))
