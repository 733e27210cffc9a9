"""Cost of judging: LM-judge throughput (shared-prefix reuse vs whole prompts) and the
all_pairs / pivot / adaptive tournaments side by side at K = 4, 8, 16, in one run.

  python benchmarks/judge.py [--teacher=DIR] [--groups 300] [--lm_groups 8]

(a) Judged pairs/s of the LM judge (`teacher/judges/lm.py: LMJudge`) at the SIP shape: `lm_groups`
    prefixes of ~64 tokens, K+2 candidates of ~32 tokens, all pairs in both orders. The teacher
    is --teacher (an embedded-teacher or HF directory) or, by default, a randomly initialised
    model of the embedded teacher's shape (configs/teacher_tiny.py) with a SentencePiece
    tokenizer trained here on world documents: timing does not depend on the weights.
    "shared" prefills each prefix's judge prompt head once (models/shared_prefix.py).
(b) Per K and scheme: comparisons per prefix, agreement with all pairs on the chosen and on the
    rejected candidate, rank correlation of the rewards (Kendall tau-b, Spearman), measured with a
    judge whose preferences are the world oracles' scores plus calibrated noise (the judge's
    accuracy vs the oracles and its position consistency are printed); with --teacher the same
    figures for the LM judge. Judge wall time per prefix with the LM judge, all pairs on whole
    prompts as the baseline (time_frac includes shared-prefix reuse).

Agreement on the chosen candidate means the scheme's pick has the all-pairs maximum reward
(identical candidates tie, and either counts); likewise for rejected.
A scored judge (`judge_format='scored'`, the embedded teacher's) decides the same pairs from one
row per candidate: its pairs/s is printed beside the pairwise ones.
Last lines:
  judge: pairs_per_s=<n> pivot_calls=<f> pivot_agreement=<f> scored_pairs_per_s=<n>
  judge_cost: scheme=adaptive k=16 calls_frac=<f> chosen_agreement=<f> rejected_agreement=<f> time_frac=<f>
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import device_name  # noqa: E402
from earlyrl_jax import world as W  # noqa: E402
from earlyrl_jax.teacher.prompts import markup as P  # noqa: E402
from earlyrl_jax.teacher import tournament as TT  # noqa: E402
from earlyrl_jax.teacher.judges.lm import LMJudge  # noqa: E402
from earlyrl_jax.teacher.judges.oracle import OracleJudge  # noqa: E402

AXES = {"quality": 1.0, "safety": 1.0, "factuality": 1.0}
SCHEMES = ("all_pairs", "pivot", "adaptive")


# --------------------------------------------------------------------------- judges


def _normal(*key) -> float:
  """A deterministic N(0, 1) draw per key: the same question always gets the same answer."""
  return float(np.random.default_rng(zlib.crc32(repr(key).encode())).normal())


class NoisyOracleJudge:
  """World-oracle preferences seen through a judge's errors, calibrated to a trained teacher.

  utility = oracle score + nuance * N(0,1) per text (what an LM also sees: wording, length);
  P(a > b) = sigmoid((u_a - u_b) / tau + noise * N(0,1) per (prefix, a, b, axis) + bias),
  the bias favouring the first position; P(unsafe) = sigmoid(+-kappa + noise * N(0,1)).
  Deterministic, like an LM judge's verdict log-probs.
  """

  def __init__(self, oracles, *, tau=0.1, noise=1.0, bias=0.2, nuance=0.05, kappa=3.0, seed=0,
               noise_seed=None):
    self.oj = OracleJudge(oracles)
    self.tau, self.noise, self.bias, self.nuance, self.kappa, self.seed = tau, noise, bias, nuance, kappa, seed
    self.noise_seed = seed if noise_seed is None else noise_seed   # another draw of the judge's errors
    self.calls = 0
    self._u: dict = {}

  def utility(self, prefix, text, axis) -> float:
    key = (prefix, text, axis)
    if key not in self._u:
      self._u[key] = self.oj.axis_score(prefix, text, axis) + self.nuance * _normal(self.seed, text, axis)
    return self._u[key]

  def compare(self, prefixes, a, b, *, axis, references=None):
    self.calls += len(a)
    d = np.array([(self.utility(p, x, axis) - self.utility(p, y, axis)) / self.tau
                  + self.noise * _normal(self.noise_seed, p, x, y, axis) + self.bias
                  for p, x, y in zip(prefixes, a, b)])
    return 1.0 / (1.0 + np.exp(-d))

  def pointwise(self, prefixes, candidates, *, axis="safety"):
    self.calls += len(candidates)
    unsafe = np.array([self.oj.oracles.safety(c)["unsafe"] for c in candidates], float)
    d = self.kappa * (2 * unsafe - 1) + self.noise * np.array([_normal(self.noise_seed, c, "pw")
                                                               for c in candidates])
    return 1.0 / (1.0 + np.exp(-d))


class CountingLMJudge(LMJudge):
  """LMJudge on whole prompts (no model config: no shared-prefix reuse), 64-row batches, counting
  the tokens of the rows it forwards: how the paper's judge is run."""
  tokens_real = 0

  def _score(self, rows, ids):
    self.tokens_real += sum(len(head) + len(tail) for head, tail in rows)
    return super()._score(rows, ids)


