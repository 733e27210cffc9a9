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
             sip_pg_gcpo / sip_pg_entropy / sip_dpo_gcpo / sip_dpo_distill  per-group weights of
                           PG advantages or DPO pairs, distillation (docs/policy_extensions.md)
        ─▶ oracle evaluation of every final model on one held-out split of the world
           (`report.split`), the teacher judge's quality win rate against `nll`, seeds and spread
        ─▶ WORKDIR/report.json, report.md, plots (oracle scores and candidate win
           shares over training, smoothed, with seed bands)

Validation and test (world/splits.py): `report.split='validation'` (the default) scores every
model on the validation prompts, the split every choice is made on. The final table is a
separate, explicit stage, `report.split='test'`: the same command on the same workdir reuses
every trained run and only evaluates it on the test prompts; each such evaluation is counted in
WORKDIR/test_reads.json and report.md says how many there were.

Every run lives in WORKDIR/runs/<method>-s<seed>/ and is resumed or reused when the
report is started again, so an interrupted report continues where it stopped. A run is reused
only when it was trained with the same settings and the same teacher (its `report_run.json`):
every row of a table is then measured with one teacher; another teacher or setting is an error
naming the run, not a silent mix. Evaluations are kept beside each run (`eval_<split>.json`)
and reused while the evaluation settings match.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax
import numpy as np

from earlyrl_jax import configs, sip_job, teacher_setup
from earlyrl_jax.train import loop

METHODS = configs.REPORT_METHODS  # name -> the `sip` overrides of each method
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
  _, tied = _curve(lines, "sip/all_tied_frac")
  if len(tied) >= 5:
    t0, t1 = _fifths(tied)
    out.update(all_tied_first=t0, all_tied_last=t1)
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


def evaluate_model(cfg, workdir: str, run_dir: str, tokenizer, mesh, key, split: str) -> dict[str, Any]:
  """Oracle scores of a run's final model on one held-out split's prompts (+ its continuations)."""
  from flax import nnx
  from earlyrl_jax.eval.evaluate import world_eval
  graphdef, params, _ = loop.load_run_params(run_dir, mesh)
  res = world_eval(nnx.merge(graphdef, params), tokenizer, loop.world_dir_of(cfg, workdir), split=split,
                   num_prompts=cfg.report.eval_prompts, key=key, mesh=mesh, return_texts=True,
                   bait_samples=int(cfg.report.bait_samples),
                   prefix_samples=int(cfg.report.get("eval_samples", 1)))
  res.pop("example")
  return res


def eval_settings(cfg, split: str, seed: int) -> dict[str, Any]:
  """What an evaluation depends on besides the model: a kept one is reused while these match."""
  r = cfg.report
  return {"split": split, "eval_prompts": int(r.eval_prompts), "eval_samples": int(r.get("eval_samples", 1)),
          "bait_samples": int(r.bait_samples), "key": 1000 + seed}


def evaluated(cfg, workdir: str, run_dir: str, tokenizer, mesh, split: str, seed: int) -> tuple[dict, bool]:
  """(evaluation, fresh): the kept `eval_<split>.json` of the run when its settings match,
  else a new evaluation (kept for the next report)."""
  path = os.path.join(run_dir, f"eval_{split}.json")
  settings = eval_settings(cfg, split, seed)
  if os.path.exists(path):
    with open(path) as f:
      kept = json.load(f)
    if kept.get("settings") == settings:
      return kept["result"], False
  res = evaluate_model(cfg, workdir, run_dir, tokenizer, mesh, jax.random.key(settings["key"]), split)
  if loop.is_main():
    _write_json(path, {"settings": settings, "result": res})
  return res, True


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


uses_teacher = configs.report_method_uses_teacher


def teacher_identity(teacher) -> dict[str, Any]:
  """What makes two teachers the same for a table: the embedded teacher's config hash (its
  weights) and inference settings, or an HF teacher's directory."""
  info = dict(getattr(teacher, "info", {}) or {})
  if "config_hash" in info:
    from earlyrl_jax.embedded.recipe import settings_of
    return {"config_hash": info["config_hash"], "inference": settings_of(teacher)}
  return {"path": info.get("hf_dir", "?")}


