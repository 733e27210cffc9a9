"""Train-step throughput and MFU against this machine's measured matmul peak.

  python benchmarks/train_step.py [--batch 8 --seq 512 --steps 5]

MFU = (6 x non-embedding params + attention FLOPs per token) x tokens/s divided
by the peak FLOP/s of a large jit-compiled matmul in the same dtype, measured in
the same run. Last line: `train_step: mfu=<f> tokens_per_s=<n> peak_gflops=<n>`.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from benchmarks.common import device_name, peak_matmul_flops, time_fn  # noqa: E402
from earlyrl_jax.models.transformer import preset  # noqa: E402
from earlyrl_jax.parallel import mesh as mesh_lib  # noqa: E402
from earlyrl_jax.train import state as state_lib  # noqa: E402
from earlyrl_jax.train import steps as steps_lib  # noqa: E402


def main():
  on_cpu = jax.devices()[0].platform == "cpu"
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="bench")
  p.add_argument("--batch", type=int, default=16 if on_cpu else 64)
  p.add_argument("--seq", type=int, default=256 if on_cpu else 2048)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
  p.add_argument("--remat", action="store_true")
  args = p.parse_args()

  # The peak is measured before and after the step timing and the higher one kept,
  # so background noise cannot inflate MFU.
  peak_before = peak_matmul_flops(jnp.dtype(args.dtype))
  cfg = preset(args.preset, dtype=args.dtype, max_seq_len=max(args.seq, 512), remat=args.remat)
  mesh = mesh_lib.make_mesh((1, -1, 1))  # FSDP over every device
  opt = ConfigDict(dict(learning_rate=1e-4, warmup_steps=10, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                        eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  tx = state_lib.make_optimizer(opt, 1000)
  graphdef, state, shardings = state_lib.init_train_state(cfg, tx, mesh, seed=0)
  B, L = args.batch, args.seq
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (B, L), dtype=np.int32)
  batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "segment_ids": np.ones((B, L), np.int32),
           "positions": np.tile(np.arange(L, dtype=np.int32), (B, 1)), "loss_mask": np.ones((B, L), np.float32)}
  step = steps_lib.make_train_step(graphdef, tx, state_lib.lr_schedule(opt, 1000), mesh, shardings,
                                   steps_lib.spec_of(batch), coefs={"nll": 1.0, "z_loss": 1e-4})
  with jax.set_mesh(mesh):
    gbatch = mesh_lib.shard_batch(batch, mesh)
    holder = [state]

    def run():
      holder[0], m = step(holder[0], gbatch, {})
      return m["loss"]
    secs = time_fn(run, warmup=2, iters=args.steps)
  tokens_per_s = B * L / secs
  flops_per_token = cfg.flops_per_token(L)
  peak = max(peak_before, peak_matmul_flops(jnp.dtype(args.dtype))) * jax.device_count()
  mfu = flops_per_token * tokens_per_s / peak
  print(f"device: {device_name()}")
  print(f"model: preset={args.preset} params={cfg.num_params() / 1e6:.1f}M dtype={args.dtype} "
        f"batch={B}x{L} flops/token={flops_per_token / 1e6:.1f}M")
  print(f"step: {secs * 1e3:.1f} ms, achieved {flops_per_token * tokens_per_s / 1e9:.1f} GFLOP/s "
        f"of {peak / 1e9:.1f} GFLOP/s measured matmul peak")
  print(f"train_step: mfu={mfu:.3f} tokens_per_s={tokens_per_s:.0f} peak_gflops={peak / 1e9:.1f}")


if __name__ == "__main__":
  main()
