"""Teacher backends (teacher/backends/): the in-process JAX backend against a direct full-sequence
computation; our OpenAI-compatible server (earlyrl_jax/serve.py) on 127.0.0.1 against the
in-process backend; the HTTP client under injected faults (timeouts, 500s, malformed JSON, a
connection dropped mid-batch, 429 with Retry-After); config validation. A tiny random model."""
import collections
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

httpx = pytest.importorskip("httpx")

from earlyrl_jax import configs  # noqa: E402
from earlyrl_jax.data.tokenizer import ByteTokenizer  # noqa: E402
from earlyrl_jax.serve import CompletionServer  # noqa: E402
from earlyrl_jax.teacher.backends import backend_for, check_config  # noqa: E402
from earlyrl_jax.teacher.backends.base import (Backend, TeacherFailure, prompt_ids,  # noqa: E402
                                               scoring_ids)
from earlyrl_jax.teacher.backends.inprocess import InProcessBackend  # noqa: E402
from earlyrl_jax.teacher.backends.openai import OpenAIBackend, OpenAISettings  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402

PROMPTS = ["Is this text safe? Answer:"] * 2 + ["Which continuation is better? Option"] * 3 + ["Q"]
ANSWERS = [" Yes", " No", " 1", " 2", " 1 and 2", "uite long"]


@pytest.fixture(scope="module")
def model():
  return tiny_model(seed=1, vocab_size=259, max_seq_len=256, init_std=0.3)  # peaked: no near-ties


@pytest.fixture(scope="module")
def backend(model):
  graphdef, params = nnx.split(model)
  return InProcessBackend(graphdef, params, ByteTokenizer(259), model_cfg=model.cfg, name="tiny")


@pytest.fixture(scope="module")
def server(backend):
  with CompletionServer(backend, "tiny", host="127.0.0.1", port=0) as s:
    yield s


def direct_logprobs(model, tokenizer, prompts, continuations) -> list[float]:
  """log p(continuation | prompt) from one full forward pass of each whole row (right-padded:
  causal attention never sees the padding)."""
  rows = [scoring_ids(tokenizer, p, c) for p, c in zip(prompts, continuations)]
  L = max(len(ids) for ids, _ in rows)
  tokens = jnp.asarray([ids + [0] * (L - len(ids)) for ids, _ in rows])
  lp = np.asarray(jax.nn.log_softmax(jax.jit(lambda m, x: m(x))(model, tokens), axis=-1))
  return [float(sum(lp[r, t - 1, ids[t]] for t in range(k0, len(ids))))
          for r, (ids, k0) in enumerate(rows)]


def client(server, transport=None, **kw):
  settings = OpenAISettings(**{"url": server.url, "model": "tiny", "concurrency": 2,
                               "batch_size": 2, "max_retries": 3, "backoff_s": 0.001,
                               "max_failure_share": 0.0, **kw})
  return OpenAIBackend(settings, ByteTokenizer(259), max_len=256, transport=transport)


def test_inprocess_logprobs_equal_a_full_sequence_pass(model, backend):
  got = backend.continuation_logprobs(PROMPTS, ANSWERS)
  want = direct_logprobs(model, backend.tokenizer, PROMPTS, ANSWERS)
  assert got.dtype == np.float64 and got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert isinstance(backend, Backend)
  n = backend.num_compilations
  backend.continuation_logprobs(PROMPTS[::-1], ANSWERS[::-1])
  assert backend.num_compilations == n   # same buckets: no new program
  # One BOS (the byte tokenizer's convention), none added when the text starts with it.
  ids, k0 = scoring_ids(backend.tokenizer, "Answer:", " Yes")
  assert ids[0] == 1 and ids.count(1) == 1 and k0 == len(ids) - 4
  with pytest.raises(ValueError, match="no token of its own"):
    scoring_ids(backend.tokenizer, "Answer:", "")


