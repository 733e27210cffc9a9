"""The paper's SIP step priced in FLOPs and GPU-hours (no GPU needed: formulas, checked against XLA).

  python benchmarks/sip_cost_model.py            # the midtrain shape (configs/midtrain.py)
  python benchmarks/sip_cost_model.py --k=8 --scheme=adaptive --mfu=0.35

Per window, each part of a step as matmul FLOPs (2 per multiply-add; the attention counted on
the keys each query attends to, as a causal attention kernel computes them):

  rollouts   the policy prefills the prefix once and decodes K x N tokens against it
  rewrite    the teacher prefills its rewrite prompt and decodes N tokens (settings with a
             rewriter; configs/midtrain.py has none)
  judge      the teacher reads every judge prompt: log-prob verdicts are one forward pass per
             prompt (this repository's LM judge); generative verdicts (the paper's) add
             reasoning tokens, sampled several times
  update     the policy's train step (3x a forward) and the reference's forward pass; before
             (a row prefix + candidate per sequence, the reference inside the step) and after
             (one row per window: the prefix once, chosen and rejected as branches)

`tests/test_cost_model.py` checks `forward_flops`, `train_flops` and `decode_flops` on small
shapes against XLA's own count (`compiled.cost_analysis()`), so the formulas cannot drift
from the model. Everything about the paper's prompts that the paper does not give is an
assumption, printed with the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from earlyrl_jax.models.transformer import ModelConfig, preset  # noqa: E402
from earlyrl_jax.teacher.tournament import default_budget  # noqa: E402

H100_BF16_DENSE = 989e12   # FLOP/s: an H100 SXM's dense bf16 peak (no sparsity)


# --------------------------------------------------------------------------- formulas


def block_params(cfg: ModelConfig) -> int:
  """Weights every token multiplies through (attention projections and MLP of all layers)."""
  D, F, N, K, H = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  return cfg.n_layers * (D * N * H + 2 * D * K * H + N * H * D + 3 * D * F)


def attention_flops(cfg: ModelConfig, keys: int) -> float:
  """Scores and weighted sum of one query against `keys` keys, all layers and heads."""
  return 4.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * keys


def forward_flops(cfg: ModelConfig, tokens: int, *, context: int = 0, logits: int | None = None,
                  causal: bool = True, rows: int = 1) -> float:
  """A forward pass over `tokens` new tokens per row after `context` cached ones.

  causal: each query attends to the keys before it (a causal kernel's work); False: to all
  `context + tokens` keys (what a masked dense attention computes, as this repository's XLA
  model does). logits: positions that go through the vocabulary projection (default all).
  """
  T, S = tokens, context
  keys = T * S + (T * (T + 1) // 2 if causal else T * T)
  n_logits = T if logits is None else logits
  return rows * (2.0 * block_params(cfg) * T + attention_flops(cfg, keys)
                 + 2.0 * cfg.d_model * cfg.vocab_size * n_logits)


def train_flops(cfg: ModelConfig, tokens: int, **kw) -> float:
  """Forward and backward (twice the forward's matmuls) of a row of `tokens` tokens."""
  return 3.0 * forward_flops(cfg, tokens, **kw)


def decode_flops(cfg: ModelConfig, rows: int, steps: int, context: int,
                 cache_len: int | None = None) -> float:
  """`steps` decode steps of `rows` rows, each step one token against its cache + logits.

  Step i attends to the `context + i + 1` filled slots, or to all `cache_len` slots (what a
  masked read of a preallocated cache computes, as this repository's sampler does)."""
  per_row = sum(2.0 * block_params(cfg) + attention_flops(cfg, cache_len or context + i + 1)
                + 2.0 * cfg.d_model * cfg.vocab_size for i in range(steps))
  return rows * per_row


def branch_row_flops(cfg: ModelConfig, trunk: int, branches: int, width: int, *, train: bool) -> float:
  """One row = a trunk and `branches` branches of `width` tokens that each see the trunk and
  themselves (train/objectives.py's window row), every position through the vocabulary."""
  f = forward_flops(cfg, trunk)
  f += branches * forward_flops(cfg, width, context=trunk)
  return 3.0 * f if train else f


def kv_cache_bytes(cfg: ModelConfig, rows: int, slots: int, bytes_per: int = 2) -> int:
  return rows * slots * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * bytes_per


# --------------------------------------------------------------------------- the paper's step


@dataclasses.dataclass
class Shape:
  policy: ModelConfig
  teacher: ModelConfig
  k: int = 16                    # rollouts per window
  n: int = 128                   # suffix / candidate tokens
  prefix: int = 1920
  windows: int = 256             # per step
  steps: int = 2000
  rewrite: bool = True           # a rewrite candidate (the safety setting); midtrain.py: False
  lm_coef: float = 0.0           # midtrain.py: the SIP loss alone
  instructions: int = 124        # judge prompt tokens besides prefix and candidates (assumed)
  rewrite_instructions: int = 150  # rewrite prompt tokens besides prefix and suffix (assumed)
  safety_prompt: int = 250       # a pointwise safety prompt: instructions + one candidate (assumed)
  reasoning: int = 128           # generative verdicts: tokens of reasoning + verdict (assumed)
  samples: int = 5               # generative verdicts sampled per prompt (the paper: 5)

  @property
  def candidates(self) -> int:
    return 1 + int(self.rewrite) + self.k

  @property
  def pair_prompt(self) -> int:    # the prefix, two candidates, instructions (~2.3k tokens)
    return self.prefix + 2 * self.n + self.instructions

  def pairs(self, scheme: str) -> int:
    """Unordered pairs judged per window (all pairs, or the adaptive default budget)."""
    c = self.candidates
    return c * (c - 1) // 2 if scheme == "all_pairs" else default_budget(c)


def parts(s: Shape, *, scheme: str = "all_pairs", verdicts: str = "logprob",
          shared_prefix: bool = False) -> dict[str, float]:
  """FLOPs per window of each part of a step."""
  P, N, K, C = s.prefix, s.n, s.k, s.candidates
  out = {}
  out["rollouts: prefill"] = forward_flops(s.policy, P, logits=1)
  out["rollouts: decode"] = decode_flops(s.policy, K, N, P)
  if s.rewrite:
    prompt = P + N + s.rewrite_instructions
    out["rewrite"] = forward_flops(s.teacher, prompt, logits=1) + decode_flops(s.teacher, 1, N, prompt)
  # Judge prompts per window: both orders of each pair on the two pairwise axes (factuality
  # also quotes the original as reference), one safety prompt per candidate.
  prompts = [(2 * s.pairs(scheme), s.pair_prompt), (2 * s.pairs(scheme), s.pair_prompt + N),
             (C, s.safety_prompt)]
  judge = 0.0
  for count, length in prompts:
    if shared_prefix and length > P:   # the prefix prefilled once per window, each prompt its rest
      judge += count * forward_flops(s.teacher, length - P, context=P, logits=1)
    else:
      judge += count * forward_flops(s.teacher, length, logits=1)
    if verdicts == "generative":
      judge += count * decode_flops(s.teacher, s.samples, s.reasoning, length)
  if shared_prefix:
    judge += forward_flops(s.teacher, P, logits=0)
  out["judge"] = judge
  out["update (before)"] = update_flops(s, packed=False)
  out["update"] = update_flops(s, packed=True)
  return out


def update_flops(s: Shape, *, packed: bool) -> float:
  """The DPO update of one window: policy train pass + reference forward pass."""
  P, N = s.prefix, s.n
  if not packed:   # a row of P + N per sequence: chosen, rejected (+ the document), reference on two
    rows = 2 + int(bool(s.lm_coef))
    return rows * train_flops(s.policy, P + N) + 2 * forward_flops(s.policy, P + N)
  branches = 2 + int(bool(s.lm_coef))
  return (branch_row_flops(s.policy, P - 1, branches, N + 1, train=True)
          + branch_row_flops(s.policy, P - 1, 2, N + 1, train=False))


def gpu_hours(flops_per_window: float, s: Shape, mfu: float, peak: float = H100_BF16_DENSE) -> float:
  return flops_per_window * s.windows * s.steps / (mfu * peak) / 3600.0


def _fmt(x: float) -> str:
  return f"{x / 1e12:8.2f}"


def table(s: Shape, *, mfu: float, measured: dict[str, float] | None = None) -> list[str]:
  lines = []
  policy_params, teacher_params = s.policy.num_params(), s.teacher.num_params()
  lines.append(f"sip_cost: the paper's step priced: policy {policy_params / 1e9:.2f}B "
               f"(Llama-3.2-1B shape), teacher {teacher_params / 1e9:.2f}B (Llama-3.1-8B shape), "
               f"K={s.k}, N={s.n}, prefix {s.prefix}, {s.candidates} candidates per window "
               f"({'with' if s.rewrite else 'no'} rewrite), {s.windows} windows x {s.steps} steps")
  lines.append(f"  assumed: judge prompt = prefix + 2 candidates + {s.instructions} instruction tokens = "
               f"{s.pair_prompt} tokens (factuality +{s.n}: the original as reference), safety prompt "
               f"{s.safety_prompt}, rewrite prompt = prefix + suffix + {s.rewrite_instructions}; "
               f"generative verdicts: {s.reasoning} tokens x {s.samples} samples; GPU-hours at "
               f"{mfu:.0%} MFU of an H100's {H100_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 dense peak "
               "(assumed: no GPU measured it)")
  variants = {
      "all pairs, log-prob verdicts": dict(scheme="all_pairs"),
      "all pairs, log-prob, shared prefix": dict(scheme="all_pairs", shared_prefix=True),
      "adaptive, log-prob, shared prefix": dict(scheme="adaptive", shared_prefix=True),
      "all pairs, generative (paper)": dict(scheme="all_pairs", verdicts="generative"),
      "adaptive, generative, shared prefix": dict(scheme="adaptive", verdicts="generative",
                                                  shared_prefix=True),
  }
  base = parts(s)
  lines.append(f"  {'part (TFLOP per window)':38s} {'TFLOP':>8s} {'share':>6s} {'GPU-h':>8s}  measured CPU split")
  order = ["rollouts: prefill", "rollouts: decode"] + (["rewrite"] if s.rewrite else []) + ["judge", "update"]
  total = sum(base[k] for k in order)
  cpu = {"rollouts: decode": "rollout", "rewrite": "rewrite", "judge": "judge", "update": "update"}
  for k in order:
    m = f"{measured[cpu[k]]:.3f}" if measured and k in cpu and cpu[k] in measured else ""
    lines.append(f"  {k:38s} {_fmt(base[k])} {base[k] / total:6.2%} {gpu_hours(base[k], s, mfu):8.1f}  {m}")
  lines.append(f"  {'update before one row per window':38s} {_fmt(base['update (before)'])} "
               f"{'':6s} {gpu_hours(base['update (before)'], s, mfu):8.1f}  "
               f"(x{base['update (before)'] / base['update']:.2f} the update's FLOPs)")
  lines.append(f"  rollout KV cache per window: {kv_cache_bytes(s.policy, s.k, s.prefix + s.n) / 2**20:.0f} MiB "
               f"as K copies, {(kv_cache_bytes(s.policy, 1, s.prefix) + kv_cache_bytes(s.policy, s.k, s.n)) / 2**20:.0f}"
               f" MiB with one prompt cache per group (bf16)")
  lines.append(f"  {'judging variant':38s} {'TFLOP':>8s} {'step':>6s} {'GPU-h':>8s}  teacher share; "
               "served: GPU-h left on the policy's devices")
  for name, kw in variants.items():
    p = parts(s, **kw)
    tot = sum(p[k] for k in order)
    teacher = p["judge"] + p.get("rewrite", 0.0)
    lines.append(f"  {name:38s} {_fmt(p['judge'])} {_fmt(tot)} {gpu_hours(tot, s, mfu):8.0f}  "
                 f"{teacher / tot:5.1%}; served {gpu_hours(tot - teacher, s, mfu):6.0f}")
  return lines


def midtrain_shape(**kw) -> Shape:
  return Shape(policy=preset("1b"), teacher=preset("8b"), **kw)


def main(argv=None, measured: dict[str, float] | None = None) -> list[str]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--k", type=int, default=16)
  p.add_argument("--n", type=int, default=128)
  p.add_argument("--prefix", type=int, default=1920)
  p.add_argument("--no-rewrite", dest="rewrite", action="store_false", default=True)
  p.add_argument("--mfu", type=float, default=0.4)
  a = p.parse_args(argv)
  s = midtrain_shape(k=a.k, n=a.n, prefix=a.prefix, rewrite=a.rewrite)
  lines = table(s, mfu=a.mfu, measured=measured)
  print("\n".join(lines))
  return lines


if __name__ == "__main__":
  main()
