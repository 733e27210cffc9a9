"""An OpenAI-compatible completions server over our own JAX models (`earlyrl-serve`).

  earlyrl-serve --model=/models/SmolLM2 --port=8000            # an HF directory
  earlyrl-serve --model=WORKDIR/teacher_run/teacher --name=embedded   # an embedded teacher
  # then: --config.teacher.backend=openai --config.teacher.openai.url=http://127.0.0.1:8000/v1

Endpoints: GET /v1/models, GET /health, POST /v1/completions with prompt (a string, a list of
strings, a list of token ids or a list of such lists), max_tokens, temperature, top_p, n, stop,
seed, logprobs, echo, add_special_tokens. It runs on `InProcessBackend`, the in-process teacher
backend, so a teacher served here and the same teacher in-process compute their numbers with the
same code: `echo` log-probs come from its shared-prefix scoring pass (adjacent rows of one prompt
share a prefill, as a server's prefix cache would), generation from its compiled sampler. With
`echo`, `logprobs` and `max_tokens` <= 1 at temperature 0 (how the teacher client asks for
log-probs), the one generated token is the scoring pass's first choice: no second pass.

Why the standard library's ThreadingHTTPServer and not an ASGI stack: one model answers one
request at a time (a lock around the device program; requests batch their rows themselves), so an
event loop buys nothing, and no dependency is added. Its care points are handled here: it binds
127.0.0.1 unless told otherwise; request bodies above `max_body_bytes` are refused (413) before
they are read; at most `max_pending` requests wait for the model, later ones get 503 with
Retry-After (clients back off); rows per request, n and max_tokens are bounded; sockets time out;
handler threads are daemons and `stop()` shuts the loop down. Not for an untrusted network: no
authentication, no TLS.

`top_logprobs` entries hold only the token itself (no alternatives are computed), and generated
tokens' log-probs are those of the distribution sampled from (after temperature / top_p).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from earlyrl_jax.teacher.backends.base import prompt_ids

MAX_BODY_BYTES = 16 * 2**20
MAX_PENDING = 64
MAX_ROWS = 4096
MAX_N = 64


class RequestError(ValueError):
  """A bad request: (HTTP status, message) for the client."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _as_list(x, name: str, kind) -> list:
  if x is None:
    return []
  items = x if isinstance(x, list) else [x]
  if not all(isinstance(i, kind) and not isinstance(i, bool) for i in items):
    raise RequestError(400, f"{name}: expected {kind.__name__} or a list of them")
  return items