class WholePromptJudge(LMJudge):
  """LMJudge on the shared-prefix scorer with every prompt whole (no reuse): the same compiled
  program and batch size as the shipped shared-prefix path, so their ratio is the reuse alone."""

  def _score(self, parts, ids):
    return super()._score([([], list(h) + list(t)) for h, t in parts], ids)


# --------------------------------------------------------------------------- data


def world_groups(kb, docs, k, n, seed):
  """n prefixes with K+2 candidates: the original suffix, a rewrite (the original, or a fix of a
  defect: clean), and K rollouts (the clean suffix or corruptions of it, as a weak policy's)."""
  rng = random.Random(seed)
  prefixes, cands, refs = [], [], []
  for doc in docs:
    if len(prefixes) == n:
      break
    if len(doc.sentences) < 4:
      continue
    cut = rng.randint(1, len(doc.sentences) - 3)
    prefix, clean = W.join(doc.sentences[:cut]), doc.sentences[cut:cut + 2]
    group = [W.join(clean), W.join(clean)]
    for _ in range(k):
      if rng.random() < 0.25:
        group.append(W.join(clean))
      else:
        bad, _ = W.corrupt_suffix(kb, clean, rng, doc.topic)
        if rng.random() < 0.3:
          bad, _ = W.corrupt_suffix(kb, bad, rng, doc.topic)
        group.append(W.join(bad))
    if rng.random() < 0.4:             # the original was defective and the rewrite fixed it
      group[0] = W.join(W.corrupt_suffix(kb, clean, rng, doc.topic)[0])
    prefixes.append(prefix)
    cands.append(group)
    refs.append(W.join(doc.sentences[cut:]))
  return prefixes, cands, refs


def token_windows(tok, docs, k, n, prefix_tokens=64, suffix_tokens=32):
  """SIP-shape texts for timing: prefixes of ~64 tokens, candidates of ~32 tokens."""
  ids = [t for d in docs for t in tok.encode(d.text + "\n")]
  step = prefix_tokens + (k + 2) * suffix_tokens
  prefixes, cands = [], []
  for g in range(n):
    base = g * step
    prefixes.append(tok.decode(ids[base:base + prefix_tokens]))
    cands.append([tok.decode(ids[base + prefix_tokens + c * suffix_tokens:
                                 base + prefix_tokens + (c + 1) * suffix_tokens]) for c in range(k + 2)])
  return prefixes, cands


# --------------------------------------------------------------------------- metrics


def kendall_tau_b(x, y) -> float:
  x, y = np.asarray(x), np.asarray(y)
  i, j = np.triu_indices(len(x), 1)
  dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
  den = np.sqrt(np.sum(dx != 0) * np.sum(dy != 0))
  return float(np.sum(dx * dy) / den) if den > 0 else 1.0


def _ranks(x):
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x))
  r[order] = np.arange(len(x))
  for v in np.unique(x):                      # average ranks on ties
    m = x == v
    r[m] = r[m].mean()
  return r


def spearman(x, y) -> float:
  rx, ry = _ranks(np.asarray(x)), _ranks(np.asarray(y))
  if rx.std() == 0 or ry.std() == 0:
    return 1.0 if rx.std() == ry.std() else 0.0
  return float(np.corrcoef(rx, ry)[0, 1])


def agreement(ref: TT.Judgement, j: TT.Judgement) -> dict:
  g = np.arange(len(ref.chosen))
  r = ref.rewards
  return {"chosen": float(np.mean(r[g, j.chosen] >= np.nanmax(r, 1) - 1e-9)),
          "rejected": float(np.mean(r[g, j.rejected] <= np.nanmin(r, 1) + 1e-9)),
          "kendall": float(np.mean([kendall_tau_b(a, b) for a, b in zip(r, j.rewards)])),
          "spearman": float(np.mean([spearman(a, b) for a, b in zip(r, j.rewards)]))}


