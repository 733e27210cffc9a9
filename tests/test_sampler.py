"""The compiled sampler: exactness vs the full forward pass, distributions, fan-out, stops,
compilation counts, sharding, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.sampling.sampler import Sampler, process_logits
from tests.helpers import cpu_devices, tiny_model

PROMPTS = [[1, 5, 7], [1, 9, 9, 9, 9, 9, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], [4], [1, 2]]


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=0)


@jax.jit
def _forward(model, tokens):
  return model(tokens)


def naive_greedy(model, prompt, n):
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(jnp.argmax(_forward(model, jnp.asarray([seq]))[0, -1])))
  return seq[len(prompt):]


def test_greedy_equals_full_forward_argmax(model):
  out = Sampler(model)(PROMPTS, max_new_tokens=12, key=jax.random.key(0), temperature=0.0)
  assert out.tokens.shape == (4, 12)
  for i, p in enumerate(PROMPTS):
    assert out.tokens[i].tolist() == naive_greedy(model, p, 12), i
  np.testing.assert_array_equal(out.lengths, 12)
  np.testing.assert_array_equal(out.prompt_lengths, [len(p) for p in PROMPTS])


def test_logprobs_equal_full_forward_logprobs(model):
  out = Sampler(model)(PROMPTS, max_new_tokens=8, key=jax.random.key(1), temperature=1.0)
  for i, p in enumerate(PROMPTS):
    seq = np.array(p + out.tokens[i].tolist())[None]
    lp = jax.nn.log_softmax(_forward(model, jnp.asarray(seq))[0], axis=-1)
    expected = [float(lp[len(p) - 1 + t, out.tokens[i, t]]) for t in range(8)]
    np.testing.assert_allclose(out.logprobs[i], expected, atol=2e-5)


def _chi2_critical(df, z=3.09):  # Wilson-Hilferty approximation of the 0.999 quantile
  return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 4, 1.0),
                                                     (1.0, 0, 0.6)])
def test_sampled_frequencies_match_the_distribution(temperature, top_k, top_p):
  m = tiny_model(seed=3, vocab_size=8)
  m.lm_head[...] = m.lm_head[...] * 5.0  # a non-uniform next-token distribution (max p ~0.38)
  prompt = [1, 2, 3]
  logits = np.asarray(_forward(m, jnp.asarray([prompt]))[0, -1], np.float64) / temperature
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  keep = np.ones(8, bool)
  if top_k:
    keep[order[top_k:]] = False
  if top_p < 1.0:
    cum_before = np.cumsum(probs[order]) - probs[order]
    keep[order[cum_before >= top_p]] = False
  expected = np.where(keep, probs, 0.0)
  expected /= expected.sum()
  n = 6000
  out = Sampler(m)([prompt], max_new_tokens=1, key=jax.random.key(7), temperature=temperature,
                   top_k=top_k, top_p=top_p, num_samples=n)
  counts = np.bincount(out.tokens[:, 0], minlength=8)
  assert counts[~keep].sum() == 0, (counts, keep)
  e = expected[keep] * n
  chi2 = float(((counts[keep] - e) ** 2 / e).sum())
  assert chi2 < _chi2_critical(keep.sum() - 1), (chi2, counts, expected)
  # The returned log-probs are those of the filtered, tempered distribution.
  np.testing.assert_allclose(np.exp(out.logprobs[:50, 0]), expected[out.tokens[:50, 0]], rtol=1e-4)


def test_process_logits_keeps_at_least_one_token():
  logits = jnp.array([[5.0, 1.0, 0.0, -1.0]])
  out = process_logits(logits, 1.0, 0, 0.01, True)
  assert np.isfinite(np.asarray(out)).sum() == 1


def test_fan_out_equals_prefilling_copies(model):
  s = Sampler(model)
  k = jax.random.key(4)
  fan = s(PROMPTS[:3], max_new_tokens=6, key=k, temperature=1.0, num_samples=3)
  copies = s([p for p in PROMPTS[:3] for _ in range(3)], max_new_tokens=6, key=k, temperature=1.0)
  np.testing.assert_array_equal(fan.tokens, copies.tokens)
  np.testing.assert_allclose(fan.logprobs, copies.logprobs, atol=1e-6)
  assert len({tuple(r) for r in fan.tokens[:3]}) > 1  # the K samples of a prompt differ


def test_stop_tokens_pad_the_rest_and_set_lengths(model):
  s = Sampler(model, pad_id=0)
  free = s(PROMPTS, max_new_tokens=10, key=jax.random.key(0), temperature=0.0)
  stops = [[int(free.tokens[i, 3])] for i in range(4)]  # per-row stop: each row's 4th token
  out = s(PROMPTS, max_new_tokens=10, key=jax.random.key(0), temperature=0.0, stop_tokens=stops)
  for i in range(4):
    first = free.tokens[i].tolist().index(stops[i][0])
    assert out.lengths[i] == first + 1
    np.testing.assert_array_equal(out.tokens[i, :first + 1], free.tokens[i, :first + 1])
    assert (out.tokens[i, first + 1:] == 0).all() and (out.logprobs[i, first + 1:] == 0).all()


def test_early_stop_while_loop_equals_scan(model):
  s = Sampler(model)
  kw = dict(max_new_tokens=9, key=jax.random.key(2), temperature=1.0, stop_tokens=[5, 6, 7])
  a, b = s(PROMPTS, **kw), s(PROMPTS, early_stop=True, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)


def test_single_prompt_single_sample_and_array_input(model):
  s = Sampler(model)
  one = s([[3, 4, 5]], max_new_tokens=5, key=jax.random.key(0), temperature=0.0)
  assert one.tokens.shape == (1, 5)
  arr = np.array([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0]])
  two = s(arr, prompt_lengths=[3, 2], max_new_tokens=5, key=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(two.tokens[0], one.tokens[0])


def test_compiles_once_per_bucket(model):
  s = Sampler(model, prompt_buckets=(8, 32))
  kw = dict(key=jax.random.key(0), temperature=1.0)
  s([[1, 2]], max_new_tokens=5, **kw)
  after_first = s.num_compilations
  assert after_first == 2  # prefill + decode
  s([[1, 2, 3, 4, 5]], max_new_tokens=7, **kw)       # same prompt bucket (8), same decode bucket (8)
  s([[9, 9, 9]], max_new_tokens=6, **kw)
  assert s.num_compilations == after_first
  s([[1] * 20], max_new_tokens=5, **kw)               # next prompt bucket
  assert s.num_compilations == after_first + 2


def test_functional_sample_uses_the_given_params_without_recompiling(model):
  s = Sampler(model)
  before = s([[1, 2, 3]], max_new_tokens=6, key=jax.random.key(0), temperature=0.0)
  n = s.num_compilations
  other = tiny_model(seed=11)
  after = s.sample(nnx.state(other), [[1, 2, 3]], max_new_tokens=6, key=jax.random.key(0),
                   temperature=0.0)
  assert s.num_compilations == n
  assert after.tokens[0].tolist() == naive_greedy(other, [1, 2, 3], 6) != before.tokens[0].tolist()
  assert not hasattr(s, "update_params")


def test_call_reads_the_models_current_weights_and_deleted_params_raise():
  m = tiny_model(seed=0)
  s = Sampler(m)
  other = tiny_model(seed=11)
  nnx.update(m, nnx.state(other))          # e.g. an in-place optimizer update of the policy
  out = s([[1, 2, 3]], max_new_tokens=6, key=jax.random.key(0), temperature=0.0)
  assert out.tokens[0].tolist() == naive_greedy(other, [1, 2, 3], 6)
  params = jax.tree.map(lambda x: x + 0, nnx.state(other))
  jax.tree.leaves(params)[0].delete()      # what a donating train step does to the old params
  with pytest.raises(ValueError, match="deleted buffers"):
    s.sample(params, [[1, 2, 3]], max_new_tokens=2, key=jax.random.key(0))


def test_per_row_max_new_tokens(model):
  s = Sampler(model)
  free = s(PROMPTS, max_new_tokens=12, key=jax.random.key(0), temperature=0.0)
  limits = [3, 12, 1, 7]
  out = s(PROMPTS, max_new_tokens=limits, key=jax.random.key(0), temperature=0.0)
  assert out.tokens.shape == (4, 12)
  np.testing.assert_array_equal(out.lengths, limits)
  for i, n in enumerate(limits):
    np.testing.assert_array_equal(out.tokens[i, :n], free.tokens[i, :n])
    assert (out.tokens[i, n:] == 0).all() and (out.logprobs[i, n:] == 0).all()
  fan = s(PROMPTS[:2], max_new_tokens=[2, 5], num_samples=3, key=jax.random.key(1))
  np.testing.assert_array_equal(fan.lengths, [2, 2, 2, 5, 5, 5])


class _Tok:
  eos_id = None

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def _first_bigram_end(row, bigram):
  for t in range(1, len(row)):
    if row[t - 1] == bigram[0] and row[t] == bigram[1]:
      return t + 1
  return None


def test_per_row_stop_sequences_end_rows_and_are_stripped(model):
  s = Sampler(model, pad_id=0)
  free = s(PROMPTS, max_new_tokens=12, key=jax.random.key(0), temperature=0.0)
  seqs = [[free.tokens[i, 4:6].tolist()] for i in range(4)]   # per row: its 5th-6th tokens
  seqs[2].append([127, 126, 125])                             # a second, longer sequence (never hit)
  out = s(PROMPTS, max_new_tokens=12, key=jax.random.key(0), temperature=0.0, stop_sequences=seqs)
  texts = out.texts(_Tok())
  for i in range(4):
    end = _first_bigram_end(free.tokens[i].tolist(), seqs[i][0])
    assert out.lengths[i] == end and out.stop_lengths[i] == 2
    np.testing.assert_array_equal(out.tokens[i, :end], free.tokens[i, :end])
    assert (out.tokens[i, end:] == 0).all()
    assert texts[i] == _Tok().decode(free.tokens[i, :end - 2].tolist())   # stop sequence stripped
    assert out.texts(_Tok(), strip_stop=False)[i] == _Tok().decode(free.tokens[i, :end].tolist())


def test_shared_stop_sequences_and_tokens_together(model):
  s = Sampler(model, pad_id=0)
  free = s(PROMPTS[:2], max_new_tokens=10, key=jax.random.key(0), temperature=0.0)
  a, b = free.tokens[0, 2:5].tolist(), int(free.tokens[1, 6])
  out = s(PROMPTS[:2], max_new_tokens=10, key=jax.random.key(0), temperature=0.0,
          stop_sequences=[a], stop_tokens=[b])
  ends = []
  for i in range(2):
    row = free.tokens[i].tolist()
    tri = next((t + 1 for t in range(2, 10) if row[t - 2:t + 1] == a), 99)
    tok = row.index(b) + 1 if b in row else 99
    ends.append(min(tri, tok, 10))
    assert out.stop_lengths[i] == (3 if tri < tok else 1)
  np.testing.assert_array_equal(out.lengths, ends)


def test_stop_sequence_does_not_match_across_the_prompt(model):
  s = Sampler(model)
  free = s([[1, 2, 3]], max_new_tokens=4, key=jax.random.key(0), temperature=0.0)
  first = int(free.tokens[0, 0])
  if first in free.tokens[0, 1:].tolist():
    pytest.skip("the first token repeats")
  out = s([[1, 2, 3]], max_new_tokens=4, key=jax.random.key(0), temperature=0.0,
          stop_sequences=[[3, first]])  # prompt's last token + first generated token
  assert out.lengths[0] == 4 and out.stop_lengths[0] == 0


def test_early_stop_is_not_held_back_by_padding_rows(model):
  mesh = mesh_lib.make_mesh((4, 1, 2), cpu_devices(8))
  first = Sampler(model)([[1, 2, 3]], max_new_tokens=1, key=jax.random.key(0), temperature=0.0)
  s = Sampler(model, mesh=mesh)   # 1 prompt padded to 4 rows for the data-parallel size
  out = s([[1, 2, 3]], max_new_tokens=16, key=jax.random.key(0), temperature=0.0,
          stop_tokens=[[int(first.tokens[0, 0])]], early_stop=True)
  assert out.lengths.tolist() == [1] and out.decode_steps == 1


def test_sharded_stops_limits_and_fan_out_match_unsharded(model):
  kw = dict(max_new_tokens=[5, 9, 3], key=jax.random.key(3), temperature=1.0, num_samples=2,
            stop_sequences=[[[7, 8]], [], [[9]]], stop_tokens=[4])
  ref = Sampler(model)(PROMPTS[:3], **kw)
  mesh = mesh_lib.make_mesh((2, 2, 2), cpu_devices(8))
  m = tiny_model(seed=0)
  with jax.set_mesh(mesh):
    state = nnx.state(m)
    params = jax.device_put(state, mesh_lib.state_shardings(state, mesh))
  out = Sampler(m, mesh=mesh).sample(params, PROMPTS[:3], **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_array_equal(out.stop_lengths, ref.stop_lengths)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_sharded_sampler_matches_unsharded_and_two_models_coexist(model):
  mesh = mesh_lib.make_mesh((4, 1, 2), cpu_devices(8))
  teacher = tiny_model(seed=5, d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=192)
  ref_policy = Sampler(model)(PROMPTS[:3], max_new_tokens=7, key=jax.random.key(0), temperature=0.0)
  ref_teacher = Sampler(teacher)(PROMPTS[:3], max_new_tokens=7, key=jax.random.key(0), temperature=0.0)
  with jax.set_mesh(mesh):
    for m in (model, teacher):  # place params with their logical shardings
      state = nnx.state(m)
      nnx.update(m, jax.device_put(state, mesh_lib.state_shardings(state, mesh)))
  policy_s, teacher_s = Sampler(model, mesh=mesh), Sampler(teacher, mesh=mesh)
  p = policy_s(PROMPTS[:3], max_new_tokens=7, key=jax.random.key(0), temperature=0.0)
  t = teacher_s(PROMPTS[:3], max_new_tokens=7, key=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(p.tokens, ref_policy.tokens)
  np.testing.assert_array_equal(t.tokens, ref_teacher.tokens)
  assert len(nnx.state(model)["embed"][...].sharding.device_set) == 8


@pytest.mark.parametrize("call,match", [
    (lambda s: s([[]], max_new_tokens=3, key=jax.random.key(0)), "prompt 0 is empty"),
    (lambda s: s([[1] * 120], max_new_tokens=20, key=jax.random.key(0)), "exceeds the cache length"),
    (lambda s: s([[1]], max_new_tokens=0, key=jax.random.key(0)), "max_new_tokens must be positive"),
    (lambda s: s([[1]], max_new_tokens=2, key=jax.random.key(0), top_p=0.0), "top_p"),
    (lambda s: s([], max_new_tokens=2, key=jax.random.key(0)), "no prompts"),
    (lambda s: s([[1], [2]], max_new_tokens=[2], key=jax.random.key(0)), "1 entries for 2 prompts"),
    (lambda s: s([[1], [2]], max_new_tokens=[2, 0], key=jax.random.key(0)), "must be positive"),
    (lambda s: s([[1], [2]], max_new_tokens=2, key=jax.random.key(0), stop_sequences=[[[1]]]),
     "stop_sequences has 1 rows for 2 prompts"),
    (lambda s: s([[1]], max_new_tokens=2, key=jax.random.key(0), stop_sequences=[[[]]]),
     "empty stop sequence"),
])
def test_bad_input_errors(model, call, match):
  with pytest.raises(ValueError, match=match):
    call(Sampler(model))


_TWO_HOSTS = r"""
import json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from flax import nnx
from earlyrl_jax.models.scoring import Scorer
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.sampling.sampler import Sampler
from tests.helpers import tiny_model