class CompletionService:
  """Request -> response dicts (no HTTP here: testable and reusable)."""

  def __init__(self, backend, model_name: str, *, max_rows: int = MAX_ROWS):
    self.backend, self.model_name, self.max_rows = backend, model_name, max_rows
    self.tokenizer = backend.tokenizer
    self.lock = threading.Lock()   # one device program at a time

  def models(self) -> dict:
    return {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                        "owned_by": "earlyrl_jax",
                                        "max_model_len": self.backend.max_len}]}

  def _prompts(self, body: dict) -> list[tuple[list[int], str, list[int]]]:
    """(ids, text, text offset per token) per prompt."""
    p = body.get("prompt")
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
      raise RequestError(400, "add_special_tokens: expected true or false")
    if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(x, str) for x in p)):
      texts = [p] if isinstance(p, str) else p
      out = []
      for t in texts:
        ids, bounds = self.tokenizer.encode_with_offsets(t)
        ids, offsets = list(ids), [int(b) for b in list(bounds)[:len(ids)]]
        full = prompt_ids(self.tokenizer, t) if add_special else ids
        if len(full) > len(ids):
          offsets = [0] + offsets
        for j in range(1, len(offsets)):   # a token starting inside a character: that character
          offsets[j] = offsets[j] if offsets[j] >= 0 else offsets[j - 1]
        out.append((full, t, offsets))
      return out
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
      p = [p]
    if (isinstance(p, list) and p and all(isinstance(r, list) and r for r in p)
        and all(isinstance(x, int) and not isinstance(x, bool) for r in p for x in r)):
      vocab = self.backend.cfg.vocab_size
      out = []
      for r in p:
        if min(r) < 0 or max(r) >= vocab:
          raise RequestError(400, f"prompt: token ids must be in [0, {vocab})")
        pieces = [self.tokenizer.decode([i]) for i in r]
        offsets, at = [], 0
        for piece in pieces:
          offsets.append(at)
          at += len(piece)
        out.append((list(r), "".join(pieces), offsets))
      return out
    raise RequestError(400, "prompt: expected a string, a list of strings, a list of token ids "
                            "or a list of token-id lists (none empty)")

  def completions(self, body: dict) -> dict:
    if not isinstance(body, dict):
      raise RequestError(400, "the body must be a JSON object")
    model = body.get("model") or self.model_name
    if model != self.model_name:
      raise RequestError(404, f"model {model!r} is not served here (serving {self.model_name!r})")
    if body.get("stream"):
      raise RequestError(400, "stream: not supported")
    rows = self._prompts(body)
    max_tokens = body.get("max_tokens", 16)
    n = body.get("n", 1)
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    seed = body.get("seed", 0)
    logprobs = body.get("logprobs")
    echo = bool(body.get("echo", False))
    stop = _as_list(body.get("stop"), "stop", str)
    for name, v, ok in (("max_tokens", max_tokens, isinstance(max_tokens, int) and max_tokens >= 0),
                        ("n", n, isinstance(n, int) and 1 <= n <= MAX_N),
                        ("temperature", temperature, isinstance(temperature, (int, float))
                         and 0 <= temperature <= 100),
                        ("top_p", top_p, isinstance(top_p, (int, float)) and 0 < top_p <= 1),
                        ("seed", seed, isinstance(seed, int) or seed is None),
                        ("logprobs", logprobs, logprobs is None or (isinstance(logprobs, int)
                                                                    and 0 <= logprobs <= 20))):
      if not ok or isinstance(v, bool):
        raise RequestError(400, f"{name}: bad value {v!r}")
    if len(rows) * n > self.max_rows:
      raise RequestError(400, f"{len(rows)} prompts x n={n} exceed {self.max_rows} rows per request")
    longest = max(len(ids) for ids, _, _ in rows)
    if longest + max_tokens > self.backend.max_len:
      raise RequestError(400, f"a prompt of {longest} tokens + max_tokens={max_tokens} exceeds the "
                              f"model's context of {self.backend.max_len} tokens")
    if max_tokens == 0 and not echo:
      raise RequestError(400, "max_tokens=0 without echo asks for nothing")
    with self.lock:
      return self._complete(rows, max_tokens=max_tokens, n=n, temperature=float(temperature),
                            top_p=float(top_p), seed=int(seed or 0), logprobs=logprobs,
                            echo=echo, stop=stop)

  def _complete(self, rows, *, max_tokens, n, temperature, top_p, seed, logprobs, echo, stop):
    tok = self.tokenizer
    ids = [r[0] for r in rows]
    prompt_lp = ends = None
    if echo and logprobs is not None:
      prompt_lp, ends = self.backend.token_logprobs(ids)
    from_scoring = (echo and logprobs is not None and max_tokens == 1 and temperature == 0
                    and n == 1 and not stop and all(e is not None for e in ends))
    if max_tokens == 0:
      gen = [[{"text": "", "tokens": [], "logprobs": [], "finish_reason": "length"}] for _ in rows]
    elif from_scoring:
      gen = []
      for t, lp in ends:
        stopped = t == tok.eos_id
        gen.append([{"text": "" if stopped else tok.decode_continuation([t]),
                     "tokens": [] if stopped else [t], "logprobs": [] if stopped else [lp],
                     "finish_reason": "stop" if stopped else "length"}])
    else:
      gen = self.backend.generate_ids(ids, max_new_tokens=max_tokens, temperature=temperature,
                                      top_p=top_p, n=n, stop=stop, seed=seed)
    choices = []
    for i, ((p_ids, text, offsets), samples) in enumerate(zip(rows, gen)):
      for k, s in enumerate(samples):
        choice: dict[str, Any] = {"index": i * n + k, "text": (text if echo else "") + s["text"],
                                  "finish_reason": s["finish_reason"], "logprobs": None}
        if logprobs is not None:
          g_pieces = [tok.decode([t]) for t in s["tokens"]]
          tokens, token_lp, text_offset = [], [], []
          if echo:
            tokens += [tok.decode([t]) for t in p_ids]
            token_lp += [None] + [float(x) for x in prompt_lp[i]]
            text_offset += list(offsets)
          at = len(text) if echo else 0
          for piece in g_pieces:
            text_offset.append(at)
            at += len(piece)
          tokens += g_pieces
          token_lp += [float(x) for x in s["logprobs"]]
          choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_lp,
                                "top_logprobs": [None if v is None else {t: v}
                                                 for t, v in zip(tokens, token_lp)],
                                "text_offset": text_offset}
        choices.append(choice)
    completion = sum(len(s["tokens"]) for samples in gen for s in samples)
    prompt = sum(len(r[0]) for r in rows)
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
            "created": int(time.time()), "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def make_handler(service: CompletionService, *, max_body_bytes: int, admission: threading.Semaphore):

  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120   # seconds a connection may stall while sending its request

    def log_message(self, fmt, *args):   # quiet: the trainer's console is not a web log
      return

    def _send(self, status: int, payload: dict, extra: dict | None = None):
      data = json.dumps(payload).encode()
      try:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
          self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
      except (BrokenPipeError, ConnectionResetError):   # the client gave up (timed out): its
        self.close_connection = True                     # retry is a new request

    def _error(self, status: int, message: str, extra: dict | None = None):
      kind = "invalid_request_error" if status < 500 else "server_error"
      self._send(status, {"error": {"message": message, "type": kind, "code": status}}, extra)

    def do_GET(self):
      path = self.path.split("?")[0].rstrip("/")
      if path == "/v1/models":
        self._send(200, service.models())
      elif path == "/health":
        self._send(200, {"status": "ok"})
      else:
        self._error(404, f"no route {self.path}")

    def do_POST(self):
      if self.path.split("?")[0].rstrip("/") != "/v1/completions":
        self._error(404, f"no route {self.path}")
        return
      try:
        length = int(self.headers.get("Content-Length", ""))
      except ValueError:
        self._error(411, "Content-Length required")
        return
      if length > max_body_bytes:
        self.close_connection = True
        self._error(413, f"request body of {length} bytes exceeds {max_body_bytes}")
        return
      raw = self.rfile.read(length)
      if not admission.acquire(blocking=False):
        self._error(503, "server busy: too many requests waiting", {"Retry-After": "1"})
        return
      try:
        body = json.loads(raw)
        self._send(200, service.completions(body))
      except json.JSONDecodeError as e:
        self._error(400, f"malformed JSON: {e}")
      except RequestError as e:
        self._error(e.status, str(e))
      except ValueError as e:   # a prompt the model cannot take (too long, ...)
        self._error(400, str(e))
      except Exception as e:  # the model failed: the client retries or counts it
        self._error(500, f"{type(e).__name__}: {e}")
      finally:
        admission.release()

  return Handler


