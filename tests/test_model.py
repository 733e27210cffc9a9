"""The decoder: shapes, masking, packing, KV cache, presets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax.models import transformer as T
from tests.helpers import tiny_model, tiny_model_config


def test_forward_shapes_and_dtype():
  m = tiny_model()
  logits = m(jnp.zeros((3, 7), jnp.int32))
  assert logits.shape == (3, 7, 128)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": True},
                                {"dtype": "bfloat16"}, {"remat": True}])
def test_param_count_matches_formula(kw):
  m = tiny_model(**kw)
  assert T.count_params(m) == m.cfg.num_params()
  assert jnp.isfinite(m(jnp.ones((1, 4), jnp.int32))).all()


def test_changing_a_future_token_never_changes_earlier_logits():
  m = tiny_model()
  toks = np.random.default_rng(0).integers(0, 128, (2, 16)).astype(np.int32)
  base = m(toks)
  for t in (3, 9, 15):
    changed = toks.copy()
    changed[:, t] = (changed[:, t] + 1) % 128
    out = m(changed)
    np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(out[:, t], base[:, t])


def test_packed_segments_are_isolated():
  """A segment's logits equal those of the same tokens run alone."""
  m = tiny_model()
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, 128, 6), rng.integers(0, 128, 10)
  packed = np.concatenate([a, b])[None]
  segs = np.array([[1] * 6 + [2] * 10])
  pos = np.array([list(range(6)) + list(range(10))])
  out = m(packed, positions=pos, segment_ids=segs)
  np.testing.assert_allclose(out[0, :6], m(a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 6:], m(b[None])[0], atol=1e-5)


