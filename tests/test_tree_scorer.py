"""models/tree_scorer.py: prompts that share beginnings, read as tries packed into a few rows,
give the read-outs of each prompt scored alone (models/scoring.Scorer)."""
import jax
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax.models.scoring import Scorer
from earlyrl_jax.models.tree_scorer import TreeScorer
from earlyrl_jax.parallel import mesh as mesh_lib
from tests.helpers import cpu_devices, tiny_model


def _prompts(rng, n_groups=5, per_group=4):
  """Groups of prompts with a shared head; some share more (cuts of one text), one repeats."""
  prompts, groups = [], []
  for g in range(n_groups):
    head = list(rng.integers(3, 128, rng.integers(2, 20)))
    text = list(rng.integers(3, 128, 12))
    for k in range(per_group):
      tail = text[:3 * (k + 1)] + [7, 9] if k % 2 else list(rng.integers(3, 128, rng.integers(1, 15)))
      prompts.append(head + tail)
      groups.append(g)
  prompts.append(list(prompts[0]))   # a prompt asked twice
  groups.append(0)
  return prompts, groups


@pytest.mark.parametrize("devices", [1, 8])
def test_tree_reads_equal_each_prompt_alone(devices):
  model = tiny_model(seed=2)
  graphdef, params = nnx.split(model)
  mesh = mesh_lib.make_mesh((devices, 1, 1), cpu_devices(devices))
  params = jax.device_put(params, mesh_lib.replicated(mesh))
  rng = np.random.default_rng(0)
  prompts, groups = _prompts(rng)
  cand = [5, 11, 17]
  tree = TreeScorer(graphdef, mesh=mesh, row_buckets=(32, 64, 128), min_row_len=64)
  alone = Scorer(graphdef, mesh=mesh)
  # verdicts at each prompt's end
  np.testing.assert_allclose(tree.verdict_logprobs(params, prompts, groups, cand),
                             alone.verdict_logprobs(params, prompts, cand), rtol=1e-5, atol=1e-5)
  # shared tokens run once
  assert tree.tokens_tries < 0.8 * tree.tokens_prompts
  # several reads per prompt (every CHECK of an edit prompt), log-probs and gaps of given targets
  reads = [sorted(set(rng.integers(0, len(p) - 1, 3).tolist())) for p in prompts]
  out = tree.read(params, prompts, groups, reads, candidate_ids=cand)
  for i, p in enumerate(prompts):
    for j, r in enumerate(reads[i]):
      np.testing.assert_allclose(out.verdicts[i][j], alone.verdict_logprobs(params, [p[:r + 1]], cand)[0],
                                 rtol=1e-5, atol=1e-5)
    cont = p[reads[i][0] + 1:]
    lp = alone.score(params, [p[:reads[i][0] + 1]], [cont]).token_logprobs[0]
    gaps = alone.surprise(params, [p[:reads[i][0] + 1]], [cont])[0]
    full = tree.read(params, [p], [0], [list(range(reads[i][0], len(p) - 1))])
    np.testing.assert_allclose(full.logprobs[0], lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full.gaps[0], gaps, rtol=1e-5, atol=1e-4)


def test_tries_longer_than_a_row_and_many_rows_split_over_calls():
  model = tiny_model(seed=3)
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(1)
  prompts, groups = _prompts(rng, n_groups=12, per_group=3)
  tree = TreeScorer(graphdef, row_buckets=(16,), max_rows=1, min_row_len=1)   # prompts > 16: own rows
  alone = Scorer(graphdef)
  np.testing.assert_allclose(tree.verdict_logprobs(params, prompts, groups, [4, 8]),
                             alone.verdict_logprobs(params, prompts, [4, 8]), rtol=1e-5, atol=1e-5)
  n = tree.num_compilations
  tree.verdict_logprobs(params, prompts[::-1], groups[::-1], [4, 8])
  assert tree.num_compilations == n   # the same buckets: no new program
  with pytest.raises(ValueError, match="outside prompt"):
    tree.read(params, [[1, 2]], [0], [[2]])