class CompletionServer:
  """`CompletionService` over HTTP on a background thread: start(), url, stop()."""

  def __init__(self, backend, model_name: str, *, host: str = "127.0.0.1", port: int = 0,
               max_body_bytes: int = MAX_BODY_BYTES, max_pending: int = MAX_PENDING,
               max_rows: int = MAX_ROWS):
    self.service = CompletionService(backend, model_name, max_rows=max_rows)
    handler = make_handler(self.service, max_body_bytes=max_body_bytes,
                           admission=threading.BoundedSemaphore(max_pending))
    self.httpd = ThreadingHTTPServer((host, port), handler)
    self.httpd.daemon_threads = True
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def start(self) -> "CompletionServer":
    self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                    name="earlyrl-serve", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    if self._thread is not None:
      self._thread.join(timeout=10)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="an HF directory or an embedded-teacher directory")
  p.add_argument("--name", default="", help="the model name clients ask for (default: the "
                 "directory's name)")
  p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--dtype", default=None, choices=(None, "float32", "bfloat16"),
                 help="HF models: weights and compute (default float32)")
  p.add_argument("--max_len", type=int, default=0, help="context cap in tokens (0 = the model's)")
  p.add_argument("--max_pending", type=int, default=MAX_PENDING)
  args = p.parse_args(argv)
  import os
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.teacher.teacher import load_teacher
  t0 = time.time()
  try:
    teacher = load_teacher(args.model, dtype=args.dtype)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: --model: {e}") from None
  backend = InProcessBackend.from_teacher(teacher, max_len=args.max_len or None)
  name = args.name or os.path.basename(os.path.normpath(args.model))
  server = CompletionServer(backend, name, host=args.host, port=args.port,
                            max_pending=args.max_pending)
  print(f"earlyrl-serve: {name} ({teacher.model_cfg.num_params() / 1e6:.0f}M params, context "
        f"{backend.max_len}) loaded in {time.time() - t0:.1f}s; serving {server.url}", flush=True)
  try:
    server.httpd.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.httpd.server_close()


if __name__ == "__main__":
  main()