def oracle_scores(judge, prefixes, cands) -> np.ndarray:
  """[G, C] mean of the three oracle axis scores (the ground truth behind the noisy judge)."""
  C = max(len(c) for c in cands)
  out = np.full((len(prefixes), C), np.nan)
  for g, (p, cs) in enumerate(zip(prefixes, cands)):
    for i, c in enumerate(cs):
      out[g, i] = np.mean([judge.oj.axis_score(p, c, a) for a in AXES])
  return out


def judge_quality(judge, prefixes, cands) -> tuple[float, float]:
  """(agreement with the oracles on non-tied pairs, one order; position consistency)."""
  oj = judge.oj
  agree, n = 0, 0
  for p, cs in zip(prefixes[:60], cands[:60]):
    for axis in ("quality", "factuality"):
      pairs = [(a, b) for i, a in enumerate(cs) for b in cs[i + 1:]
               if abs(oj.axis_score(p, a, axis) - oj.axis_score(p, b, axis)) > 1e-6]
      if not pairs:
        continue
      pj = judge.compare([p] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs], axis=axis)
      po = oj.compare([p] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs], axis=axis)
      agree += int(np.sum((pj > 0.5) == (po > 0.5)))
      n += len(pairs)
  j = TT.judge_groups(judge, prefixes[:60], cands[:60], axes={"quality": 1, "factuality": 1})
  return agree / max(n, 1), j.position_consistency


# --------------------------------------------------------------------------- LM teacher


def make_teacher(teacher_dir, docs):
  from earlyrl_jax.teacher.teacher import load_teacher
  if teacher_dir:
    t = load_teacher(teacher_dir)
    return t.graphdef, t.params, t.tokenizer, t.model_cfg, f"trained teacher {teacher_dir}"
  from flax import nnx
  from configs import teacher_tiny
  from earlyrl_jax import configs
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.embedded.data import train_tokenizer
  c = teacher_tiny.get_config()
  cfg = configs.model_config(c)
  d = tempfile.mkdtemp(prefix="judge_bench_")
  path = train_tokenizer([doc.text for doc in docs[:1500]], os.path.join(d, "tokenizer.model"),
                         c.teacher.tokenizer_vocab_size)
  tok = SentencePieceTokenizer(path)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  return graphdef, params, tok, cfg, "random init, teacher_tiny shape"


def lm_judges(graphdef, params, tok, cfg):
  """(whole prompts as the paper judges: 64-row batches; the shipped LMJudge with shared-prefix
  reuse; the same scorer and batch with whole prompts)."""
  limits = P.PromptLimits(prefix_chars=100_000, candidate_chars=100_000, reference_chars=400)
  common = dict(max_len=cfg.max_seq_len, limits=limits)
  plain = CountingLMJudge(graphdef, params, tok, **common)
  shared = LMJudge(graphdef, params, tok, model_cfg=cfg, batch_size=512, **common)
  same = WholePromptJudge(graphdef, params, tok, model_cfg=cfg, batch_size=512, **common)
  return plain, shared, same


def timed(fn, repeats=1, warmup=None):
  (warmup or fn)()                            # warm-up: compiles the buckets this call uses
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