pid = jax.process_index()
prompts = [[[1, 5, 7], [4], [1, 2, 9, 9, 9, 9, 9, 9, 9]], [[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]]][pid]
limits = [[4, 9, 6], [7]][pid]
model = tiny_model(seed=0)
ref = Sampler(model).sample(nnx.state(model), prompts, max_new_tokens=limits, key=jax.random.key(0),
                            temperature=0.0, stop_tokens=[5])
ref_score = Scorer(model).score(nnx.state(model), prompts, [[2, 3]] * len(prompts))
mesh = mesh_lib.make_mesh((2, 2, 2))  # 8 devices, 4 per process
with jax.set_mesh(mesh):
  state = nnx.state(model)
  params = jax.device_put(state, mesh_lib.state_shardings(state, mesh))
out = Sampler(model, mesh=mesh).sample(params, prompts, max_new_tokens=limits, key=jax.random.key(0),
                                       temperature=0.0, stop_tokens=[5], early_stop=True)
score = Scorer(model, mesh=mesh).score(params, prompts, [[2, 3]] * len(prompts))
print("RESULT " + json.dumps(dict(
    devices=jax.device_count(), rows=len(out.tokens), same_tokens=bool((out.tokens == ref.tokens).all()),
    same_lengths=bool((out.lengths == ref.lengths).all()),
    score_err=float(np.abs(score.token_logprobs - ref_score.token_logprobs).max()))), flush=True)
