"""The paper's rewriter (teacher/rewriter.PaperRewriter) on a real instruct model and clean text:
copy rate, failures, token overlap with the original, and time per window.

    python -m benchmarks.rewriter --model=/path/to/smollm2-135m-instruct \
        --text=/usr/share/common-licenses/GPL-3 --windows=16 --batch=8

Windows are cut from the text's paragraphs at the teacher's token boundaries (prefix_tokens, then
suffix_tokens), greedy rewriting, in-process. Clean text should come back copied (the paper's
rewriter copies ~98% of the tokens of safe originals); what a model does instead is the figure.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import time


def windows_from_text(tokenizer, text: str, prefix_tokens: int, suffix_tokens: int, limit: int):
  """(prefix, suffix) texts cut at token boundaries, one per paragraph long enough."""
  out = []
  for para in re.split(r"\n\s*\n", text):
    para = " ".join(para.split())
    ids, bounds = tokenizer.encode_with_offsets(para)
    n = prefix_tokens + suffix_tokens
    if len(ids) < n or bounds[prefix_tokens] < 0 or bounds[n] < 0:
      continue
    out.append((para[:int(bounds[prefix_tokens])], para[int(bounds[prefix_tokens]):int(bounds[n])]))
    if len(out) == limit:
      break
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="an HF instruct model directory")
  p.add_argument("--text", default="/usr/share/common-licenses/GPL-3", help="clean English text")
  p.add_argument("--windows", type=int, default=16)
  p.add_argument("--batch", type=int, default=8, help="windows per rewrite call")
  p.add_argument("--prefix_tokens", type=int, default=64)
  p.add_argument("--suffix_tokens", type=int, default=32)
  p.add_argument("--max_len", type=int, default=1024, help="the teacher's context cap")
  p.add_argument("--out", default="", help="write the rewrites and figures as JSON here")
  args = p.parse_args(argv)
  from earlyrl_jax.teacher.teacher import load_teacher
  teacher = load_teacher(args.model, max_len=args.max_len)
  tok = teacher.tokenizer
  template = os.path.join(args.model, "chat_template.jinja")
  if not getattr(tok, "chat_template", None) and os.path.isfile(template):
    tok.chat_template = open(template, encoding="utf-8").read()   # older tokenizer loaders
  with open(args.text, encoding="utf-8") as f:
    wins = windows_from_text(tok, f.read(), args.prefix_tokens, args.suffix_tokens, args.windows)
  rw = teacher.rewriter(kind="generative", batch_size=args.batch, window_cut=True,
                        max_failure_share=1.0)   # measured here, not a reason to stop
  rw.rewrite([wins[0][0]], [wins[0][1]])   # compiles (not timed)
  rw.calls = rw.failed = rw.copies = 0
  rw.failures.clear()
  times, outs = [], []
  for s in range(0, len(wins), args.batch):
    part = wins[s:s + args.batch]
    t0 = time.perf_counter()
    outs += rw.rewrite([w[0] for w in part], [w[1] for w in part])
    times.append(time.perf_counter() - t0)
  overlap = [difflib.SequenceMatcher(None, tok.encode(o), tok.encode(w[1])).ratio()
             for o, w in zip(outs, wins)]
  res = {"model": args.model, "text": args.text, "windows": len(wins), "batch": args.batch,
         "prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens,
         "copy_rate": rw.copies / max(rw.calls, 1), "failed_rate": rw.failed / max(rw.calls, 1),
         "failures": dict(rw.failures), "token_overlap_mean": sum(overlap) / max(len(overlap), 1),
         "seconds_per_window": sum(times) / max(len(wins), 1), "seconds_per_call": times,
         "prompt_version": rw.prompts.version}
  print(json.dumps(res, indent=1))
  for o, w in list(zip(outs, wins))[:4]:
    print(f"--- original: {w[1]!r}\n    rewrite:  {o!r}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({**res, "rewrites": [{"prefix": w[0], "suffix": w[1], "rewrite": o}
                                     for o, w in zip(outs, wins)]}, f, indent=1)


if __name__ == "__main__":
  main()
