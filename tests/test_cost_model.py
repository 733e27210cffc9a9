"""benchmarks/sip_cost_model.py: its FLOP formulas agree with XLA's own count of our model's
programs (`compiled.cost_analysis()`), so the priced paper shape cannot drift from the code."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks import sip_cost_model as M
from earlyrl_jax.models import transformer as T

# Matmuls dominate at this shape (XLA also counts norms, softmax and RoPE: under 1%).
CFG = T.ModelConfig(vocab_size=1024, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64,
                    d_ff=1024, max_seq_len=512)


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.fixture(scope="module")
def model():
  return nnx.split(T.Transformer(CFG, rngs=nnx.Rngs(0)))


def test_forward_and_train_flops_match_xla(model):
  graphdef, params = model
  B, L = 4, 128
  tokens = jnp.zeros((B, L), jnp.int32)
  fwd = _xla_flops(lambda p, t: nnx.merge(graphdef, p)(t), params, tokens)
  # Our model computes the whole masked attention matrix: causal=False counts what it runs.
  assert fwd == pytest.approx(M.forward_flops(CFG, L, causal=False, rows=B), rel=0.02)
  loss = lambda p, t: jnp.sum(jax.nn.log_softmax(nnx.merge(graphdef, p)(t))[..., 0])
  train = _xla_flops(jax.grad(loss), params, tokens)
  assert train == pytest.approx(M.train_flops(CFG, L, causal=False, rows=B), rel=0.02)
  # The causal count is what a causal kernel would do: fewer attention FLOPs, same dense ones.
  assert M.forward_flops(CFG, L, rows=B) < fwd


def test_decode_step_flops_match_xla(model):
  graphdef, params = model
  B, S = 4, 256
  cache = T.init_cache(CFG, B, S)
  step = _xla_flops(lambda p, t, c: nnx.merge(graphdef, p)(t, cache=c), params,
                    jnp.zeros((B, 1), jnp.int32), cache)
  assert step == pytest.approx(M.decode_flops(CFG, B, 1, 0, cache_len=S), rel=0.02)


def test_the_window_row_costs_what_its_parts_cost():
  # A trunk with no branches is a plain forward pass; each branch adds its own tokens against
  # the trunk's keys, so a DPO pair's row costs less than two rows prefix + candidate.
  P, N = 1920, 128
  pol = T.preset("1b")
  assert M.branch_row_flops(pol, P, 0, N + 1, train=False) == M.forward_flops(pol, P)
  two_rows = 2 * M.forward_flops(pol, P + N)
  assert M.branch_row_flops(pol, P - 1, 2, N + 1, train=False) < 0.6 * two_rows
  s = M.midtrain_shape(rewrite=False)
  assert s.candidates == 17 and s.pair_prompt == 2300
  parts = M.parts(s)
  assert parts["update"] < parts["update (before)"]
  # the judge prompts dominate at the paper's shape: 2 axes x both orders of 136 pairs
  assert parts["judge"] > 100 * parts["update"]
  lines = M.main(["--no-rewrite"])
  assert lines[0].startswith("sip_cost:") and any("GPU-h" in l for l in lines)