"""


@pytest.mark.slow
def test_two_processes_each_get_their_own_rows(tmp_path):
  """Two local processes as two hosts (4 CPU devices each, one 2x2x2 mesh): each passes its own
  prompts (3 and 1 rows: buckets are agreed) and gets back exactly its rows, sampler and scorer."""
  import os
  import socket
  import subprocess
  import sys
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=repo)
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_HOSTS, f"127.0.0.1:{port}", str(i)], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=240)[0] for p in procs]
  import json
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, log[-3000:]
    res = json.loads(next(l for l in log.splitlines() if l.startswith("RESULT "))[7:])
    assert res["devices"] == 8 and res["rows"] == [3, 1][i], res
    assert res["same_tokens"] and res["same_lengths"] and res["score_err"] < 1e-5, res


@pytest.mark.parametrize("top_k,top_p", [(50, None), (0, 0.9), (7, 0.5), (0, None)])
def test_sort_free_sampling_matches_the_sort_based_filter(top_k, top_p):
  """sample_rows (bisection thresholds, inverse CDF) draws from exactly process_logits' distribution."""
  from earlyrl_jax.sampling.sampler import sample_rows
  x = jax.random.normal(jax.random.key(0), (16, 1000)) * 3
  ref = jax.nn.log_softmax(process_logits(x, 1.0, top_k, top_p or 1.0, top_p is not None), axis=-1)
  draw = jax.jit(lambda k: sample_rows(x, k, False, top_k, top_p))
  for i in range(20):
    tok, lp = draw(jax.random.key(i))
    expected = np.take_along_axis(np.asarray(ref), np.asarray(tok)[:, None], -1)[:, 0]
    assert np.isfinite(expected).all()                      # only kept tokens are drawn
    np.testing.assert_allclose(lp, expected, atol=1e-5)     # normalised over the same kept set


