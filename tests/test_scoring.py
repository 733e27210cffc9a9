"""Scoring: chunked log-probs equal the full forward pass (values and gradients), the Scorer on
padded mixed-length rows, verdict tokens, bucket reuse, an 8-device mesh, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax.models import scoring
from earlyrl_jax.parallel import mesh as mesh_lib
from tests.helpers import cpu_devices, random_lm_batch, tiny_model

PROMPTS = [[1, 5, 7], [1, 9, 9, 9, 9, 9, 2, 3, 4, 4, 4, 4, 4], [4], [1, 2]]
CONTS = [[3, 3, 8, 9], [7], [5, 6, 7, 8, 9, 10, 11, 12, 13], []]


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=0)


def _full_logprobs(model, tokens, targets, **kw):
  lp = jax.nn.log_softmax(model(jnp.asarray(tokens), **kw), axis=-1)
  return np.take_along_axis(np.asarray(lp), np.asarray(targets)[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [None, 5, 64])
def test_token_logprobs_equal_full_forward_on_packed_rows(model, chunk):
  b = random_lm_batch(3, 24, 128, seed=1)
  kw = dict(positions=b["positions"], segment_ids=b["segment_ids"])
  logp, lse = jax.jit(lambda m: scoring.token_logprobs(m, b["tokens"], b["targets"], chunk_size=chunk,
                                                       **kw))(model)
  np.testing.assert_allclose(logp, _full_logprobs(model, b["tokens"], b["targets"], **kw), atol=1e-5)
  full_lse = jax.nn.logsumexp(model(b["tokens"], **kw), axis=-1)
  np.testing.assert_allclose(lse, full_lse, atol=1e-5)
  assert logp.dtype == lse.dtype == jnp.float32 and logp.shape == (3, 24)


def test_gradient_equals_unchunked_gradient(model):
  b = random_lm_batch(2, 20, 128, seed=2)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 20)), jnp.float32) * b["loss_mask"]
  graphdef, params = nnx.split(model)

  def chunked(p):
    logp, lse = scoring.token_logprobs(nnx.merge(graphdef, p), b["tokens"], b["targets"],
                                       positions=b["positions"], segment_ids=b["segment_ids"],
                                       chunk_size=6)
    return jnp.sum(logp * w) + 0.1 * jnp.sum(lse * w)

  def full(p):
    logits = nnx.merge(graphdef, p)(b["tokens"], positions=b["positions"],
                                    segment_ids=b["segment_ids"])
    lse = jax.nn.logsumexp(logits, -1)
    logp = jnp.take_along_axis(logits, b["targets"][..., None], -1)[..., 0] - lse
    return jnp.sum(logp * w) + 0.1 * jnp.sum(lse * w)

  g1, g2 = jax.jit(jax.grad(chunked))(params), jax.jit(jax.grad(full))(params)
  for a, e in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, e, atol=1e-6, rtol=1e-5)


def test_chunked_backward_never_holds_the_full_logits():
  m = tiny_model(seed=1, vocab_size=4096, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, n_layers=1)
  graphdef, params = nnx.split(m)
  B, T = 16, 64
  toks = jnp.zeros((B, T), jnp.int32)

  def loss(p, chunk):
    return jnp.sum(scoring.token_logprobs(nnx.merge(graphdef, p), toks, toks, chunk_size=chunk)[0])

  temp = lambda c: jax.jit(jax.grad(loss), static_argnums=1).lower(params, c).compile() \
      .memory_analysis().temp_size_in_bytes
  full_logits = B * T * 4096 * 4
  assert temp(T) >= 2 * full_logits        # unchunked: [B, T, V] logits and their gradient are live
  assert temp(4) < full_logits / 2         # chunks of 4: a few [B, 4, V] blocks at a time


def _reference_logprobs(model, rows):
  """Full-forward log-softmax of each row (right padding: causality keeps real positions exact)."""
  L = max(len(r) for r in rows)
  toks = np.array([list(r) + [0] * (L - len(r)) for r in rows], np.int32)
  return np.asarray(jax.nn.log_softmax(jax.jit(lambda m, t: m(t))(model, toks), axis=-1))


def _reference_rows(model, prompts, conts):
  lp = _reference_logprobs(model, [p + c for p, c in zip(prompts, conts)])
  return [[float(lp[i, len(p) - 1 + j, c[j]]) for j in range(len(c))]
          for i, (p, c) in enumerate(zip(prompts, conts))]


def _check_scores(out, ref):
  C = max(len(r) for r in ref)
  assert out.token_logprobs.shape == (len(ref), C)
  for i, r in enumerate(ref):
    np.testing.assert_allclose(out.token_logprobs[i, :len(r)], r, atol=1e-5)
    assert (out.token_logprobs[i, len(r):] == 0).all()
    np.testing.assert_allclose(out.sums[i], sum(r), atol=1e-4)
    assert out.counts[i] == len(r)


def test_scorer_matches_full_forward_on_mixed_lengths(model):
  s = scoring.Scorer(model, chunk_size=8)
  out = s.score(nnx.state(model), PROMPTS, CONTS)
  _check_scores(out, _reference_rows(model, PROMPTS, CONTS))


def test_verdict_logprobs_equal_full_softmax(model):
  s = scoring.Scorer(model)
  cands = [7, 3, 100]
  got = s.verdict_logprobs(nnx.state(model), PROMPTS, cands)
  assert got.shape == (4, 3)
  lp = _reference_logprobs(model, PROMPTS)
  for i, p in enumerate(PROMPTS):
    np.testing.assert_allclose(got[i], lp[i, len(p) - 1, cands], atol=1e-5)


@pytest.mark.parametrize("chunk", [3, 128])
def test_surprise_is_the_gap_to_the_models_first_choice(model, chunk):
  """Scorer.surprise = max log-softmax - log-softmax at the token, per continuation token,
  chunked or not; 0 exactly where the token is the model's first choice."""
  s = scoring.Scorer(model, chunk_size=chunk)
  got = s.surprise(nnx.state(model), PROMPTS, CONTS)
  lp = _reference_logprobs(model, [p + c for p, c in zip(PROMPTS, CONTS)])
  assert got.shape == (4, 9)
  for i, (p, c) in enumerate(zip(PROMPTS, CONTS)):
    rows = lp[i, len(p) - 1:len(p) - 1 + len(c)]
    want = rows.max(-1) - rows[np.arange(len(c)), c]
    np.testing.assert_allclose(got[i, :len(c)], want, atol=1e-5)
    assert (got[i, len(c):] == 0).all() and (got[i, :len(c)] >= 0).all()
  top = int(lp[0, 2].argmax())     # the first choice after prompt 0 costs nothing
  assert s.surprise(nnx.state(model), [PROMPTS[0]], [[top]])[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_bucket_reuse_does_not_retrace(model):
  s = scoring.Scorer(model, buckets=(16, 64))
  params = nnx.state(model)
  s.score(params, [[1, 2, 3]], [[4, 5]])
  s.verdict_logprobs(params, [[1, 2, 3]], [4, 5])
  first = s.num_compilations
  assert first == 2
  s.score(params, [[1, 2, 3, 4, 5, 6], [9]], [[4, 5, 6, 7], [1, 2]])   # 2 rows, length <= 16
  s.score(params, [[7]], [[1] * 12])
  s.verdict_logprobs(params, [[1, 2, 3, 4, 5, 6, 7, 8], [3]], [4, 5])
  assert s.num_compilations == first
  s.score(params, [[1] * 20], [[2] * 5])                                # next length bucket
  assert s.num_compilations == first + 1


def test_micro_batches_and_graphdef_construction(model):
  graphdef, params = nnx.split(model)
  s = scoring.Scorer(graphdef, max_rows=2)  # 4 rows -> 2 micro-batches of 2
  out = s.score(params, PROMPTS, CONTS)
  _check_scores(out, _reference_rows(model, PROMPTS, CONTS))
  assert s.num_compilations == 1


def test_scorer_on_an_8_device_mesh(model):
  ref_scores = scoring.Scorer(model).score(nnx.state(model), PROMPTS, CONTS)
  ref_verdict = scoring.Scorer(model).verdict_logprobs(nnx.state(model), PROMPTS, [3, 4])
  mesh = mesh_lib.make_mesh((2, 2, 2), cpu_devices(8))
  sharded = tiny_model(seed=0)
  with jax.set_mesh(mesh):
    state = nnx.state(sharded)
    params = jax.device_put(state, mesh_lib.state_shardings(state, mesh))
  s = scoring.Scorer(sharded, mesh=mesh)
  out = s.score(params, PROMPTS[:3], CONTS[:3])  # 3 rows padded to the data-parallel size 4
  np.testing.assert_allclose(out.token_logprobs, ref_scores.token_logprobs[:3], atol=1e-5)
  np.testing.assert_array_equal(out.counts, ref_scores.counts[:3])
  np.testing.assert_allclose(s.verdict_logprobs(params, PROMPTS, [3, 4]), ref_verdict, atol=1e-5)
  assert len(params["embed"][...].sharding.device_set) == 8


@pytest.mark.parametrize("call,match", [
    (lambda s, p: s.score(p, [[1]], [[2], [3]]), "1 prompts but 2 continuations"),
    (lambda s, p: s.score(p, [[]], [[2]]), "prompt 0 is empty"),
    (lambda s, p: s.score(p, [[1] * 100], [[2] * 40]), "max_seq_len"),
    (lambda s, p: s.verdict_logprobs(p, [[1]], [128]), "outside the vocabulary"),
])
def test_errors(model, call, match):
  with pytest.raises(ValueError, match=match):
    call(scoring.Scorer(model), nnx.state(model))
