"""Decode throughput of the compiled sampler, side by side with Hugging Face `generate` on identical
weights, a naive decode, the step's matmuls timed alone, and the memory-bandwidth roofline, in one run.

  python benchmarks/sampler.py                        # batch 16 x prompt 64 -> 64 new, greedy
  python benchmarks/sampler.py --rollouts 8 --batch 8  # the SIP rollout shape: B prompts x K samples

With `--rollouts K` every prompt is sampled K times (temperature 1, `--top_p`, no top-k), as the
self-improving step does: our sampler prefills each prompt once and fans the cache out; HF
`generate(num_return_sequences=K)` prefills B*K rows. Greedy otherwise (then all decoders must
produce the same tokens, and the script checks it).

Measurements alternate (ours, HF, matmul-only, ...) for `--rounds` rounds and keep each one's
best time, so load from other processes on a shared machine hurts all of them alike. HF runs
with 1 thread and with all cores in each round (torch's thread barriers suffer most from a
loaded machine); its best time counts.

  step            (time(N new tokens) - time(1 new token)) / (N - 1): one decode step of ours
  matmul_bound    the step's GEMMs ([rows, d] x weights of every layer + the vocab projection,
                  distinct weights per layer) timed alone in a compiled loop: the CPU's limit
  matmul_bound_frac = matmul-only step / our step (1.0 = nothing but the GEMMs costs time)
  roofline_frac   our tok/s / (rows x bandwidth / (param bytes + average KV-cache bytes))

Last line: `sampler: rows=.. tokens_per_s=.. vs_hf=.. roofline_frac=.. matmul_bound_frac=..`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import device_name, memory_bandwidth, time_fn  # noqa: E402
from earlyrl_jax.models.transformer import Transformer, preset  # noqa: E402
from earlyrl_jax.sampling.sampler import Sampler, process_logits, sample_rows  # noqa: E402


def naive_decode_fn(model, B, P, T):
  """No cache: one full forward over a fixed [B, P+T] buffer per new token (one compile)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params, prompt_BxP):
    m = nnx.merge(graphdef, params)
    buf = jnp.zeros((B, P + T), jnp.int32).at[:, :P].set(prompt_BxP)

    def body(i, buf):
      logits = m(buf)  # causal: positions >= P + i do not affect position P + i - 1
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, P + i - 1, axis=1, keepdims=False), -1)
      return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(jnp.int32), P + i, axis=1)
    return jax.lax.fori_loop(0, T, body, buf)[:, P:]
  return lambda prompt: run(params, prompt)


def matmul_only_fn(cfg, rows: int, steps: int):
  """The GEMMs of `steps` decode steps at `rows` rows, nothing else (distinct weights per layer)."""
  D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
  NH, KH = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  dt = cfg.compute_dtype
  shapes = [(D, NH), (D, KH), (D, KH), (NH, D), (D, F), (D, F), (F, D)]
  keys = iter(jax.random.split(jax.random.key(0), len(shapes) * cfg.n_layers + 2))
  w = lambda s: (0.02 * jax.random.normal(next(keys), s)).astype(dt)
  layers = [tuple(w(s) for s in shapes) for _ in range(cfg.n_layers)]
  lm = w((D, V))
  x0 = w((rows, D))

  @jax.jit
  def run(layers, lm, x0):
    def body(_, x):
      for q, k, v, o, g, u, d in layers:
        a, b, c = x @ q, x @ k, x @ v
        x = x + a @ o + 1e-9 * (b[:, :1] + c[:, :1])
        x = x + ((x @ g) * (x @ u)) @ d
      return x + 1e-9 * (x @ lm)[:, :D]
    return jax.lax.fori_loop(0, steps, body, x0)
  return lambda: run(layers, lm, x0)


def sampling_kernels(rows: int, vocab: int, top_p: float) -> str:
  """One decode step's token choice at [rows, vocab], before (sort + Gumbel categorical) and now."""
  x = 3 * jax.random.normal(jax.random.key(0), (rows, vocab))
  k = jax.random.key(1)
  use_p = top_p < 1.0

  def before(x, k):
    proc = process_logits(x, 1.0, 0, top_p, use_p)
    tok = jax.random.categorical(k, proc, axis=-1)
    return tok, jnp.take_along_axis(jax.nn.log_softmax(proc), tok[:, None], -1)

  now = lambda x, k: sample_rows(x, k, False, 0, top_p if use_p else None)
  t_before = time_fn(jax.jit(before), x, k, warmup=1, iters=3, best=True)
  t_now = time_fn(jax.jit(now), x, k, warmup=1, iters=5, best=True)
  return (f"token choice at [{rows}, {vocab}] (top_p {top_p}): sort + categorical "
          f"{t_before * 1e3:.2f} ms | sort-free inverse CDF {t_now * 1e3:.2f} ms")


def hf_model(model):
  try:
    import torch
    import transformers
  except ImportError:
    return None
  from earlyrl_jax.models.hf_io import save_pretrained
  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(model, d)
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def hf_generate(hf, prompts, T, K, top_p=1.0):
  import torch
  x = torch.tensor(np.asarray(prompts))
  kw = dict(max_new_tokens=T, min_new_tokens=T, eos_token_id=None, pad_token_id=0)
  if K > 1:
    kw.update(do_sample=True, temperature=1.0, top_k=0, top_p=top_p, num_return_sequences=K)
  else:
    kw.update(do_sample=False)
  with torch.no_grad():
    return hf.generate(x, **kw)[:, x.shape[1]:].numpy()


