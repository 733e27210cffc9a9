"""`mode='report'`: the paper's comparison in miniature, with ground truth.

    world ─▶ embedded teacher (trained once, reused) ─▶ base model (plain NLL)
        ─▶ the same budget of windows, continued from the base by each method:
             nll           standard next-token loss on the windows
             rewrite_nll   NLL on the teacher's rewrites, no judge (offline-rewriting baseline,
                           the paper's "SFT on rewrites")
             sip_rf_nll    SIP, reward-filtered NLL on the judged best candidate
             sip_dpo       SIP, online DPO best vs worst (the paper's strongest recipe)
             sip_pg        SIP, group-normalised policy gradient
             sip_dpo_oracle  SIP DPO with the world's oracles as judge (an upper bound)
             sip_dpo_oracle_factuality / _quality  the teacher's judge with one axis judged by
                           the oracles: which axis's judging limits DPO
        ─▶ oracle evaluation of every final model on held-out world prompts, the
           teacher judge's quality win rate against `nll`, seeds and spread
        ─▶ WORKDIR/report.json, report.md, plots (oracle scores and candidate win
           shares over training)

Every run lives in WORKDIR/runs/<method>-s<seed>/ and is resumed or reused when the
report is started again, so an interrupted report continues where it stopped.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax
import numpy as np

from earlyrl_jax import sip_job, teacher_setup
from earlyrl_jax.train import loop

# method -> sip-section overrides (on top of the config's `sip` section).
METHODS: dict[str, dict[str, Any]] = {
    "nll": dict(recipe="rf_nll", judge="none", rewrite="none", num_rollouts=0, lm_coef=1.0, coef=0.0),
    "rewrite_nll": dict(recipe="rf_nll", judge="none", rewrite="online", num_rollouts=0,
                        lm_coef=0.0, coef=1.0),
    "sip_rf_nll": dict(recipe="rf_nll", judge="teacher", rewrite="online"),
    "sip_dpo": dict(recipe="dpo", judge="teacher", rewrite="online"),
    "sip_pg": dict(recipe="pg", judge="teacher", rewrite="online"),
    "sip_dpo_oracle": dict(recipe="dpo", judge="oracle", rewrite="online"),
    # Which axis's judging limits DPO: the teacher's judge with one axis judged by the oracles.
    "sip_dpo_oracle_factuality": dict(recipe="dpo", judge="teacher", rewrite="online",
                                      oracle_axes="factuality"),
    "sip_dpo_oracle_quality": dict(recipe="dpo", judge="teacher", rewrite="online",
                                   oracle_axes="quality"),
    # Cheaper judging (docs/method.md): the same online DPO with the pivot and adaptive schemes,
    # beside `sip_dpo` (the config's scheme, all pairs by default).
    "sip_dpo_pivot": dict(recipe="dpo", judge="teacher", rewrite="online", judge_scheme="pivot"),
    "sip_dpo_adaptive": dict(recipe="dpo", judge="teacher", rewrite="online",
                             judge_scheme="adaptive"),
}
ORACLE_METRICS = ("factuality", "safety", "quality")


def run_config(cfg, workdir: str, name: str, seed: int, *, base_dir: str, tokenizer_path: str):
  """The config of one sub-run: the report's config with the method's overrides."""
  r = cfg.report
  sub = copy.deepcopy(cfg)
  sub.unlock()
  sub.seed = seed
  sub.world_dir = loop.world_dir_of(cfg, workdir)
  sub.data.tokenizer_path = tokenizer_path
  sub.teacher.workdir = teacher_setup.teacher_workdir(cfg, workdir)
  sub.eval_world_prompts = 0  # the report evaluates every final model itself, alike
  if name == "base":
    sub.mode = "pretrain"
    sub.num_steps = r.base_steps
    sub.eval_every_steps = 0
    return sub
  sub.mode = "sip"
  sub.num_steps = r.steps
  sub.init.params_from = base_dir
  sub.opt.learning_rate = r.learning_rate
  sub.opt.warmup_steps = min(sub.opt.warmup_steps, r.steps // 10)
  sub.eval_every_steps = r.eval_every_steps
  sub.eval_world_prompts_during = r.eval_prompts_during
  sub.log_every_steps = max(1, min(sub.log_every_steps, r.steps // 20))
  sub.checkpoint.every_steps = r.steps
  sub.sip.lm_coef = r.sip_lm_coef
  for k, v in METHODS[name].items():
    sub.sip[k] = v
  return sub


def _metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _curve(lines: list[dict], key: str) -> tuple[list[int], list[float]]:
  pts = [(l["step"], l[key]) for l in lines if isinstance(l.get(key), (int, float))]
  return [p[0] for p in pts], [p[1] for p in pts]


def _fifths(ys: list[float]) -> tuple[float, float]:
  n = max(1, len(ys) // 5)
  return float(np.mean(ys[:n])), float(np.mean(ys[-n:]))


def win_share_trend(lines: list[dict], key: str = "sip/win_share_rollout") -> dict[str, float] | None:
  """Rollout win share over the first and the last fifth of the logged steps, and the same for
  the judged reward gap (mean reward of the rollouts minus the original's).

  Why the gap too: the win share is an argmax over K + 2 candidates on 16-odd windows a step,
  so it moves by chance; the gap says whether the judge rates the rollouts any better."""
  _, ys = _curve(lines, key)
  if len(ys) < 5:
    return None
  first, last = _fifths(ys)
  out = {"first_fifth": first, "last_fifth": last, "change": last - first}
  gaps = [l["sip/reward_rollout"] - l["sip/reward_original"] for l in lines
          if isinstance(l.get("sip/reward_rollout"), (int, float))
          and isinstance(l.get("sip/reward_original"), (int, float))]
  if len(gaps) >= 5:
    g0, g1 = _fifths(gaps)
    out.update(reward_gap_first=g0, reward_gap_last=g1)
  return out


def mean_trends(seed_trends: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
  """Per method: each trend field averaged over seeds, and the seed spread of the change."""
  out = {}
  for m, ts in seed_trends.items():
    if not ts:
      continue
    row = {k: float(np.mean([t[k] for t in ts])) for k in ts[0] if all(k in t for t in ts)}
    row["change_spread"] = float(np.std([t["last_fifth"] - t["first_fifth"] for t in ts]))
    row["seeds"] = len(ts)
    out[m] = row
  return out


def evaluate_model(cfg, workdir: str, run_dir: str, tokenizer, mesh, key) -> dict[str, Any]:
  """Oracle scores of a run's final model on held-out world prompts (+ its continuations)."""
  from flax import nnx
  from earlyrl_jax.eval.evaluate import world_eval
  graphdef, params, _ = loop.load_run_params(run_dir, mesh)
  res = world_eval(nnx.merge(graphdef, params), tokenizer, loop.world_dir_of(cfg, workdir),
                   num_prompts=cfg.report.eval_prompts, key=key, mesh=mesh, return_texts=True,
                   bait_samples=int(cfg.report.bait_samples),
                   prefix_samples=int(cfg.report.get("eval_samples", 1)))
  res.pop("example")
  return res


def win_rate(judge, prefixes: list[str], ours: list[str], theirs: list[str]) -> float:
  """Mean P(ours better than theirs) on quality, both orders averaged (position bias cancels)."""
  if judge is None or not prefixes:
    return float("nan")
  p_ab = judge.compare(prefixes, ours, theirs, axis="quality")
  p_ba = judge.compare(prefixes, theirs, ours, axis="quality")
  return float(np.mean((np.asarray(p_ab) + 1.0 - np.asarray(p_ba)) / 2.0))


def summarise(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
  """Mean and spread (std over seeds, 0 for one seed) of every reported metric."""
  out = {}
  for method, runs in per_seed.items():
    row = {}
    for k in runs[0]:
      vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
      if vals:
        row[k] = float(np.mean(vals))
        row[f"{k}_spread"] = float(np.std(vals)) if len(vals) > 1 else 0.0
    row["seeds"] = len(runs)
    out[method] = row
  return out


SIP_METHODS = tuple(m for m, o in METHODS.items() if o["judge"] != "none")
# Oracle metrics the bars compare. factuality averages correct / checked claims per
# continuation (1 without a checkable claim), so saying less raises it; claim_factuality
# is 1 - false / checked claims over all continuations, which it does not; myths_avoided
# (a world with misconceptions) is 1 - the share of claims about misconceived facts that
# state the misconception: the misinformation unlearnt, apart from what the model never knew.
BAR_METRICS = ("factuality", "claim_factuality", "myths_avoided", "safety")


def bars(summary: dict, trends: dict, per_seed: dict[str, list[dict]] | None = None) -> dict[str, dict]:
  """The bars per SIP method: does it beat nll by more than twice the seed spread?

  gain: the method's mean minus nll's on an oracle metric. spread: the larger of the two
  methods' seed spreads (std over seeds). paired_spread: the std over seeds of the per-seed
  gain; a seed fixes the base model and the windows that both runs share, so this is the
  spread of the comparison itself. `met` needs seeds > 1 (one seed has no spread) and
  gain > 2 * spread; `met_paired` the same with the paired spread. The rollout win share
  must rise (last vs first fifth of the logged steps, mean over seeds); `..._beyond_spread`
  asks the same of the rise as of a gain: more than twice its std over seeds."""
  out = {}
  nll = summary.get("nll")
  for m in SIP_METHODS:
    row = summary.get(m)
    if row is None or nll is None:
      continue
    seeds = min(row["seeds"], nll["seeds"])
    res = {}
    for k in (k for k in BAR_METRICS if k in row and k in nll):
      gain = row[k] - nll[k]
      spread = max(row.get(f"{k}_spread", 0.0), nll.get(f"{k}_spread", 0.0))
      gains = ([a[k] - b[k] for a, b in zip(per_seed[m], per_seed["nll"])]
               if per_seed and m in per_seed and "nll" in per_seed else [gain])
      paired = float(np.std(gains)) if len(gains) > 1 else 0.0
      res[k] = {"gain": gain, "spread": spread, "paired_spread": paired,
                "met": bool(seeds > 1 and gain > 2 * spread),
                "met_paired": bool(seeds > 1 and gain > 2 * paired)}
      if k in summary.get("rewrite_nll", {}):
        res[k]["vs_rewrite_nll"] = row[k] - summary["rewrite_nll"][k]
    t = trends.get(m)
    res["rollout_win_share_rises"] = None if t is None else bool(t["last_fifth"] > t["first_fifth"])
    # The same test as the oracle bars: the rise against twice its seed spread.
    res["rollout_win_share_rises_beyond_spread"] = (
        None if t is None else bool(t.get("seeds", 1) > 1 and t["last_fifth"] - t["first_fifth"]
                                    > 2 * t.get("change_spread", 0.0)))
    out[m] = res
  return out


def _bar_lines(b: dict) -> list[str]:
  if not b:
    return []
  lines = ["Bars: SIP's gain over nll (mean) against 2 × the seed spread: the larger of the two "
           "methods' spreads, and the spread of the per-seed gain (paired: a seed's runs share "
           "its base model and windows).", "",
           "| method | metric | gain | 2 × spread / paired | met (spread / paired) | vs rewrite_nll |",
           "|---|---|---|---|---|---|"]
  yes = lambda v: "n/a" if v is None else ("yes" if v else "no")
  for m, r in b.items():
    for k in BAR_METRICS:
      if k in r:
        x = r[k]
        vs = f"{x['vs_rewrite_nll']:+.3f}" if "vs_rewrite_nll" in x else "n/a"
        lines.append(f"| {m} | {k} | {x['gain']:+.3f} | {2 * x['spread']:.3f} / {2 * x['paired_spread']:.3f} | "
                     f"{yes(x['met'])} / {yes(x['met_paired'])} | {vs} |")
  lines += ["", "Rollout win share rises (last fifth of the steps above the first / by more than "
            "2 × the seed spread of the rise): " + ", ".join(
                f"{m} {yes(r['rollout_win_share_rises'])} / "
                f"{yes(r.get('rollout_win_share_rises_beyond_spread'))}" for m, r in b.items()), ""]
  return lines


def _markdown(summary: dict, trends: dict, cfg, elapsed: float, per_seed: dict | None = None) -> str:
  r = cfg.report
  lines = ["# Self-improving pretraining in miniature (synthetic world, oracle-scored)", "",
           f"Base: {r.base_steps} NLL steps; then {r.steps} steps x {cfg.data.batch_size} windows per "
           f"method (the same windows), K={cfg.sip.num_rollouts} rollouts, judge scheme "
           f"`{cfg.sip.judge_scheme}` (`sip_dpo_pivot` / `sip_dpo_adaptive`: that scheme instead); "
           f"{r.eval_prompts} held-out prompts per metric ({int(r.get('eval_samples', 1))} "
           f"continuations per prefix, {r.bait_samples} per bait prompt); "
           f"{r.num_seeds} seed(s). Total {elapsed / 60:.1f} min.", ""]
  myths = any("myth_rate" in row for row in summary.values())
  keys = ("factuality", "safety", "quality", "win_rate_vs_nll", "false_claim_rate",
          "unsafe_rate_on_bait") + (("myth_rate",) if myths else ())
  lines += ["| method | factuality | safety | quality | win rate vs nll | false claims | unsafe on bait |"
            + (" myths stated |" if myths else ""), "|---" * (len(keys) + 1) + "|"]

  def cell(row, k):
    v = row.get(k, float("nan"))
    s = row.get(f"{k}_spread", 0.0)
    return f"{v:.3f}" + (f" ± {s:.3f}" if s else "")
  for m, row in summary.items():
    lines.append(f"| {m} | " + " | ".join(cell(row, k) for k in keys) + " |")
  lines += ["", "factuality = the mean over continuations of held-out prefixes of correct / checked "
            "claims (1 for a continuation without a checkable claim); false claims = false / checked "
            "claims over all continuations; safety = 1 − unsafe continuations of bait prompts; "
            "quality = oracle quality "
            "of the continuations; win rate = the teacher judge's P(method's continuation better "
            "than nll's), both orders averaged. ± is the standard deviation over seeds."
            + (" myths stated = of the claims about the world's misconceived facts "
               "(world.myth_rate), the share that state the misconception." if myths else ""), ""]
  lines += _bar_lines(bars(summary, trends, per_seed))
  if trends:
    lines += ["Rollout win share (first vs last fifth of the logged steps, mean over seeds; ± the "
              "seed spread of the change) and the judged reward of the rollouts minus the "
              "original's over the same fifths:", ""]
    for m, t in trends.items():
      gap = (f"; reward gap {t['reward_gap_first']:+.3f} -> {t['reward_gap_last']:+.3f}"
             if "reward_gap_first" in t else "")
      spread = f" ± {t['change_spread']:.3f}" if t.get("seeds", 1) > 1 else ""  # one seed: none
      lines.append(f"- {m}: {t['first_fifth']:.3f} -> {t['last_fifth']:.3f} "
                   f"(change {t['change']:+.3f}{spread}){gap}")
  return "\n".join(lines) + "\n"


def _plots(workdir: str, curves: dict[str, list[dict]]) -> list[str]:
  """PNG plots of oracle scores and candidate win shares over training (matplotlib, if present)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    loop.log("report: matplotlib is not installed; skipping plots (pip install matplotlib)")
    return []
  written = []
  keys = ("world/factuality", "world/unsafe_rate_on_bait", "world/quality")
  if any(_curve(lines, k)[0] for lines in curves.values() for k in keys):  # report.eval_every_steps > 0
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, keys):
      for m, lines in curves.items():
        xs, ys = _curve(lines, key)
        if xs:
          ax.plot(xs, ys, marker="o", label=m)
      ax.set_title(key.split("/")[1])
      ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "oracle_scores.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
  sip_runs = {m: l for m, l in curves.items() if any("sip/win_share_rollout" in x for x in l)}
  if sip_runs:
    fig, axes = plt.subplots(1, len(sip_runs), figsize=(4.2 * len(sip_runs), 3.4), squeeze=False)
    for ax, (m, lines) in zip(axes[0], sip_runs.items()):
      for src in ("original", "rewrite", "rollout"):
        xs, ys = _curve(lines, f"sip/win_share_{src}")
        if xs:
          ax.plot(xs, ys, label=src)
      ax.set_title(m)
      ax.set_ylim(0, 1)
      ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "win_share.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
  return written


def finished(out: dict[str, Any], sub, run_dir: str) -> bool:
  """Whether a sub-run ended at its last step. False: it was preempted (SIGTERM), and the report
  stops too; rerunning the command resumes it. A run directory already past the step count
  (left by a report with more steps) would compare unequal budgets: refused."""
  step = int(out["state"].step)
  if step > sub.num_steps:
    from earlyrl_jax.configs import ConfigError
    raise ConfigError(f"report: {run_dir} holds a run of {step} steps but this report trains "
                      f"{sub.num_steps} (report.steps / report.base_steps changed?): use another "
                      "workdir, or delete that run directory")
  if step < sub.num_steps:
    loop.log(f"report: stopped at {run_dir} step {step}/{sub.num_steps} (preempted); rerun the "
             "same command to continue")
    return False
  return True


def run(cfg, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every method and writes the report."""
  t_start = time.time()
  r = cfg.report
  methods = [m.strip() for m in r.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    from earlyrl_jax.configs import ConfigError
    raise ConfigError(f"report.methods: {unknown} unknown (known: {', '.join(METHODS)})")
  if "nll" not in methods:
    methods.insert(0, "nll")
  os.makedirs(workdir, exist_ok=True)
  base = loop.setup(cfg, workdir)  # world, tokenizer, validation
  base.ckpt.close()
  tokenizer_path = os.path.join(workdir, "tokenizer.model")
  mesh = base.mesh
  needs_teacher = any(METHODS[m]["judge"] == "teacher" or METHODS[m]["rewrite"] == "online"
                      for m in methods)
  teacher = teacher_setup.load_teacher_for(cfg, workdir, mesh) if needs_teacher else None
  judge = teacher.judge(kind=cfg.teacher.get("judge_kind", "auto")) if teacher is not None else None
  total = len(methods) * r.num_seeds
  per_seed: dict[str, list[dict]] = {m: [] for m in methods}
  curves: dict[str, list[dict]] = {}
  seed_trends: dict[str, list[dict]] = {}
  done = 0
  for seed in range(r.num_seeds):
    base_dir = os.path.join(workdir, "runs", f"base-s{seed}")
    loop.log(f"report: base model, seed {seed} ({r.base_steps} NLL steps)")
    base_cfg = run_config(cfg, workdir, "base", seed, base_dir=base_dir, tokenizer_path=tokenizer_path)
    if not finished(loop.train(base_cfg, base_dir), base_cfg, base_dir):
      return {"preempted": True}
    texts = {}
    # The seed's runs share their windows: the teacher rewrites each once (rewrite_job.MemoRewriter).
    rewrite_memo: dict[str, str] = {}
    for m in methods:
      done += 1
      run_dir = os.path.join(workdir, "runs", f"{m}-s{seed}")
      t0 = time.time()
      loop.log(f"report [{done}/{total}]: {m}, seed {seed}")
      sub = run_config(cfg, workdir, m, seed, base_dir=base_dir, tokenizer_path=tokenizer_path)
      if not finished(sip_job.run(sub, run_dir, rewrite_memo=rewrite_memo), sub, run_dir):
        return {"preempted": True}
      res = evaluate_model(cfg, workdir, run_dir, base.tokenizer, mesh, jax.random.key(1000 + seed))
      # The judge's win rate reads one continuation per prefix (the first sample): the judge,
      # not the sampler, is this step's cost.
      step = max(1, int(r.get("eval_samples", 1)))
      texts[m] = {k: v[::step] for k, v in res.pop("texts").items()}
      row = {"factuality": res["world/factuality"], "safety": 1.0 - res["world/unsafe_rate_on_bait"],
             "quality": res["world/quality"], "false_claim_rate": res["world/false_claim_rate"],
             "claim_factuality": 1.0 - res["world/false_claim_rate"],
             "unsafe_rate_on_bait": res["world/unsafe_rate_on_bait"],
             "probe_accuracy": res["world/probe_accuracy"],
             "low_quality_rate": res["world/low_quality_rate"], "minutes": (time.time() - t0) / 60}
      if "world/myth_rate" in res:  # a world with misconceptions (world.myth_rate)
        row["myth_rate"] = res["world/myth_rate"]
        row["myths_avoided"] = 1.0 - res["world/myth_rate"]
      per_seed[m].append(row)
      lines = _metrics(os.path.join(run_dir, "metrics.jsonl"))
      if seed == 0:
        curves[m] = lines  # the plots show seed 0
      trend = win_share_trend(lines)
      if trend is not None:
        seed_trends.setdefault(m, []).append(trend)
      loop.log(f"report: {m} seed {seed}: factuality {row['factuality']:.3f}, safety "
               f"{row['safety']:.3f}, quality {row['quality']:.3f} ({row['minutes']:.1f} min)")
    for m in methods:
      per_seed[m][-1]["win_rate_vs_nll"] = (
          0.5 if m == "nll" else win_rate(judge, texts["nll"]["prefixes"], texts[m]["continuations"],
                                           texts["nll"]["continuations"]))
  summary = summarise(per_seed)
  trends = mean_trends(seed_trends)
  elapsed = time.time() - t_start
  report = {"methods": summary, "per_seed": per_seed, "rollout_win_share": trends,
            "bars": bars(summary, trends, per_seed),
            "config": {"base_steps": r.base_steps, "steps": r.steps, "windows_per_step": cfg.data.batch_size,
                       "num_rollouts": cfg.sip.num_rollouts, "judge_scheme": cfg.sip.judge_scheme,
                       "eval_prompts": r.eval_prompts, "eval_samples": int(r.get("eval_samples", 1)),
                       "num_seeds": r.num_seeds},
            "minutes": elapsed / 60}
  if loop.is_main():
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(workdir, "report.md"), "w") as f:
      f.write(_markdown(summary, trends, cfg, elapsed, per_seed))
    report["plots"] = _plots(workdir, curves)
    loop.log(open(os.path.join(workdir, "report.md")).read())
    loop.log(f"report: wrote {workdir}/report.md, report.json" +
             "".join(f", {os.path.basename(p)}" for p in report["plots"]))
  return report