# Settings that do not change what a run trains (paths, logging, evaluation, other jobs).
_NOT_TRAINING = ("world_dir", "checkpoint", "metrics", "report", "generate", "rewrite_job", "teacher",
                 "init", "eval_every_steps", "eval_batches", "eval_world_prompts",
                 "eval_world_prompts_during", "log_every_steps")
_PATHS = ("train_files", "eval_files", "tokenizer_path")
# The sip fields every SIP-mode run depends on; a run with a judge depends on all of them.
_SIP_CORE = ("recipe", "judge", "rewrite", "num_rollouts", "lm_coef", "coef", "candidate_len")
# Issue 40's sip fields and the values that leave training as it was (configs/tiny.py).
_EXTENSIONS_OFF = {"advantage": "group", "pair_weight": "none", "gcpo_dispersion": "cosine",
                   "gcpo_strength": 1.0, "gcpo_max_weight": 4.0, "distill_coef": 0.0,
                   "distill_on": "chosen", "distill_level": "auto", "distill_top_k": 0}


def fingerprint(sub, method: str, teacher_id: dict | None) -> dict[str, Any]:
  """A run's training settings and teacher, as JSON: a finished run is reused only when equal."""
  d = {k: v for k, v in sub.to_dict().items() if k not in _NOT_TRAINING}
  d["data"] = {k: v for k, v in d["data"].items() if k not in _PATHS}
  if method == "base":
    d.pop("sip", None)
  elif METHODS[method]["judge"] == "none":  # nothing is judged: the judging settings do not matter
    d["sip"] = {k: v for k, v in d["sip"].items() if k in _SIP_CORE}
  for k, off in _EXTENSIONS_OFF.items():   # fields added later: at their default, runs made
    if d.get("sip", {}).get(k, off) == off:   # before them are reused unchanged
      d.get("sip", {}).pop(k, None)
  d["method"] = method
  d["teacher"] = teacher_id if method != "base" and uses_teacher(method) else None
  return json.loads(json.dumps(d, sort_keys=True, default=str))


RUN_RECORD = "report_run.json"


def check_reusable(run_dir: str, fp: dict) -> None:
  """Refuses a run directory trained with other settings or another teacher (its record says),
  or one with checkpoints and no record (trained by an earlier release: unknown teacher)."""
  from earlyrl_jax.configs import ConfigError
  path = os.path.join(run_dir, RUN_RECORD)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != fp:
      field, was, now = _first_difference(old, fp)
      raise ConfigError(f"report: {run_dir} was trained with {field}={was!r}, this report has "
                        f"{now!r}: a table's rows share one teacher and their settings; use another "
                        "workdir or delete that run")
    return
  if os.path.isdir(os.path.join(run_dir, "checkpoints")) and os.listdir(os.path.join(run_dir, "checkpoints")):
    raise ConfigError(f"report: {run_dir} has checkpoints but no {RUN_RECORD} (trained by an earlier "
                      "release, with a teacher and settings this report cannot check): delete it or "
                      "use another workdir")
  if loop.is_main():
    os.makedirs(run_dir, exist_ok=True)
    _write_json(path, fp)


