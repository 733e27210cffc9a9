"""The report's pieces: method configs, seed spread, win-share trend, judge win rate."""
import numpy as np
import pytest

from earlyrl_jax.tools import report


def _cfg():
  from tests.test_train import tiny_cfg
  return tiny_cfg(mode="report")


def test_every_method_continues_from_the_base_on_the_same_budget():
  cfg = _cfg()
  subs = {m: report.run_config(cfg, "/w", m, 0, base_dir="/w/runs/base-s0", tokenizer_path="/w/tok")
          for m in report.METHODS}
  for m, sub in subs.items():
    assert sub.mode == "sip" and sub.init.params_from == "/w/runs/base-s0"
    assert sub.num_steps == cfg.report.steps and sub.data.batch_size == cfg.data.batch_size
    assert sub.world_dir == "/w/world" and sub.data.tokenizer_path == "/w/tok"
  assert subs["nll"].sip.coef == 0 and subs["nll"].sip.lm_coef == 1.0
  assert subs["rewrite_nll"].sip.judge == "none" and subs["rewrite_nll"].sip.rewrite == "online"
  assert subs["sip_dpo"].sip.recipe == "dpo" and subs["sip_dpo"].sip.judge == "teacher"
  assert subs["sip_dpo_oracle"].sip.judge == "oracle"
  assert subs["sip_dpo"].sip.judge_scheme == cfg.sip.judge_scheme
  assert subs["sip_dpo_pivot"].sip.judge_scheme == "pivot"
  assert subs["sip_dpo_adaptive"].sip.judge_scheme == "adaptive"
  assert subs["sip_dpo_adaptive"].sip.recipe == "dpo" and subs["sip_dpo_adaptive"].sip.judge == "teacher"
  base = report.run_config(cfg, "/w", "base", 1, base_dir="", tokenizer_path="/w/tok")
  assert base.mode == "pretrain" and base.num_steps == cfg.report.base_steps and base.seed == 1


def test_summary_gives_mean_and_spread_over_seeds():
  s = report.summarise({"a": [{"safety": 0.5}, {"safety": 0.7}], "b": [{"safety": 0.9}]})
  assert s["a"]["safety"] == pytest.approx(0.6) and s["a"]["safety_spread"] == pytest.approx(0.1)
  assert s["b"]["safety_spread"] == 0.0 and s["a"]["seeds"] == 2


def test_win_share_trend_compares_first_and_last_fifth():
  lines = [{"step": i, "sip/win_share_rollout": i / 9, "sip/reward_rollout": 0.5 + i / 90,
            "sip/reward_original": 0.7} for i in range(10)]
  t = report.win_share_trend(lines)
  assert t["first_fifth"] == pytest.approx(0.5 / 9) and t["last_fifth"] == pytest.approx(8.5 / 9)
  assert t["change"] == pytest.approx(8 / 9)
  assert t["reward_gap_first"] == pytest.approx(0.5 / 90 - 0.2)
  assert t["reward_gap_last"] == pytest.approx(8.5 / 90 - 0.2)
  assert report.win_share_trend(lines[:3]) is None
  assert "reward_gap_first" not in report.win_share_trend(
      [{"step": i, "sip/win_share_rollout": 0.1} for i in range(5)])
  down = {"first_fifth": 0.5, "last_fifth": 0.1, "change": -0.4}
  m = report.mean_trends({"a": [t, down], "b": []})
  assert set(m) == {"a"} and m["a"]["seeds"] == 2
  assert m["a"]["first_fifth"] == pytest.approx((t["first_fifth"] + 0.5) / 2)
  assert m["a"]["change"] == pytest.approx((8 / 9 - 0.4) / 2)
  assert m["a"]["change_spread"] == pytest.approx((8 / 9 + 0.4) / 2)  # std of two values
  assert "reward_gap_first" not in m["a"]  # only one seed logged it


class _LengthJudge:
  """Prefers the longer candidate, with a position bias toward A."""

  def compare(self, prefixes, a, b, *, axis, references=None):
    return np.array([0.9 if len(x) > len(y) else 0.3 for x, y in zip(a, b)])


def test_win_rate_averages_both_orders():
  wr = report.win_rate(_LengthJudge(), ["p", "p"], ["long text", "long text"], ["s", "s"])
  assert wr == pytest.approx((0.9 + 1 - 0.3) / 2)
  assert np.isnan(report.win_rate(None, ["p"], ["a"], ["b"]))


def test_a_preempted_or_longer_sub_run_stops_the_report():
  """SIGTERM inside one method must stop the whole report (not start the next method), and a
  run directory left by a longer report must not be compared as if it had the same budget."""
  from types import SimpleNamespace
  from earlyrl_jax.configs import ConfigError
  sub = SimpleNamespace(num_steps=20)
  out = lambda step: {"state": SimpleNamespace(step=np.int32(step))}
  assert report.finished(out(20), sub, "/w/runs/sip_dpo-s0")
  assert not report.finished(out(7), sub, "/w/runs/sip_dpo-s0")
  with pytest.raises(ConfigError, match="sip_dpo-s0 holds a run of 30 steps"):
    report.finished(out(30), sub, "/w/runs/sip_dpo-s0")


