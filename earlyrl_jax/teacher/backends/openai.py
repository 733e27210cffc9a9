"""The teacher behind an OpenAI-compatible `/v1/completions` endpoint (vLLM, SGLang, TGI,
`earlyrl-serve`): an 8B-120B teacher on its own nodes while the policy trains in JAX.

    backend = OpenAIBackend(OpenAISettings(url="http://judge:8000/v1", model="llama-8b-instruct"),
                            tokenizer=load_tokenizer_dir("/models/Llama-3.1-8B-Instruct"), max_len=8192)

What is sent (docs/serving.md):
- Log-probs of given text: the rows `prompt + continuation`, tokenized HERE with the teacher's own
  tokenizer by the contract's rule (`base.scoring_ids`: one BOS where the tokenizer's convention
  puts one, none added when the rendered text already holds it), are sent as token ids
  (`prompt: [[ids...], ...]`) with `echo: true, logprobs: 1, max_tokens: 1, temperature: 0`; the
  response's `logprobs.token_logprobs` of the continuation's tokens are summed. Token ids mean the
  server cannot add a second BOS or tokenize differently (vLLM and SGLang take them).
  `prompt_format='text'` sends the text instead (with `add_special_tokens: false` when it already
  starts with BOS) and finds the continuation's tokens by `logprobs.text_offset`.
- Generation: token-id prompts with max_tokens, temperature, top_p, n, stop, seed; the choices'
  `text` (n per prompt, in `index` order). EOS ends a sample as the server's defaults do.

Requests carry `batch_size` rows each (the API takes a list of prompts) and up to `concurrency`
are in flight (a thread pool over one httpx client). A request that times out, drops its
connection, answers 5xx / 429 / 408 or malformed JSON is retried `max_retries` times with
exponential backoff and full jitter (Retry-After honoured). Rows of a request that still fails
come back NaN / None and are counted by kind in `failures`; past `max_failure_share` of a call's
rows the call raises TeacherFailure naming the URL and model and quoting one raw response. Nothing
is ever made up: a missing log-prob is NaN, never 0. The API key is read from the environment
variable named by `api_key_env` and sent as a bearer token; it is never logged or printed.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import random
import threading
import time
from collections.abc import Sequence

import numpy as np

from earlyrl_jax.teacher.backends.base import TeacherFailure, prompt_ids, scoring_ids

RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclasses.dataclass(frozen=True)
class OpenAISettings:
  """`teacher.openai.*` (configs/midtrain.py documents each field)."""
  url: str                         # base URL ending in /v1, e.g. http://judge:8000/v1
  model: str = ""                  # served model name ('' = the only one /v1/models lists)
  api_key_env: str = ""            # env var holding the API key ('' = no Authorization header)
  concurrency: int = 16            # requests in flight
  batch_size: int = 32             # rows (prompts) per request
  timeout_s: float = 120.0         # per request (connect, read, write)
  max_retries: int = 5             # retries of one request after its first try
  max_failure_share: float = 0.05  # failed rows per call above this share raise TeacherFailure
  backoff_s: float = 0.5           # first retry waits ~this (x2 per retry, full jitter)
  backoff_max_s: float = 30.0      # longest wait between tries
  prompt_format: str = "tokens"    # 'tokens' (ids tokenized here: exact) | 'text' (e.g. TGI)

  def check(self) -> None:
    """Raises ValueError naming the `teacher.openai.*` field of a bad value."""
    problems = []
    if not self.url.startswith(("http://", "https://")):
      problems.append(f"url={self.url!r}: expected http://HOST:PORT/v1")
    for f in ("concurrency", "batch_size"):
      if int(getattr(self, f)) < 1:
        problems.append(f"{f}={getattr(self, f)!r}: must be >= 1")
    if not self.timeout_s > 0:
      problems.append(f"timeout_s={self.timeout_s!r}: must be > 0")
    if int(self.max_retries) < 0:
      problems.append(f"max_retries={self.max_retries!r}: must be >= 0")
    if not 0.0 <= self.max_failure_share < 1.0:
      problems.append(f"max_failure_share={self.max_failure_share!r}: must be in [0, 1)")
    if self.prompt_format not in ("tokens", "text"):
      problems.append(f"prompt_format={self.prompt_format!r}: expected 'tokens' or 'text'")
    if self.api_key_env and self.api_key_env not in os.environ:
      problems.append(f"api_key_env={self.api_key_env!r}: no such environment variable is set")
    if problems:
      raise ValueError("; ".join(f"teacher.openai.{p}" for p in problems))


class _Failed(Exception):
  """One request failed for good: its kind ('timeout', 'http_500', 'malformed', ...) and a raw
  excerpt of what came back."""

  def __init__(self, kind: str, raw: str):
    super().__init__(f"{kind}: {raw}")
    self.kind, self.raw = kind, raw


class OpenAIBackend:
  """`Backend` (teacher/backends/base.py) over an OpenAI-compatible completions server."""

  def __init__(self, settings: OpenAISettings, tokenizer, *, max_len: int, transport=None,
               sleep=time.sleep, check_server: bool = True):
    import httpx   # the [serve] extra; the package imports without it
    settings.check()
    self.settings, self.tokenizer, self.max_len = settings, tokenizer, int(max_len)
    self.base = settings.url.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if settings.api_key_env:
      headers["Authorization"] = f"Bearer {os.environ[settings.api_key_env]}"
    self._httpx = httpx
    self._client = httpx.Client(
        timeout=httpx.Timeout(settings.timeout_s), headers=headers, transport=transport,
        limits=httpx.Limits(max_connections=settings.concurrency,
                            max_keepalive_connections=settings.concurrency))
    self._pool = concurrent.futures.ThreadPoolExecutor(settings.concurrency,
                                                       thread_name_prefix="teacher-http")
    self._sleep = sleep
    self._rng = random.Random(0)
    self._lock = threading.Lock()
    self.failures: collections.Counter = collections.Counter()  # failed rows by kind
    self.retries: collections.Counter = collections.Counter()   # retried tries by kind
    self.requests = 0
    self.model = settings.model
    self.name = f"openai {self.base} model {self.model or '?'}"
    if check_server:
      self.model = self._check_model()
      self.name = f"openai {self.base} model {self.model}"

  def close(self) -> None:
    self._pool.shutdown(wait=True)
    self._client.close()

  # ----------------------------------------------------------------- HTTP
  def _check_model(self) -> str:
    """The served model: must be listed by /v1/models (the only one when settings.model='')."""
    try:
      r = self._client.get(self.base + "/models")
      r.raise_for_status()
      self._models = r.json()["data"]
      ids = [m["id"] for m in self._models]
    except Exception as e:
      raise TeacherFailure(f"{self.name}: GET {self.base}/models failed ({type(e).__name__}: "
                           f"{str(e)[:200]}); is the server up at teacher.openai.url?") from None
    if self.settings.model:
      if self.settings.model not in ids:
        raise TeacherFailure(f"{self.name}: the server serves {ids}, not teacher.openai.model="
                             f"{self.settings.model!r}")
      return self.settings.model
    if len(ids) != 1:
      raise TeacherFailure(f"{self.name}: the server serves {ids}; set teacher.openai.model")
    return ids[0]

  def served_max_len(self) -> int:
    """The context the server lists for the model (vLLM's `max_model_len`); 0 when unknown."""
    for m in getattr(self, "_models", []):
      if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):
        return m["max_model_len"]
    return 0

  def _wait(self, attempt: int, response=None) -> None:
    s = self.settings
    delay = min(s.backoff_max_s, s.backoff_s * 2 ** attempt) * self._rng.uniform(0.5, 1.5)
    after = response.headers.get("retry-after") if response is not None else None
    if after:
      try:
        delay = min(s.backoff_max_s, max(delay, float(after)))
      except ValueError:
        pass
    self._sleep(delay)

  def _post(self, body: dict, parse):
    """POST /completions with retries; returns parse(json) or raises _Failed."""
    httpx = self._httpx
    last = _Failed("error", "no try made")
    for attempt in range(self.settings.max_retries + 1):
      response = None
      try:
        with self._lock:
          self.requests += 1
        response = self._client.post(self.base + "/completions", content=json.dumps(body))
        if response.status_code != 200:
          last = _Failed(f"http_{response.status_code}", response.text[:500])
          if response.status_code not in RETRY_STATUS:
            raise last
        else:
          try:
            return parse(response.json())
          except (ValueError, KeyError, TypeError, IndexError) as e:
            last = _Failed("malformed", f"{type(e).__name__}: {e}; body: {response.text[:400]}")
      except httpx.TimeoutException as e:
        last = _Failed("timeout", f"{type(e).__name__}: {e}")
      except httpx.TransportError as e:   # refused, reset, dropped mid-response
        last = _Failed("connection", f"{type(e).__name__}: {e}")
      if attempt < self.settings.max_retries:
        with self._lock:
          self.retries[last.kind] += 1
        self._wait(attempt, response)
    raise last

  def _run(self, bodies: list[dict], parse_fns: list, sizes: list[int]) -> tuple[list, dict]:
    """Every request concurrently; (results or None per request, {kind: raw} of failures)."""
    futures = [self._pool.submit(self._post, b, p) for b, p in zip(bodies, parse_fns)]
    results, raws = [], {}
    for f, size in zip(futures, sizes):
      try:
        results.append(f.result())
      except _Failed as e:
        results.append(None)
        with self._lock:
          self.failures[e.kind] += size
        raws.setdefault(e.kind, e.raw)
    return results, raws

  def _check_share(self, failed: int, total: int, raws: dict, what: str) -> None:
    if total and failed / total > self.settings.max_failure_share:
      kind, raw = next(iter(raws.items()))
      raise TeacherFailure(
          f"{self.name}: {failed} of {total} {what} failed after {self.settings.max_retries} "
          f"retries ({dict(self.failures)}), more than teacher.openai.max_failure_share="
          f"{self.settings.max_failure_share}; one raw response ({kind}): {raw[:500]}")

  def _batches(self, n: int) -> list[slice]:
    b = self.settings.batch_size
    return [slice(i, min(n, i + b)) for i in range(0, n, b)]

  def _prompt(self, ids: list[int], text: str):
    return ids if self.settings.prompt_format == "tokens" else text

  def _extra(self, texts: Sequence[str]) -> dict:
    bos = getattr(self.tokenizer, "bos_id", None)
    if self.settings.prompt_format == "text" and bos is not None and texts and all(
        self.tokenizer.encode(t)[:1] == [bos] for t in texts):
      return {"add_special_tokens": False}   # the rendered text holds its BOS: no second one
    return {}

  # ----------------------------------------------------------------- the contract
  def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    rows = [scoring_ids(self.tokenizer, p, c) for p, c in zip(prompts, continuations)]
    text_mode = self.settings.prompt_format == "text"
    bodies, parses, sizes = [], [], []
    for sl in self._batches(len(rows)):
      part = rows[sl]
      texts = [p + c for p, c in zip(prompts[sl], continuations[sl])]
      cuts = [(len(p), len(p) + len(c)) for p, c in zip(prompts[sl], continuations[sl])]
      bodies.append({"model": self.model, "prompt": [self._prompt(ids, t) for (ids, _), t in
                                                      zip(part, texts)],
                     "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0,
                     **self._extra(texts)})
      parses.append(lambda data, part=part, cuts=cuts: _parse_echo(data, part, cuts, text_mode))
      sizes.append(len(part))
    results, raws = self._run(bodies, parses, sizes)
    out = np.full((len(rows),), np.nan, np.float64)
    for sl, res in zip(self._batches(len(rows)), results):
      if res is not None:
        out[sl] = res
    self._check_share(int(np.isnan(out).sum()), len(rows), raws, "log-prob rows")
    return out

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, n: int = 1, stop: Sequence[str] = (), seed: int = 0
               ) -> list[list[str | None]]:
    rows = [prompt_ids(self.tokenizer, p) for p in prompts]
    bodies, parses, sizes = [], [], []
    for sl in self._batches(len(rows)):
      bodies.append({"model": self.model,
                     "prompt": [self._prompt(ids, t) for ids, t in zip(rows[sl], prompts[sl])],
                     "max_tokens": int(max_new_tokens), "temperature": float(temperature),
                     "top_p": float(top_p), "n": int(n), "seed": int(seed) + sl.start,
                     **({"stop": list(stop)} if stop else {}), **self._extra(prompts[sl])})
      k = sl.stop - sl.start
      parses.append(lambda data, k=k: _parse_texts(data, k, n))
      sizes.append(k * n)
    results, raws = self._run(bodies, parses, sizes)
    out: list[list[str | None]] = []
    for sl, res in zip(self._batches(len(rows)), results):
      out.extend(res if res is not None else [[None] * n for _ in range(sl.stop - sl.start)])
    failed = sum(s is None for row in out for s in row)
    self._check_share(failed, len(rows) * n, raws, "samples")
    return out