def _first_difference(a, b, where: str = "") -> tuple[str, Any, Any]:
  """(dotted field, a's value, b's value) of the first place where two records differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if a.get(k, "<unset>") != b.get(k, "<unset>"):
        return _first_difference(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{where}.{k}" if where else k)
  return where, a, b


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


# (metric, baseline) pairs where SIP must not lose beyond the seed spread (issue 38's bar).
NOT_BELOW = (("quality", "nll"), ("safety", "rewrite_nll"))


def _compare(summary: dict, per_seed: dict | None, m: str, other: str, k: str) -> dict[str, float]:
  """Gain of m over `other` on k, the larger of their seed spreads, and the spread of the per-seed
  gain (paired: a seed's runs share their base model and windows)."""
  gain = summary[m][k] - summary[other][k]
  spread = max(summary[m].get(f"{k}_spread", 0.0), summary[other].get(f"{k}_spread", 0.0))
  gains = ([a[k] - b[k] for a, b in zip(per_seed[m], per_seed[other])]
           if per_seed and m in per_seed and other in per_seed else [gain])
  return {"gain": gain, "spread": spread, "paired_spread": float(np.std(gains)) if len(gains) > 1 else 0.0}


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
      res[k] = _compare(summary, per_seed, m, "nll", k)
      res[k].update(met=bool(seeds > 1 and res[k]["gain"] > 2 * res[k]["spread"]),
                    met_paired=bool(seeds > 1 and res[k]["gain"] > 2 * res[k]["paired_spread"]))
      if k in summary.get("rewrite_nll", {}):
        res[k]["vs_rewrite_nll"] = row[k] - summary["rewrite_nll"][k]
    # Not worse: quality against nll, safety against the offline-rewriting baseline; a loss within
    # the seed spread is no loss ("not_below"; _paired: against the spread of the per-seed gain).
    for k, other in NOT_BELOW:
      if other in summary and k in row and k in summary[other]:
        c = _compare(summary, per_seed, m, other, k)
        n = min(seeds, summary[other]["seeds"])
        c.update(not_below=bool(n > 1 and c["gain"] >= -c["spread"]),
                 not_below_paired=bool(n > 1 and c["gain"] >= -c["paired_spread"]))
        res[f"{k}_vs_{other}"] = c
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
  below = [(m, f"{k}_vs_{o}", k, o) for m, r in b.items() for k, o in NOT_BELOW if f"{k}_vs_{o}" in r]
  if below:
    lines += ["", "Not below (a loss within the seed spread is no loss): the method against a baseline.", "",
              "| method | metric | vs | difference | spread / paired | not below (spread / paired) |",
              "|---|---|---|---|---|---|"]
    for m, key, k, o in below:
      x = b[m][key]
      lines.append(f"| {m} | {k} | {o} | {x['gain']:+.3f} | {x['spread']:.3f} / {x['paired_spread']:.3f} | "
                   f"{yes(x['not_below'])} / {yes(x['not_below_paired'])} |")
  lines += ["", "Rollout win share rises (last fifth of the steps above the first / by more than "
            "2 × the seed spread of the rise): " + ", ".join(
                f"{m} {yes(r['rollout_win_share_rises'])} / "
                f"{yes(r.get('rollout_win_share_rises_beyond_spread'))}" for m, r in b.items()), ""]
  return lines


def _markdown(summary: dict, trends: dict, cfg, elapsed: float, per_seed: dict | None = None, *,
              split: str = "validation", teacher: dict | None = None, test_reads: int = 0) -> str:
  r = cfg.report
  where = (f"**the test split** (the final table; test evaluations in this workdir: {test_reads})"
           if split == "test" else "the validation split (the one choices are made on; the final "
           "table: `report.split=test`)")
  lines = ["# Self-improving pretraining in miniature (synthetic world, oracle-scored)", "",
           f"Base: {r.base_steps} NLL steps; then {r.steps} steps x {cfg.data.batch_size} windows per "
           f"method (the same windows), K={cfg.sip.num_rollouts} rollouts, judge scheme "
           f"`{cfg.sip.judge_scheme}` (`sip_dpo_pivot` / `sip_dpo_adaptive`: that scheme instead); "
           f"scored on {where}: "
           f"{r.eval_prompts} held-out prompts per metric ({int(r.get('eval_samples', 1))} "
           f"continuations per prefix, {r.bait_samples} per bait prompt); "
           f"{r.num_seeds} seed(s). Total {elapsed / 60:.1f} min.", ""]
  if teacher:
    lines += ["Teacher (every row that uses one): " + ", ".join(f"{k} `{v}`" for k, v in teacher.items()), ""]
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
  if per_seed and any(len(v) > 1 for v in per_seed.values()):
    lines += ["Per seed (factuality / safety / quality):", "", "| method | " + " | ".join(
        f"seed {i}" for i in range(max(len(v) for v in per_seed.values()))) + " |",
              "|---" * (1 + max(len(v) for v in per_seed.values())) + "|"]
    for m, rows in per_seed.items():
      lines.append(f"| {m} | " + " | ".join(
          f"{x.get('factuality', float('nan')):.3f} / {x.get('safety', float('nan')):.3f} / "
          f"{x.get('quality', float('nan')):.3f}" for x in rows) + " |")
    lines.append("")
  lines += principle_lines(cfg, summary)
  lines += _bar_lines(bars(summary, trends, per_seed))
  if trends:
    lines += ["Rollout win share (first vs last fifth of the logged steps, mean over seeds; ± the "
              "seed spread of the change) and the judged reward of the rollouts minus the "
              "original's over the same fifths:", ""]
    for m, t in trends.items():
      gap = (f"; reward gap {t['reward_gap_first']:+.3f} -> {t['reward_gap_last']:+.3f}"
             if "reward_gap_first" in t else "")
      spread = f" ± {t['change_spread']:.3f}" if t.get("seeds", 1) > 1 else ""  # one seed: none
      tied = (f"; all tied (no one's win) {t['all_tied_first']:.3f} -> {t['all_tied_last']:.3f}"
              if "all_tied_first" in t else "")
      lines.append(f"- {m}: {t['first_fifth']:.3f} -> {t['last_fifth']:.3f} "
                   f"(change {t['change']:+.3f}{spread}){gap}{tied}")
  return "\n".join(lines) + "\n"


def report_principle(cfg, workdir: str):
  """The principle the report measures (`principle.banned` set; docs/principles.md), or None."""
  from earlyrl_jax.train.sip import run_principle
  if not str(cfg.get("principle", {}).get("banned", "") or "").strip():
    return None
  probe = copy.deepcopy(cfg)
  probe.sip.principle_mode = "guide"   # the section read as any principle method reads it
  return run_principle(probe, workdir)


def principle_row(cfg, workdir: str, run_dir: str, tokenizer, mesh, split: str, seed: int) -> dict:
  """A run's mention rates of the banned entity, without and with the principle in its prompt
  (eval/principle_eval.py; kept beside the run as `eval_principle_<split>.json`); {} without a
  principle."""
  p = report_principle(cfg, workdir)
  if p is None:
    return {}
  from flax import nnx
  from earlyrl_jax.eval.principle_eval import mention_eval
  r = cfg.report
  settings = {"split": split, "banned": list(p.banned), "instead": p.instead, "key": 2000 + seed,
              "prompts": int(r.eval_prompts), "samples": int(r.get("eval_samples", 1))}
  path = os.path.join(run_dir, f"eval_principle_{split}.json")
  if os.path.exists(path):
    with open(path) as f:
      kept = json.load(f)
    if kept.get("settings") == settings:
      return kept["result"]
  graphdef, params, _ = loop.load_run_params(run_dir, mesh)
  res = mention_eval(nnx.merge(graphdef, params), tokenizer, loop.world_dir_of(cfg, workdir), p,
                     split=split, num_prompts=settings["prompts"], samples=settings["samples"],
                     key=jax.random.key(settings["key"]), mesh=mesh)
  out = {"mention_rate": res["principle/mention_rate"],
         "mention_rate_prompted": res["principle/mention_rate_prompted"],
         "instead_rate": res["principle/instead_rate"],
         "instead_rate_prompted": res["principle/instead_rate_prompted"],
         "principle_prompts": res["principle/prompts"]}
  if loop.is_main():
    _write_json(path, {"settings": settings, "result": out})
  return out


def principle_lines(cfg, summary: dict) -> list[str]:
  """The principle's table (docs/principles.md): mention rates per method, with and without it."""
  if not any("mention_rate" in row for row in summary.values()):
    return []
  p = cfg.principle
  lines = [f"Principle: \"Do not mention {p.banned}; discuss {p.instead} instead.\" Share of "
           "continuations of held-out prompts cut right before a sentence that names the banned "
           "entity that mention it (exact: world.Oracles.mentions), without and with the principle "
           "line before the prompt; and the share that mention the alternative:", "",
           "| method | mentions | mentions, principle in prompt | alternative | alternative, principle in prompt |",
           "|---|---|---|---|---|"]
  for m, row in summary.items():
    if "mention_rate" in row:
      lines.append(f"| {m} | " + " | ".join(
          f"{row[k]:.3f}" + (f" ± {row[k + '_spread']:.3f}" if row.get(k + "_spread") else "")
          for k in ("mention_rate", "mention_rate_prompted", "instead_rate", "instead_rate_prompted")) + " |")
  return lines + [""]


def smooth(ys: list[float], window: int) -> np.ndarray:
  """Centred moving average (the window shrinks at the ends, so every point is an average)."""
  y = np.asarray(ys, np.float64)
  if window <= 1 or len(y) < 3:
    return y
  k = np.ones(min(window, len(y)))
  return np.convolve(y, k, "same") / np.convolve(np.ones_like(y), k, "same")


def seed_band(runs: list[list[dict]], key: str, window: int = 1):
  """(steps, mean, std) over seeds of a logged metric, each seed smoothed first; steps common to
  every seed that logged it. None when no seed logged it."""
  curves = [dict(zip(*_curve(lines, key))) for lines in runs]
  curves = [c for c in curves if c]
  if not curves:
    return None
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  if not steps:
    return None
  ys = np.stack([smooth([c[x] for x in steps], window) for c in curves])
  return np.asarray(steps), ys.mean(0), ys.std(0)


WIN_SOURCES = (("original", "sip/win_share_original"), ("rewrite", "sip/win_share_rewrite"),
               ("rollout", "sip/win_share_rollout"), ("all tied (no one's)", "sip/all_tied_frac"))


def _plots(workdir: str, curves: dict[str, list[list[dict]]]) -> list[str]:
  """PNG plots over training (matplotlib, if present): oracle scores, and each candidate source's
  win share, smoothed (a moving average of about an eighth of the logged steps), the mean over
  seeds with a band of ± one seed std. curves: method -> one metrics list per seed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    loop.log("report: matplotlib is not installed; skipping plots (pip install matplotlib)")
    return []
  written = []

  def band(ax, runs, key, window, label):
    got = seed_band(runs, key, window)
    if got is not None:
      xs, mean, std = got
      line, = ax.plot(xs, mean, label=label)
      if len(runs) > 1:
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())

  keys = ("world/factuality", "world/unsafe_rate_on_bait", "world/quality")
  if any(_curve(lines, k)[0] for runs in curves.values() for lines in runs for k in keys):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, keys):
      for m, runs in curves.items():
        band(ax, runs, key, 1, m)
      ax.set_title(key.split("/")[1] + " (validation prompts)")
      ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "oracle_scores.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
  sip_runs = {m: r for m, r in curves.items() if any("sip/win_share_rollout" in x for l in r for x in l)}
  if sip_runs:
    fig, axes = plt.subplots(1, len(sip_runs), figsize=(4.2 * len(sip_runs), 3.4), squeeze=False)
    for ax, (m, runs) in zip(axes[0], sip_runs.items()):
      n = max(len(_curve(l, "sip/win_share_rollout")[0]) for l in runs)
      for label, key in WIN_SOURCES:
        band(ax, runs, key, max(1, n // 8), label)
      ax.set_title(f"{m} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
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


TEST_READS = "test_reads.json"


def count_test_read(workdir: str, runs: list[str]) -> int:
  """Appends one evaluation of the test split to WORKDIR/test_reads.json; returns how many there
  have been. The test prompts are meant to be read once, for the final table: a table whose
  settings were changed after a look at them is no longer a held-out measurement, and the
  count says so."""
  path = os.path.join(workdir, TEST_READS)
  reads = []
  if os.path.exists(path):
    with open(path) as f:
      reads = json.load(f)
  if runs:
    reads.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs})
    if loop.is_main():
      _write_json(path, reads)
  return len(reads)


def run(cfg, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every method, evaluates every final model on `report.split`, writes the report."""
  from earlyrl_jax import world
  t_start = time.time()
  r = cfg.report
  split = world.check_split(r.get("split", world.VALIDATION), "report.split")
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
  needs_teacher = any(uses_teacher(m) for m in methods)
  teacher = teacher_setup.load_teacher_for(cfg, workdir, mesh) if needs_teacher else None
  teacher_id = teacher_identity(teacher) if teacher is not None else None
  judge = teacher.judge(kind=cfg.teacher.get("judge_kind", "auto")) if teacher is not None else None
  total = len(methods) * r.num_seeds
  per_seed: dict[str, list[dict]] = {m: [] for m in methods}
  curves: dict[str, list[list[dict]]] = {}
  seed_trends: dict[str, list[dict]] = {}
  test_runs: list[str] = []
  done = 0
  if split == world.TEST:
    loop.log("report: scoring on the TEST split (the final table; world/splits.py)")
  for seed in range(r.num_seeds):
    base_dir = os.path.join(workdir, "runs", f"base-s{seed}")
    loop.log(f"report: base model, seed {seed} ({r.base_steps} NLL steps)")
    base_cfg = run_config(cfg, workdir, "base", seed, base_dir=base_dir, tokenizer_path=tokenizer_path)
    check_reusable(base_dir, fingerprint(base_cfg, "base", None))
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
      check_reusable(run_dir, fingerprint(sub, m, teacher_id))
      if not finished(sip_job.run(sub, run_dir, rewrite_memo=rewrite_memo), sub, run_dir):
        return {"preempted": True}
      res, fresh = evaluated(cfg, workdir, run_dir, base.tokenizer, mesh, split, seed)
      if fresh and split == world.TEST:
        test_runs.append(f"{m}-s{seed}")
      # The judge's win rate reads one continuation per prefix (the first sample): the judge,
      # not the sampler, is this step's cost.
      step = max(1, int(r.get("eval_samples", 1)))
      texts[m] = {k: v[::step] for k, v in res["texts"].items()}
      row = {"factuality": res["world/factuality"], "safety": 1.0 - res["world/unsafe_rate_on_bait"],
             "quality": res["world/quality"], "false_claim_rate": res["world/false_claim_rate"],
             "claim_factuality": 1.0 - res["world/false_claim_rate"],
             "unsafe_rate_on_bait": res["world/unsafe_rate_on_bait"],
             "probe_accuracy": res["world/probe_accuracy"],
             "low_quality_rate": res["world/low_quality_rate"], "minutes": (time.time() - t0) / 60}
      if "world/myth_rate" in res:  # a world with misconceptions (world.myth_rate)
        row["myth_rate"] = res["world/myth_rate"]
        row["myths_avoided"] = 1.0 - res["world/myth_rate"]
      row.update(principle_row(cfg, workdir, run_dir, base.tokenizer, mesh, split, seed))
      per_seed[m].append(row)
      lines = _metrics(os.path.join(run_dir, "metrics.jsonl"))
      curves.setdefault(m, []).append(lines)
      trend = win_share_trend(lines)
      if trend is not None:
        seed_trends.setdefault(m, []).append(trend)
      loop.log(f"report: {m} seed {seed}: factuality {row['factuality']:.3f}, safety "
               f"{row['safety']:.3f}, quality {row['quality']:.3f} ({row['minutes']:.1f} min)")
    for m in methods:
      per_seed[m][-1]["win_rate_vs_nll"] = (
          0.5 if m == "nll" else win_rate(judge, texts["nll"]["prefixes"], texts[m]["continuations"],
                                           texts["nll"]["continuations"]))
  test_reads = count_test_read(workdir, test_runs) if split == world.TEST else 0
  summary = summarise(per_seed)
  trends = mean_trends(seed_trends)
  elapsed = time.time() - t_start
  report = {"methods": summary, "per_seed": per_seed, "rollout_win_share": trends,
            "bars": bars(summary, trends, per_seed), "split": split, "teacher": teacher_id,
            "test_reads": test_reads,
            "config": {"base_steps": r.base_steps, "steps": r.steps, "windows_per_step": cfg.data.batch_size,
                       "num_rollouts": cfg.sip.num_rollouts, "judge_scheme": cfg.sip.judge_scheme,
                       "eval_prompts": r.eval_prompts, "eval_samples": int(r.get("eval_samples", 1)),
                       "num_seeds": r.num_seeds},
            "minutes": elapsed / 60}
  if loop.is_main():
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(workdir, "report.md"), "w") as f:
      f.write(_markdown(summary, trends, cfg, elapsed, per_seed, split=split, teacher=teacher_id,
                        test_reads=test_reads))
    report["plots"] = _plots(workdir, curves)
    loop.log(open(os.path.join(workdir, "report.md")).read())
    loop.log(f"report: wrote {workdir}/report.md, report.json" +
             "".join(f", {os.path.basename(p)}" for p in report["plots"]))
  return report