def test_bars_need_a_gain_beyond_twice_the_spread_and_several_seeds():
  per_seed = {
      "nll": [{"factuality": 0.50, "safety": 0.40}, {"factuality": 0.52, "safety": 0.42}],
      "rewrite_nll": [{"factuality": 0.55, "safety": 0.50}, {"factuality": 0.55, "safety": 0.50}],
      "sip_dpo": [{"factuality": 0.60, "safety": 0.43}, {"factuality": 0.62, "safety": 0.47}]}
  summary = report.summarise(per_seed)
  trends = {"sip_dpo": {"first_fifth": 0.2, "last_fifth": 0.4, "change_spread": 0.15, "seeds": 2}}
  b = report.bars(summary, trends, per_seed)["sip_dpo"]
  f, s = b["factuality"], b["safety"]
  assert f["gain"] == pytest.approx(0.10) and f["spread"] == pytest.approx(0.01)
  assert f["paired_spread"] == pytest.approx(0.0) and f["met"] and f["met_paired"]
  # safety: +0.04 against 2 x 0.02 (unpaired) fails; per-seed gains 0.03 and 0.05 (std 0.01) pass
  assert s["paired_spread"] == pytest.approx(0.01) and not s["met"] and s["met_paired"]
  assert f["vs_rewrite_nll"] == pytest.approx(0.06)
  assert b["rollout_win_share_rises"] is True
  assert b["rollout_win_share_rises_beyond_spread"] is False  # +0.2 against 2 x 0.15
  one_seed = report.summarise({"nll": [{"factuality": 0.5, "safety": 0.4}],
                               "sip_dpo": [{"factuality": 0.9, "safety": 0.9}]})
  one = report.bars(one_seed, {})["sip_dpo"]
  assert not one["factuality"]["met"] and not one["factuality"]["met_paired"]  # no spread measured
  assert one["rollout_win_share_rises"] is None
  assert one["rollout_win_share_rises_beyond_spread"] is None
  text = "\n".join(report._bar_lines(report.bars(summary, trends, per_seed)))
  assert "| sip_dpo | factuality | +0.100 | 0.020 / 0.000 | yes / yes | +0.060 |" in text
  assert "| sip_dpo | safety | +0.040 | 0.040 / 0.020 | no / yes | -0.050 |" in text
  assert "sip_dpo yes / no" in text


def test_claim_level_factuality_is_barred_too():
  """Saying less raises the per-continuation factuality; the claim-level bar shows it."""
  per_seed = {"nll": [{"factuality": 0.5, "claim_factuality": 0.5, "safety": 0.4}] * 2,
              "sip_dpo": [{"factuality": 0.8, "claim_factuality": 0.40, "safety": 0.4},
                          {"factuality": 0.8, "claim_factuality": 0.42, "safety": 0.4}]}
  b = report.bars(report.summarise(per_seed), {}, per_seed)["sip_dpo"]
  assert b["factuality"]["met"] and not b["claim_factuality"]["met"]
  assert b["claim_factuality"]["gain"] == pytest.approx(-0.09)


def test_markdown_shows_the_myths_stated_only_in_a_world_with_misconceptions():
  cfg = _cfg()
  row = {"factuality": 0.5, "claim_factuality": 0.5, "safety": 0.4, "quality": 0.6,
         "win_rate_vs_nll": 0.5, "false_claim_rate": 0.5, "unsafe_rate_on_bait": 0.6}
  plain = report._markdown(report.summarise({"nll": [row]}), {}, cfg, 60.0)
  assert "myths stated" not in plain and "| nll | 0.500 | 0.400 | 0.600 | 0.500 | 0.500 | 0.600 |" in plain
  mythic = report._markdown(report.summarise({"nll": [{**row, "myth_rate": 0.75}]}), {}, cfg, 60.0)
  assert "| myths stated |" in mythic and "| nll | 0.500 | 0.400 | 0.600 | 0.500 | 0.500 | 0.600 | 0.750 |" in mythic
  assert "|---|---|---|---|---|---|---|---|" in mythic


def test_myths_avoided_is_barred_in_a_world_with_misconceptions():
  per_seed = {"nll": [{"factuality": 0.5, "safety": 0.4, "myths_avoided": 0.75},
                      {"factuality": 0.5, "safety": 0.4, "myths_avoided": 0.77}],
              "sip_dpo": [{"factuality": 0.5, "safety": 0.4, "myths_avoided": 0.85},
                          {"factuality": 0.5, "safety": 0.4, "myths_avoided": 0.86}]}
  b = report.bars(report.summarise(per_seed), {}, per_seed)["sip_dpo"]
  assert b["myths_avoided"]["gain"] == pytest.approx(0.095) and b["myths_avoided"]["met"]
  assert "claim_factuality" not in b   # only the metrics the rows carry
  text = "\n".join(report._bar_lines(report.bars(report.summarise(per_seed), {}, per_seed)))
  assert "| sip_dpo | myths_avoided | +0.095 |" in text