# --------------------------------------------------------------------------- main


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--teacher", default="", help="trained teacher dir (default: random init)")
  ap.add_argument("--groups", type=int, default=300, help="prefixes per K for the oracle-noise judge")
  ap.add_argument("--lm_groups", type=int, default=8, help="prefixes for LM-judge timing")
  ap.add_argument("--lm_time_groups", type=int, default=4, help="prefixes per LM scheme timing")
  ap.add_argument("--repeats", type=int, default=2, help="timed runs per LM scheme (best kept)")
  ap.add_argument("--ks", default="4,8,16")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  ks = [int(k) for k in args.ks.split(",")]

  wcfg = W.default_world_config()
  kb = W.build_kb(wcfg)
  oracles = W.Oracles(kb)
  docs = list(W.generate_documents(kb, wcfg, "bench-judge", 3 * args.groups + 400, clean=True))
  print(f"device: {device_name()}; judging at K={ks}")

  # ---- (b) schemes with the oracle-noise judge
  table = {}
  noisy = NoisyOracleJudge(oracles, seed=args.seed)
  q_pre, q_cands, _ = world_groups(kb, docs, 16, 80, args.seed + 99)
  acc, cons = judge_quality(noisy, q_pre, q_cands)
  print(f"oracle-noise judge: agreement with the oracles {acc:.3f} (non-tied pairs, one order), "
        f"position consistency {cons:.3f}")
  for k in ks:
    pre, cands, refs = world_groups(kb, docs, k, args.groups, args.seed + k)
    ref = TT.judge_groups(noisy, pre, cands, scheme="all_pairs", axes=AXES, references=refs)
    truth = oracle_scores(noisy, pre, cands)
    for scheme in SCHEMES:
      j = ref if scheme == "all_pairs" else TT.judge_groups(noisy, pre, cands, scheme=scheme,
                                                             axes=AXES, references=refs)
      g = np.arange(len(pre))
      table[(k, scheme)] = {"cmp": float(np.mean(j.comparisons)),
                            "cmp_frac": float(np.sum(j.comparisons) / np.sum(ref.comparisons)),
                            "calls_frac": j.calls / ref.calls, "rounds": j.rounds,
                            "oracle_chosen": float(np.mean(truth[g, j.chosen])),
                            "oracle_rejected": float(np.mean(truth[g, j.rejected])),
                            **agreement(ref, j)}
    table[(k, "oracle")] = {"best": float(np.mean(np.nanmax(truth, 1))),
                            "worst": float(np.mean(np.nanmin(truth, 1)))}
    # Noise ceiling: all pairs again with an equally good judge whose errors are drawn afresh.
    redraw = NoisyOracleJudge(oracles, seed=args.seed, noise_seed=args.seed + 1000)
    table[(k, "redraw")] = agreement(ref, TT.judge_groups(redraw, pre, cands, axes=AXES, references=refs))

  # ---- (a) + timing with the LM judge
  graphdef, params, tok, cfg, what = make_teacher(args.teacher, docs)
  plain, shared, same = lm_judges(graphdef, params, tok, cfg)
  print(f"LM judge: {what}; {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M params, "
        f"max_len {cfg.max_seq_len}")
  kmax = max(ks)
  pre, cands = token_windows(tok, docs[-400:], kmax, args.lm_groups)
  pairs = [(g, i, j) for g in range(len(pre)) for i in range(kmax + 2) for j in range(kmax + 2) if i != j]
  cols = ([pre[g] for g, _, _ in pairs], [cands[g][i] for g, i, _ in pairs],
          [cands[g][j] for g, _, j in pairs])
  lens = [len(plain.encoder.pair(p, a, b, "quality")) for p, a, b in zip(*cols)]
  head = len(plain.encoder._head("pair", pre[0]))
  rate = {}
  for name, judge in (("plain", plain), ("same", same), ("shared", shared)):
    sub = [c[:len(pairs) // len(pre)] for c in cols]          # one prefix: compiles the buckets
    t, p = timed(lambda: judge.compare(*cols, axis="quality"),
                 warmup=lambda: judge.compare(*sub, axis="quality"))
    rate[name] = (len(pairs) / t, p)
  scored = LMJudge(graphdef, params, tok, model_cfg=cfg, batch_size=512, judge_format="scored",
                   max_len=cfg.max_seq_len, limits=plain.encoder.limits)
  t, _ = timed(lambda: TT.judge_groups(scored, pre, cands, axes={"quality": 1.0}))  # warm-up: the same call
  scored_pps = len(pairs) / t      # ordered pairs decided per second (each candidate scored once)
  diff = max(float(np.max(np.abs(rate["plain"][1] - rate[n][1]))) for n in ("same", "shared"))
  pps, pps_same, pps_shared = rate["plain"][0], rate["same"][0], rate["shared"][0]
  print(f"(a) {len(pre)} prefixes x {kmax + 2} candidates, all ordered pairs = {len(pairs)} rows, "
        f"prompt {np.mean(lens):.0f} tokens (head {head} shared); judged pairs/s:")
  print(f"    LMJudge, whole prompts (64-row batches)            {pps:8.1f}")
  print(f"    whole prompts, this scorer (512-row batches)       {pps_same:8.1f}")
  print(f"    shared prefix (one prefill per prefix)             {pps_shared:8.1f}   "
        f"x{pps_shared / pps_same:.2f} vs whole prompts, same scorer; max |dP| {diff:.1e}")
  print(f"    scored (one row per candidate, shared prefix)      {scored_pps:8.1f}   "
        f"x{scored_pps / pps:.1f} vs whole prompts (pairs decided as sigmoid(l_a - l_b))")

  lm_time, lm_tokens = {}, {}
  for k in ks:
    pre, cands = token_windows(tok, docs[-400:], k, args.lm_time_groups)
    for scheme in SCHEMES:
      for name, judge in (("whole", plain), ("shared", shared)):
        counter = judge if name == "whole" else judge.shared
        t0 = counter.tokens_real
        t, j = timed(lambda: TT.judge_groups(judge, pre, cands, scheme=scheme, axes=AXES),
                     repeats=args.repeats)
        lm_time[(k, scheme, name)] = t / len(pre)
        lm_tokens[(k, scheme, name)] = (counter.tokens_real - t0) / (1 + args.repeats) / len(pre)
  if args.teacher:
    for k in ks:
      pre, cands, refs = world_groups(kb, docs, k, min(args.groups, 48), args.seed + k)
      ref = TT.judge_groups(shared, pre, cands, axes=AXES, references=refs)
      for scheme in ("pivot", "adaptive"):
        j = TT.judge_groups(shared, pre, cands, scheme=scheme, axes=AXES, references=refs)
        table[(k, scheme)]["lm"] = agreement(ref, j)

  # ---- report
  print("\n(b) per prefix; agreement = with all pairs of the same judge (oracle-noise judge, "
        f"{args.groups} prefixes per K); LM time = judge_groups wall time / prefix")
  print(f"{'K':>3} {'scheme':>9} {'cmp':>6} {'cmp/all':>7} {'rows/all':>8} {'rounds':>6} {'chosen':>6} "
        f"{'reject':>6} {'kendall':>7} {'spearm':>6} {'ms whole':>8} {'ms shared':>9} {'time/all':>8} "
        f"{'tok/all':>7}"
        + ("  LM chosen/reject/kendall" if args.teacher else ""))
  for k in ks:
    base = lm_time[(k, "all_pairs", "whole")]
    for scheme in SCHEMES:
      r = table[(k, scheme)]
      tw, ts = lm_time[(k, scheme, "whole")], lm_time[(k, scheme, "shared")]
      extra = ""
      if "lm" in r:
        extra = f"  {r['lm']['chosen']:.3f}/{r['lm']['rejected']:.3f}/{r['lm']['kendall']:.3f}"
      print(f"{k:>3} {scheme:>9} {r['cmp']:6.1f} {r['cmp_frac']:7.3f} {r['calls_frac']:8.3f} "
            f"{r['rounds']:6d} {r['chosen']:6.3f} {r['rejected']:6.3f} {r['kendall']:7.3f} "
            f"{r['spearman']:6.3f} {1e3 * tw:8.1f} {1e3 * ts:9.1f} {ts / base:8.3f} "
            f"{lm_tokens[(k, scheme, 'shared')] / lm_tokens[(k, 'all_pairs', 'whole')]:7.3f}{extra}")
  for k in ks:
    r = table[(k, "redraw")]
    print(f"K={k:>2} noise ceiling: all pairs vs all pairs with the judge's errors re-drawn agree on "
          f"chosen {r['chosen']:.3f}, rejected {r['rejected']:.3f}, kendall {r['kendall']:.3f}")
  print("\nOracle truth of the picks (mean oracle score over the three axes; higher is better):")
  for k in ks:
    o = table[(k, "oracle")]
    row = "  ".join(f"{s}: chosen {table[(k, s)]['oracle_chosen']:.3f} rejected "
                    f"{table[(k, s)]['oracle_rejected']:.3f}" for s in SCHEMES)
    print(f"K={k:>2} best possible {o['best']:.3f} worst {o['worst']:.3f} | {row}")
  k = kmax
  piv, ad = table[(k, "pivot")], table[(k, "adaptive")]
  time_frac = lm_time[(k, "adaptive", "shared")] / lm_time[(k, "all_pairs", "whole")]
  print(f"time_frac = adaptive with shared prefix / all pairs on whole prompts (LM time, best of "
        f"{args.repeats}); vs all pairs with shared prefix: "
        f"{lm_time[(k, 'adaptive', 'shared')] / lm_time[(k, 'all_pairs', 'shared')]:.3f}; "
        f"tok/all = tokens forwarded per prefix (shared parts once) / all pairs on whole prompts")
  print(f"judge: pairs_per_s={pps:.1f} pivot_calls={piv['cmp_frac']:.3f} "
        f"pivot_agreement={piv['chosen']:.3f} scored_pairs_per_s={scored_pps:.1f}")
  print(f"judge_cost: scheme=adaptive k={k} calls_frac={ad['cmp_frac']:.3f} "
        f"chosen_agreement={ad['chosen']:.3f} rejected_agreement={ad['rejected']:.3f} "
        f"time_frac={time_frac:.3f}")


if __name__ == "__main__":
  main()