def test_generate_is_deterministic_at_t0_and_honours_stop_strings(backend):
  a = backend.generate(["The cat", "Hello there"], max_new_tokens=12, temperature=0.0)
  b = backend.generate(["The cat", "Hello there"], max_new_tokens=12, temperature=0.0, seed=7)
  assert a == b and all(len(x) == 1 and isinstance(x[0], str) for x in a)
  full = backend.generate_ids([prompt_ids(backend.tokenizer, "The cat")], max_new_tokens=12)[0][0]
  assert full["finish_reason"] == "length" and len(full["tokens"]) == 12
  stop = full["text"][3:5]
  cut = backend.generate(["The cat"], max_new_tokens=12, stop=[stop])[0][0]
  assert cut == full["text"][:full["text"].find(stop)] and stop not in cut
  many = backend.generate(["The cat"], max_new_tokens=6, temperature=1.0, n=3, seed=1)
  assert len(many[0]) == 3 and many == backend.generate(["The cat"], max_new_tokens=6,
                                                        temperature=1.0, n=3, seed=1)


@pytest.mark.parametrize("prompt_format", ["tokens", "text"])
def test_served_logprobs_and_greedy_texts_equal_inprocess(backend, server, prompt_format):
  c = client(server, prompt_format=prompt_format)
  try:
    assert c.model == "tiny" and c.served_max_len() == 256
    np.testing.assert_allclose(c.continuation_logprobs(PROMPTS, ANSWERS),
                               backend.continuation_logprobs(PROMPTS, ANSWERS), rtol=1e-5, atol=1e-5)
    prompts = ["The cat", "Hello there", "x"]
    assert c.generate(prompts, max_new_tokens=10) == backend.generate(prompts, max_new_tokens=10)
    assert c.generate(prompts, max_new_tokens=10, stop=["e"]) == backend.generate(
        prompts, max_new_tokens=10, stop=["e"])
    assert c.requests >= 3 and not c.failures
  finally:
    c.close()


