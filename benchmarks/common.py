"""Shared measurement helpers for the benchmarks (peak matmul, memory bandwidth, timing)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def device_name() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  return f"{jax.device_count()}x {kind} ({d.platform})"


def time_fn(fn, *args, warmup: int = 1, iters: int = 5, best: bool = False) -> float:
  """Seconds per call (median, or best with best=True); blocks on the result."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[0] if best else times[len(times) // 2]


def peak_matmul_flops(dtype, sizes=None) -> float:
  """Best FLOP/s of large jit-compiled square matmuls in `dtype`: this machine's practical peak.

  The best time over several sizes and repeats, so the peak is not understated by
  noise (which would overstate MFU).
  """
  sizes = sizes or ((1024, 2048, 3072) if jax.devices()[0].platform == "cpu" else (4096, 8192))
  f = jax.jit(lambda x, y: x @ y)
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    best = max(best, 2 * n ** 3 / time_fn(f, a, b, warmup=2, iters=7, best=True))
  return best


def memory_bandwidth(num_bytes: int | None = None) -> float:
  """Read bandwidth in bytes/s: a jit-compiled sum over a buffer far larger than the caches.

  Decoding reads parameters and KV cache and writes almost nothing, so the read
  bandwidth is the roofline that matters.
  """
  on_cpu = jax.devices()[0].platform == "cpu"
  n = (num_bytes or (256 * 2**20 if on_cpu else 4 * 2**30)) // 4
  x = jnp.ones((n,), jnp.float32)
  f = jax.jit(lambda v: jnp.sum(v))
  return 4 * n / time_fn(f, x, warmup=2, iters=7, best=True)
