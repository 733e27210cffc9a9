"""Shared-prefix verdict scoring equals the plain forward pass of each whole prompt."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.models.shared_prefix import SharedPrefixScorer, split_shared
from tests.helpers import cpu_devices, tiny_model

CANDS = [5, 17, 99, 3]


def reference(model, prompts, cands):
  """log-softmax at each whole prompt's last token: one plain forward of the right-padded
  prompts (no cache; causal masking makes right padding inert)."""
  L = max(len(p) for p in prompts)
  toks = np.zeros((len(prompts), L), np.int32)
  segs = np.zeros((len(prompts), L), np.int32)
  for i, p in enumerate(prompts):
    toks[i, :len(p)], segs[i, :len(p)] = p, 1
  logits = _forward(model, toks, segs)
  last = np.asarray(logits)[np.arange(len(prompts)), [len(p) - 1 for p in prompts]]
  return np.asarray(jax.nn.log_softmax(last, axis=-1))[:, cands]


@jax.jit
def _forward(model, toks, segs):
  return model(toks, segment_ids=segs)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  shared = [rng.integers(1, 128, size=n).tolist() for n in (23, 0, 5, 40)]
  group_of_row = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 0]
  rests = [rng.integers(1, 128, size=n).tolist() for n in (7, 1, 12, 9, 3, 6, 0, 11, 2, 5, 13, 4)]
  return shared, rests, group_of_row


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=3)


def test_matches_full_forward_mixed_lengths(model):
  shared, rests, grp = batch()
  want = reference(model, [shared[g] + r for g, r in zip(grp, rests)], CANDS)
  got = SharedPrefixScorer(model).verdict_logprobs(None, shared, rests, grp, CANDS)
  assert got.shape == (len(rests), len(CANDS))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # A different prefix changes the answer (the test can fail): rows really read their group.
  wrong = SharedPrefixScorer(model).verdict_logprobs(None, shared, rests, [3] * len(rests), CANDS)
  assert np.max(np.abs(wrong - want)) > 1e-3


def test_sharded_mesh_matches_and_does_not_retrace(model):
  shared, rests, grp = batch()
  want = reference(model, [shared[g] + r for g, r in zip(grp, rests)], CANDS)
  mesh = mesh_lib.make_mesh((4, 1, 2), cpu_devices(8))
  m = tiny_model(seed=3)
  with jax.set_mesh(mesh):
    state = nnx.state(m)
    params = jax.device_put(state, mesh_lib.state_shardings(state, mesh))
  graphdef = nnx.graphdef(m)
  sc = SharedPrefixScorer(graphdef, cfg=m.cfg, mesh=mesh)
  got = sc.verdict_logprobs(params, shared, rests, grp, CANDS)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  n = sc.num_compilations
  # Another batch inside the same buckets (fewer rows, other lengths): no new program.
  s2, r2, g2 = batch(seed=1)
  r2, g2 = r2[:9], g2[:9]
  got2 = sc.verdict_logprobs(params, s2, r2, g2, CANDS)
  assert sc.num_compilations == n
  want2 = reference(model, [s2[g] + r for g, r in zip(g2, r2)], CANDS)
  np.testing.assert_allclose(got2, want2, atol=1e-5, rtol=0)


def test_unshared_and_split_shared_agree(model):
  shared, rests, grp = batch()
  prompts = [shared[g] + r for g, r in zip(grp, rests)]
  sc = SharedPrefixScorer(model)
  s2, r2 = split_shared(prompts, grp)
  assert all(len(r) >= 1 for r in r2)
  assert [s2[g] + r for g, r in zip(grp, r2)] == prompts
  assert len(s2[0]) >= len(shared[0])          # the common prefix is found (at least the given one)
  a = sc.verdict_logprobs(None, s2, r2, grp, CANDS)
  b = sc.verdict_logprobs_unshared(None, prompts, CANDS)
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("args,match", [
    (([[1]], [[2]], [1], [3]), "group_of_row must index"),
    (([[1]], [[2], [3]], [0], [3]), "group_of_row has 1 entries for 2 rows"),
    (([[]], [[]], [0], [3]), "both empty"),
    (([[1]], [[2]], [0], [500]), "candidate_ids"),
    (([[1]], [], [], [3]), "no rows"),
])
def test_bad_input_errors(model, args, match):
  with pytest.raises(ValueError, match=match):
    SharedPrefixScorer(model).verdict_logprobs(None, *args)