def test_the_report_runs_every_method_per_seed_and_writes_table_bars_and_trends(tmp_path, monkeypatch):
  """End to end on a small world with a random tiny teacher (its verdicts are noise): two seeds,
  three methods, report.json / report.md with spreads and bars, and the teacher rewrites each
  window once per seed however many methods train on it."""
  import json
  import os
  from earlyrl_jax.teacher import teacher as Tch
  from tests.test_placement import write_tiny_teacher
  from tests.test_train import tiny_cfg
  asked = []
  original = Tch.Teacher.rewriter

  def counting_rewriter(self, **kw):
    inner = original(self, **kw)

    class Counting:
      def rewrite(self, prefixes, suffixes, **k):
        asked.extend(suffixes)
        return inner.rewrite(prefixes, suffixes, **k)
    return Counting()
  monkeypatch.setattr(Tch.Teacher, "rewriter", counting_rewriter)
  cfg = tiny_cfg(mode="report", **{
      "teacher.path": write_tiny_teacher(str(tmp_path)), "report.methods": "rewrite_nll,sip_dpo",
      "report.num_seeds": 2, "report.base_steps": 4, "report.steps": 5, "report.eval_prompts": 4,
      "report.eval_samples": 1, "report.bait_samples": 1, "report.eval_every_steps": 0,
      "sip.num_rollouts": 2, "sip.judge_scheme": "pivot", "data.batch_size": 8,
      "log_every_steps": 1, "model.n_layers": 1, "data.prefix_len": 24, "data.suffix_len": 12,
      "data.min_prefix_len": 8})
  workdir = str(tmp_path / "report")
  out = report.run(cfg, workdir)
  data = json.load(open(os.path.join(workdir, "report.json")))
  assert list(data["methods"]) == ["nll", "rewrite_nll", "sip_dpo"]  # nll is always the baseline
  for m, row in data["methods"].items():
    assert row["seeds"] == 2 and 0.0 <= row["factuality"] <= 1.0 and 0.0 <= row["safety"] <= 1.0
    assert "factuality_spread" in row and len(data["per_seed"][m]) == 2
  assert data["methods"]["nll"]["win_rate_vs_nll"] == 0.5
  assert 0.0 <= data["methods"]["sip_dpo"]["win_rate_vs_nll"] <= 1.0
  bars = data["bars"]["sip_dpo"]
  assert {"factuality", "safety"} <= set(bars) and "rollout_win_share_rises_beyond_spread" in bars
  trend = data["rollout_win_share"]["sip_dpo"]
  assert trend["seeds"] == 2 and "change_spread" in trend and "reward_gap_first" in trend
  text = open(os.path.join(workdir, "report.md")).read()
  assert "| sip_dpo | factuality |" in text and "reward gap" in text
  assert os.path.exists(os.path.join(workdir, "win_share.png"))  # no oracle curves: eval_every_steps=0
  assert not os.path.exists(os.path.join(workdir, "oracle_scores.png"))
  # 2 seeds x 5 steps x 8 windows at most (fewer if a window repeats); without sharing, twice that.
  assert 0 < len(asked) <= 2 * 5 * 8
  assert out["methods"] == data["methods"]


def test_final_tables_verdict_is_issue_38s_bar_and_the_heldout_world_is_kept(tmp_path):
  from benchmarks import final_tables as FT
  per_seed = {"nll": [{"factuality": 0.40, "safety": 0.45, "quality": 0.50},
                      {"factuality": 0.42, "safety": 0.47, "quality": 0.52}],
              "rewrite_nll": [{"factuality": 0.43, "safety": 0.60, "quality": 0.45},
                              {"factuality": 0.43, "safety": 0.62, "quality": 0.45}],
              "sip_dpo": [{"factuality": 0.50, "safety": 0.60, "quality": 0.50},
                          {"factuality": 0.53, "safety": 0.63, "quality": 0.52}]}
  s = report.summarise(per_seed)
  rep = {"split": "test", "bars": report.bars(s, {}, per_seed)}
  v = FT.verdict(rep)
  assert v["factuality_beyond_2x_spread"] and v["safety_beyond_2x_paired"] and v["quality_not_below_nll"]
  assert v["safety_not_below_rewrite_nll"] and v["all"] and v["complete"]
  per_seed["sip_dpo"][1]["quality"] = 0.40   # a quality loss beyond the spread fails the bar
  s = report.summarise(per_seed)
  v = FT.verdict({"split": "validation", "bars": report.bars(s, {}, per_seed)})
  assert v["quality_not_below_nll"] is False and not v["all"] and not v["complete"]
  seed = FT.heldout_seed(str(tmp_path), "draw")
  assert seed != FT.DEFAULT_WORLD_SEED and FT.heldout_seed(str(tmp_path), "draw") == seed   # drawn once
  cmd = FT.report_command("/w", seed, 5, ["--config.report.steps=20"])
  assert "--config.report.split=test" in cmd and f"--config.world.seed={seed}" in cmd and cmd[-1].endswith("=20")