def _choices(data: dict, count: int) -> list[dict]:
  choices = sorted(data["choices"], key=lambda c: int(c["index"]))
  if [int(c["index"]) for c in choices] != list(range(count)):
    raise ValueError(f"expected choices 0..{count - 1}, got indices "
                     f"{[c.get('index') for c in data['choices']][:8]}")
  return choices


def _finite(values) -> list[float]:
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
      raise ValueError(f"token log-prob {v!r} is not a number")
    out.append(float(v))
  return out


def _parse_echo(data: dict, rows: list[tuple[list[int], int]], cuts, text_mode: bool) -> list[float]:
  """Sum of the continuation's token log-probs per row, from an echo response."""
  out = []
  for choice, (ids, k0), (start, end) in zip(_choices(data, len(rows)), rows, cuts):
    lp = choice["logprobs"]["token_logprobs"]
    if text_mode:
      offsets = choice["logprobs"]["text_offset"]
      if len(offsets) != len(lp):
        raise ValueError(f"{len(offsets)} text offsets for {len(lp)} token log-probs")
      picked = [lp[j] for j in range(1, len(lp)) if start <= offsets[j] < end]
      if not picked:
        raise ValueError(f"no token of the continuation among offsets {offsets[-8:]}")
    else:
      if len(lp) < len(ids):
        raise ValueError(f"{len(lp)} token log-probs for a prompt of {len(ids)} tokens (no echo?)")
      picked = lp[k0:len(ids)]
    out.append(sum(_finite(picked)))
  return out


def _parse_texts(data: dict, k: int, n: int) -> list[list[str]]:
  choices = _choices(data, k * n)
  texts = [c["text"] for c in choices]
  if not all(isinstance(t, str) for t in texts):
    raise ValueError("a choice's text is not a string")
  return [texts[i * n:(i + 1) * n] for i in range(k)]