def best_of(fn, rounds_times: list, *args):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  rounds_times.append(time.perf_counter() - t0)


def main():
  on_cpu = jax.devices()[0].platform == "cpu"
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="bench")
  p.add_argument("--batch", type=int, default=16, help="prompts")
  p.add_argument("--rollouts", type=int, default=1, help="samples per prompt (K); 1 = greedy")
  p.add_argument("--prompt", type=int, default=64)
  p.add_argument("--new", type=int, default=64)
  p.add_argument("--top_p", type=float, default=1.0, help="nucleus filter with --rollouts (ours and HF)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
  p.add_argument("--no_hf", action="store_true")
  p.add_argument("--naive", action="store_true", help="also time the no-cache decode (slow)")
  args = p.parse_args()
  B, K, P, T = args.batch, args.rollouts, args.prompt, args.new
  rows = B * K
  cfg = preset(args.preset, dtype=args.dtype, max_seq_len=max(512, P + T))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(model)
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (B, P), dtype=np.int32)

  sampler = Sampler(model, prompt_buckets=(P,))
  temp = 1.0 if K > 1 else 0.0
  ours = lambda n: sampler.sample(params, list(prompts), max_new_tokens=n, key=jax.random.key(0),
                                  temperature=temp, top_p=args.top_p if K > 1 else 1.0,
                                  num_samples=K).tokens
  mm = matmul_only_fn(cfg, rows, T)
  hf = None if args.no_hf else hf_model(model)
  # Warm-up (compiles) and the agreement check.
  ours_tokens = ours(T)
  ours(1)
  jax.block_until_ready(mm())
  if hf is not None:
    hf_tokens = hf_generate(hf, prompts, T, K, args.top_p)
    if K == 1:
      print(f"hf generate: token agreement with ours {float((hf_tokens == ours_tokens).mean()):.3f}")
  times = {"ours": [], "ours1": [], "mm": [], "hf": []}
  for _ in range(args.rounds):
    best_of(ours, times["ours"], T)
    best_of(ours, times["ours1"], 1)
    best_of(mm, times["mm"])
    if hf is not None:
      import torch
      for threads in sorted({1, os.cpu_count() or 1}):  # best of 1 thread and all cores
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        hf_generate(hf, prompts, T, K, args.top_p)
        times["hf"].append(time.perf_counter() - t0)
  ours_s, ours1_s, mm_s = min(times["ours"]), min(times["ours1"]), min(times["mm"])
  ours_tps = rows * T / ours_s
  hf_tps = rows * T / min(times["hf"]) if times["hf"] else None
  step_s = (ours_s - ours1_s) / max(1, T - 1)
  mm_step_s = mm_s / T

  naive_tps = None
  if args.naive and K == 1:
    naive = naive_decode_fn(model, B, P, T)
    naive_tps = B * T / time_fn(naive, jnp.asarray(prompts), warmup=1, iters=1)
    assert (np.asarray(naive(jnp.asarray(prompts))) == ours_tokens).all(), "naive decode disagrees"

  # Roofline: every decode step reads all parameters plus the KV cache written so far.
  bw = memory_bandwidth()
  itemsize = jnp.dtype(args.dtype).itemsize
  param_bytes = cfg.num_params() * itemsize
  avg_cache = P + T / 2
  cache_bytes = 2 * cfg.n_layers * rows * avg_cache * cfg.n_kv_heads * cfg.head_dim * itemsize
  roofline_tps = rows * bw / (param_bytes + cache_bytes)
  print(f"device: {device_name()}; bandwidth {bw / 1e9:.1f} GB/s")
  if K > 1:
    print(sampling_kernels(rows, cfg.vocab_size, args.top_p))
  print(f"model: preset={args.preset} params={cfg.num_params() / 1e6:.1f}M dtype={args.dtype} "
        f"prompts={B} x samples={K} = rows={rows} prompt={P} new={T} "
        f"({'greedy' if K == 1 else f'temperature 1, top_p {args.top_p}'})")
  print(f"ours {ours_tps:.0f} tok/s (call {ours_s * 1e3:.0f} ms, prefill+1 step {ours1_s * 1e3:.0f} ms, "
        f"step {step_s * 1e3:.2f} ms) | matmul-only step {mm_step_s * 1e3:.2f} ms | "
        f"hf {'na' if hf_tps is None else f'{hf_tps:.0f}'} tok/s | "
        f"naive {'na' if naive_tps is None else f'{naive_tps:.0f}'} tok/s | "
        f"roofline {roofline_tps:.0f} tok/s")
  vs_hf = "na" if hf_tps is None else f"{ours_tps / hf_tps:.2f}"
  print(f"sampler: rows={rows} tokens_per_s={ours_tps:.0f} vs_hf={vs_hf} "
        f"roofline_frac={ours_tps / roofline_tps:.3f} matmul_bound_frac={mm_step_s / step_s:.2f}")


if __name__ == "__main__":
  main()