def test_k_samples_of_a_prompt_are_k_copies_of_it_without_copying_its_cache():
  """The fan-out reads one prompt cache per group: the tokens equal those of the prompts
  repeated K times (rows b*K + k), as when the cache was copied K times."""
  m = tiny_model(seed=4)
  sampler = Sampler(m, pad_id=0)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(1, 128, rng.integers(2, 20)) for _ in range(3)]
  for kw in (dict(temperature=1.0), dict(temperature=0.7, top_p=0.9, stop_tokens=[5, 6, 7])):
    fan = sampler(prompts, max_new_tokens=12, key=jax.random.key(1), num_samples=4, **kw)
    copies = sampler([p for p in prompts for _ in range(4)], max_new_tokens=12, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(fan.tokens, copies.tokens)
    np.testing.assert_array_equal(fan.lengths, copies.lengths)
    np.testing.assert_allclose(fan.logprobs, copies.logprobs, atol=1e-5)


def test_greedy_calls_with_a_few_prompts_share_one_program():
  m = tiny_model(seed=5)
  sampler = Sampler(m, pad_id=0)
  rng = np.random.default_rng(4)
  prompts = [rng.integers(1, 128, 6) for _ in range(5)]
  one = sampler(prompts[:1], max_new_tokens=8, key=jax.random.key(0), temperature=0.0)
  n = sampler.num_compilations
  three = sampler(prompts[:3], max_new_tokens=8, key=jax.random.key(0), temperature=0.0)
  sampler(prompts, max_new_tokens=8, key=jax.random.key(0), temperature=0.0)
  assert sampler.num_compilations == n   # 1, 3 and 5 prompts: the same 8-row programs
  np.testing.assert_array_equal(three.tokens[:1], one.tokens)
