"""Decode throughput of the compiled sampler, side by side with a naive decode, Hugging Face
`generate` on identical weights, and the memory-bandwidth roofline, in one run.

  python benchmarks/sampler.py [--batch 16 --prompt 64 --new 64]

Last line: `sampler: tokens_per_s=<n> vs_naive=<x> vs_hf=<x or na> roofline_frac=<f>`.
Greedy decoding throughout, so all three produce the same tokens.
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
from earlyrl_jax.sampling.sampler import Sampler  # noqa: E402


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


def hf_generate_tokens_per_s(model, prompts, T):
  try:
    import torch
    import transformers
  except ImportError:
    return None, None
  from earlyrl_jax.models.hf_io import save_pretrained
  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(model, d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
  x = torch.tensor(np.asarray(prompts))
  kw = dict(max_new_tokens=T, min_new_tokens=T, do_sample=False, eos_token_id=None, pad_token_id=0)
  with torch.no_grad():
    hf.generate(x, **kw)  # warm-up
    t0 = time.perf_counter()
    out = hf.generate(x, **kw)
    secs = time.perf_counter() - t0
  return x.shape[0] * T / secs, out[:, x.shape[1]:].numpy()


def main():
  on_cpu = jax.devices()[0].platform == "cpu"
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="bench")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt", type=int, default=64)
  p.add_argument("--new", type=int, default=64)
  p.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
  p.add_argument("--no_hf", action="store_true")
  args = p.parse_args()
  B, P, T = args.batch, args.prompt, args.new
  cfg = preset(args.preset, dtype=args.dtype, max_seq_len=max(512, P + T))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (B, P), dtype=np.int32)

  sampler = Sampler(model, prompt_buckets=(P,))
  run = lambda: sampler(list(prompts), max_new_tokens=T, key=jax.random.key(0), temperature=0.0).tokens
  ours_s = time_fn(run, warmup=1, iters=3)
  ours_tps = B * T / ours_s
  ours_tokens = run()

  naive = naive_decode_fn(model, B, P, T)
  naive_s = time_fn(naive, jnp.asarray(prompts), warmup=1, iters=1)
  naive_tps = B * T / naive_s
  assert (np.asarray(naive(jnp.asarray(prompts))) == ours_tokens).all(), "naive decode disagrees"

  hf_tps, hf_tokens = (None, None) if args.no_hf else hf_generate_tokens_per_s(model, prompts, T)
  if hf_tokens is not None:
    agree = float((hf_tokens == ours_tokens).mean())
    print(f"hf generate: {hf_tps:.0f} tokens/s (token agreement with ours {agree:.3f})")

  # Roofline: every decode step reads all parameters plus the KV cache written so far.
  bw = memory_bandwidth()
  itemsize = jnp.dtype(args.dtype).itemsize
  param_bytes = cfg.num_params() * itemsize
  avg_cache = P + T / 2
  cache_bytes = 2 * cfg.n_layers * B * avg_cache * cfg.n_kv_heads * cfg.head_dim * itemsize
  roofline_tps = B * bw / (param_bytes + cache_bytes)
  print(f"device: {device_name()}; bandwidth {bw / 1e9:.1f} GB/s")
  print(f"model: preset={args.preset} params={cfg.num_params() / 1e6:.1f}M dtype={args.dtype} "
        f"batch={B} prompt={P} new={T}")
  print(f"ours {ours_tps:.0f} tok/s | naive {naive_tps:.0f} tok/s | "
        f"hf {'na' if hf_tps is None else f'{hf_tps:.0f}'} tok/s | roofline {roofline_tps:.0f} tok/s")
  vs_hf = "na" if hf_tps is None else f"{ours_tps / hf_tps:.2f}"
  print(f"sampler: tokens_per_s={ours_tps:.0f} vs_naive={ours_tps / naive_tps:.2f} vs_hf={vs_hf} "
        f"roofline_frac={ours_tps / roofline_tps:.3f}")


if __name__ == "__main__":
  main()