def test_padding_does_not_leak_into_real_tokens():
  m = tiny_model()
  toks = np.array([[5, 6, 7, 0, 0]])
  segs = np.array([[1, 1, 1, 0, 0]])
  out = m(toks, segment_ids=segs)
  np.testing.assert_allclose(out[0, :3], m(toks[:, :3])[0], atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": True},
                                {"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32}}])
def test_kv_cache_decode_equals_full_forward(kw):
  m = tiny_model(**kw)
  toks = np.random.default_rng(2).integers(0, 128, (2, 12)).astype(np.int32)
  full = m(toks)
  cache = T.init_cache(m.cfg, 2, 16)
  logits, cache = m(toks[:, :5], cache=cache)
  steps = [logits]
  for t in range(5, 12):
    lg, cache = m(toks[:, t:t + 1], positions=np.full((2, 1), t), cache=cache)
    steps.append(lg)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
  assert int(cache.index) == 12


def test_left_padded_cache_matches_unpadded():
  """The sampler's layout: left padding + per-row positions give the unpadded logits."""
  m = tiny_model()
  row = np.array([9, 8, 7, 6], np.int32)
  padded = np.array([[0, 0, 0, 9, 8, 7, 6]], np.int32)
  segs = np.array([[0, 0, 0, 1, 1, 1, 1]])
  pos = np.array([[0, 0, 0, 0, 1, 2, 3]])
  cache = T.init_cache(m.cfg, 1, 10)
  lg, cache = m(padded, positions=pos, segment_ids=segs, cache=cache)
  np.testing.assert_allclose(lg[0, 3:], m(row[None])[0], atol=1e-5)


def test_llama3_rope_scaling_matches_reference_formula():
  cfg = tiny_model_config(head_dim=64, rope_theta=500000.0, rope_scaling={
      "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192})
  got = np.asarray(T.rope_inv_freq(cfg))
  # Reference: the published Llama 3.1 implementation, written out with numpy.
  inv = 1.0 / (500000.0 ** (np.arange(0, 64, 2) / 64))
  out = []
  for f in inv:
    wl = 2 * np.pi / f
    if wl < 8192 / 4:
      out.append(f)
    elif wl > 8192 / 1:
      out.append(f / 8)
    else:
      s = (8192 / wl - 1) / (4 - 1)
      out.append((1 - s) * f / 8 + s * f)
  np.testing.assert_allclose(got, np.array(out), rtol=1e-5)


@pytest.mark.parametrize("name,expected", [("1b", 1_235_814_400), ("8b", 8_030_261_248)])
def test_big_presets_build_abstractly(name, expected):
  cfg = T.preset(name)
  abstract = T.abstract_model(cfg)  # jax.eval_shape: no memory is allocated
  assert T.count_params(abstract) == expected == cfg.num_params()
  leaf = jax.tree.leaves(nnx.state(abstract))[0]
  assert isinstance(leaf, jax.ShapeDtypeStruct)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="n_kv_heads"):
    tiny_model_config(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match="head_dim"):
    tiny_model_config(head_dim=15)
  with pytest.raises(ValueError, match="preset"):
    T.preset("70b-typo")


@pytest.mark.parametrize("tie", [True, False])
def test_initial_logits_are_sane(tie):
  """Tied embeddings start at min(init_std, 1/sqrt(D)), not 1.0: logits std ~ 0.3, not ~sqrt(D)=16."""
  m = tiny_model(d_model=256, head_dim=64, tie_embeddings=tie, vocab_size=512)
  toks = np.random.default_rng(0).integers(0, 512, (4, 32)).astype(np.int32)
  logits = np.asarray(m(toks))
  assert 0.01 < logits.std() < 1.0, logits.std()
  nll = -np.asarray(jax.nn.log_softmax(logits))[..., 0].mean()
  assert abs(nll - np.log(512)) < 0.5  # the first loss is about log(V), as it should be


def _prefill_then_decode(m, toks, prefill):
  B = toks.shape[0]
  cache = T.init_cache(m.cfg, B, toks.shape[1] + 4)
  logits, cache = m(toks[:, :prefill], cache=cache)
  steps = [logits]
  for t in range(prefill, toks.shape[1]):
    lg, cache = m(toks[:, t:t + 1], positions=np.full((B, 1), t), cache=cache)
    steps.append(lg)
  return np.concatenate(steps, axis=1)


def test_bfloat16_training_logprobs_match_decode():
  """bf16: the train path (one forward) and prefill + cached decode give the same log-probs.

  Both sum attention logits in float32; before, the train path rounded them to bf16
  and the log-probs differed by ~2e-3, which biases DPO / KL terms (sampler vs step).
  Run eagerly, op by op: under jit, XLA's excess-precision rewrites
  (xla_allow_excess_precision, on by default) skip some bf16 roundings differently in
  the two programs, which leaves ~1e-3 (exactly 0 with that flag off).
  """
  m = tiny_model(dtype="bfloat16", n_layers=1)
  toks = np.random.default_rng(2).integers(0, 128, (2, 16)).astype(np.int32)
  full = np.asarray(jax.nn.log_softmax(m(toks)))
  dec = np.asarray(jax.nn.log_softmax(_prefill_then_decode(m, toks, prefill=4)))
  assert np.abs(full - dec).max() < 2e-4, np.abs(full - dec).max()


def test_a_tree_in_one_row_computes_each_path_alone():
  """visible_until: a trunk, two continuations of it and a continuation of the first, laid out
  depth first in one row, give each token the log-probs of its own path as a separate row."""
  m = T.Transformer(tiny_model_config(), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  trunk, a, a2, b = (rng.integers(3, 128, n).astype(np.int32) for n in (5, 3, 4, 2))
  # depth first: trunk | a | a2 (a's child) | b (trunk's child); a token stays visible until its
  # node's subtree ends.
  nodes = [(trunk, 0, 14), (a, 5, 12), (a2, 8, 12), (b, 5, 14)]
  toks, pos, until = [], [], []
  for ids, first_pos, end in nodes:
    toks += list(ids)
    pos += list(first_pos + np.arange(len(ids)))
    until += [end] * len(ids)
  row = lambda x: jnp.asarray(np.asarray(x, np.int32)[None])
  tree = m(row(toks), positions=row(pos), visible_until=row(until))[0]
  alone = lambda *parts: m(row(np.concatenate(parts)))[0]
  np.testing.assert_allclose(tree[5:8], alone(trunk, a)[5:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tree[8:12], alone(trunk, a, a2)[8:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tree[12:14], alone(trunk, b)[5:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tree[:5], alone(trunk), rtol=1e-5, atol=1e-5)
  # without the spans, b would see a and a2: different
  flat = m(row(toks), positions=row(pos))[0]
  assert not np.allclose(flat[12:14], tree[12:14], atol=1e-4)