def test_server_speaks_the_completions_api(server):
  with httpx.Client(timeout=30) as h:
    models = h.get(server.url + "/models").json()
    assert models["data"][0]["id"] == "tiny"
    r = h.post(server.url + "/completions", json={
        "model": "tiny", "prompt": ["ab", "abc"], "echo": True, "logprobs": 1, "max_tokens": 2,
        "temperature": 0, "n": 2}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    lp = r["choices"][2]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == 4 + 2   # BOS a b c + 2
    assert lp["text_offset"][:4] == [0, 0, 1, 2] and r["choices"][2]["text"].startswith("abc")
    assert r["usage"]["prompt_tokens"] == 7
    assert h.post(server.url + "/completions", json={"model": "other", "prompt": "a"}).status_code == 404
    bad = h.post(server.url + "/completions", json={"prompt": "a", "n": 0})
    assert bad.status_code == 400 and "n: bad value" in bad.json()["error"]["message"]
    assert h.post(server.url + "/completions", content=b"{not json").status_code == 400
    big = h.post(server.url + "/completions", content=b" " * (17 * 2**20))
    assert big.status_code == 413


class FaultyTransport(httpx.BaseTransport):
  """Passes requests to the real server, except that POSTs take the next fault of a script:
  'timeout', '500', '429' (Retry-After), 'malformed' (a truncated 200 body), 'drop' (the
  server answers, the connection dies before the client reads it), None (no fault)."""

  def __init__(self, faults, forever: str | None = None):
    self.inner = httpx.HTTPTransport()
    self.faults, self.forever = collections.deque(faults), forever
    self.lock = threading.Lock()
    self.injected = collections.Counter()

  def handle_request(self, request):
    if request.method != "POST":
      return self.inner.handle_request(request)
    with self.lock:
      fault = self.faults.popleft() if self.faults else self.forever
      self.injected[fault] += 1
    if fault == "timeout":
      raise httpx.ReadTimeout("injected timeout", request=request)
    if fault == "500":
      return httpx.Response(500, text="injected internal error", request=request)
    if fault == "429":
      return httpx.Response(429, headers={"Retry-After": "0"}, text="slow down", request=request)
    response = self.inner.handle_request(request)
    response.read()
    if fault == "malformed":
      return httpx.Response(200, content=response.content[:40], request=request)
    if fault == "drop":
      response.close()
      raise httpx.RemoteProtocolError("injected: peer closed connection mid-response",
                                      request=request)
    return response


def test_client_recovers_from_faults_with_the_fault_free_results(server):
  clean = client(server)
  want = clean.continuation_logprobs(PROMPTS, ANSWERS)
  want_text = clean.generate(["The cat", "Hello"], max_new_tokens=6)
  clean.close()
  faults = FaultyTransport(["timeout", "500", None, "malformed", "drop", "429", "drop"])
  c = client(server, transport=faults, max_retries=4)
  try:
    got = c.continuation_logprobs(PROMPTS, ANSWERS)          # 3 requests of 2 rows
    assert np.array_equal(got, want)                          # exactly, every row
    assert c.generate(["The cat", "Hello"], max_new_tokens=6) == want_text
    assert not c.failures
    assert sum(c.retries.values()) == 6 and {"timeout", "http_500", "malformed", "connection",
                                              "http_429"} <= set(c.retries)
  finally:
    c.close()


def test_client_stops_past_the_failure_threshold_and_never_makes_up_values(server):
  c = client(server, transport=FaultyTransport([], forever="500"), max_retries=1)
  try:
    with pytest.raises(TeacherFailure) as e:
      c.continuation_logprobs(PROMPTS, ANSWERS)
    msg = str(e.value)
    assert server.url in msg and "model tiny" in msg and "injected internal error" in msg
    assert "6 of 6 log-prob rows failed" in msg and c.failures["http_500"] == 6
  finally:
    c.close()
  # Below the threshold the failed rows come back NaN (and counted), the others exact.
  c = client(server, transport=FaultyTransport(["malformed"] * 3), max_retries=2,
             max_failure_share=0.5, concurrency=1)
  try:
    got = c.continuation_logprobs(PROMPTS, ANSWERS)
    assert np.isnan(got[:2]).all() and np.isfinite(got[2:]).all() and c.failures["malformed"] == 2
    texts = c.generate(["a", "b", "c"], max_new_tokens=2)
    assert texts[0] != [None]
  finally:
    c.close()


def test_unreachable_server_or_unknown_model_fail_at_once(server):
  with pytest.raises(TeacherFailure, match="is the server up"):
    client(server, url="http://127.0.0.1:9/v1")
  with pytest.raises(TeacherFailure, match="not teacher.openai.model='llama'"):
    client(server, model="llama")


def test_config_selects_and_validates_the_backend(backend, server):
  t = ml_collections.ConfigDict({"backend": "openai", "path": "", "max_len": 0, "openai": {
      "url": server.url, "model": "", "tokenizer_path": "", "api_key_env": "", "concurrency": 2,
      "batch_size": 4, "timeout_s": 10.0, "max_retries": 1, "max_failure_share": 0.0,
      "prompt_format": "tokens"}})
  with pytest.raises(ValueError, match="teacher.openai.tokenizer_path"):
    check_config(t)
  bad = ml_collections.ConfigDict(t.to_dict())
  bad.openai.concurrency = 0
  bad.openai.api_key_env = "EARLYRL_NO_SUCH_KEY"
  with pytest.raises(ValueError, match="teacher.openai.concurrency=0.*api_key_env"):
    check_config(bad)
  cfg = configs.load_config_file(configs.os.path.join(configs.os.path.dirname(__file__), "..",
                                                      "configs", "midtrain.py"))
  cfg.teacher.backend = "vllm"
  with pytest.raises(configs.ConfigError, match="teacher.backend: 'vllm' is not one of"):
    configs.validate_fields(cfg)
  inproc = backend_for(ml_collections.ConfigDict({"backend": "inprocess", "max_len": 64}),
                       teacher=_bundle(backend))
  assert isinstance(inproc, InProcessBackend) and inproc.max_len == 64
  t.openai.tokenizer_path = "/nonexistent"
  with pytest.raises(ValueError, match="/nonexistent holds no tokenizer"):
    backend_for(t)


def _bundle(backend):
  from earlyrl_jax.teacher.teacher import Teacher
  return Teacher(backend.graphdef, backend.params, backend.tokenizer, backend.cfg)
