"""eval/judge_audit.py: a judge's agreement with the oracles on SIP-shaped candidate groups."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.eval import judge_audit as JA
from tests.helpers import set_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pair_agreement_by_pair_kind_by_hand():
  judge = np.array([[0.9, 0.1, 0.5],     # (0,1) agrees, (0,2) agrees, (1,2) the oracles tie: left out
                    [0.2, 0.6, 0.6]])    # (0,1) disagrees, (0,2) tie left out, (1,2) judge tie: 1/2
  oracle = np.array([[1.0, 0.0, 0.0],
                     [1.0, 0.0, 1.0]])
  got = JA.pair_agreement(judge, oracle)
  assert got["original_vs_rollout"] == {"agreement": pytest.approx(2 / 3), "pairs": 3}
  assert got["rollout_vs_rollout"] == {"agreement": 0.5, "pairs": 1}
  assert got["agreement"] == pytest.approx(2.5 / 4) and got["pairs"] == 4
  # NaN rewards (padding slots of ragged groups) are never counted; no pair left: null
  judge[1, 2] = np.nan
  assert JA.pair_agreement(judge, oracle)["rollout_vs_rollout"] == {"agreement": None, "pairs": 0}


def test_audit_reports_both_pairs_oracle_scores():
  oracle = {"quality": np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.1]]),
            "factuality": np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])}
  judge = SimpleNamespace(per_axis={"quality": -oracle["quality"],
                                    "factuality": oracle["factuality"].copy()},
                          chosen=np.array([2, 1]), rejected=np.array([0, 0]))
  perfect = SimpleNamespace(chosen=np.array([0, 0]), rejected=np.array([1, 2]))
  trained = {"tokens": np.array([[32, 5, 12], [32, 30, 2]], float), "eos": np.array([[0, 1, 0], [0, 0, 1]], float)}
  a = JA.audit(judge, perfect, oracle, trained)
  assert a["judge_pair"]["chosen_trained"] == {"tokens": 21.0, "eos": 0.0}       # candidates 2, 1
  assert a["judge_pair"]["rejected_trained"] == {"tokens": 32.0, "eos": 0.0}     # the originals
  assert a["oracle_pair"]["rejected_trained"] == {"tokens": 3.5, "eos": 1.0}
  assert a["original_reward"] == {"quality": pytest.approx(-0.85), "factuality": 1.0}
  assert (a["groups"], a["candidates"]) == (2, 3)
  assert a["axes"]["quality"]["agreement"] == 0.0       # reversed scores: every pair wrong
  assert a["axes"]["factuality"]["agreement"] == 1.0
  assert a["judge_pair"]["chosen"] == {"quality": pytest.approx(0.55), "factuality": 1.0}
  assert a["judge_pair"]["rejected"] == {"quality": pytest.approx(0.85), "factuality": 1.0}
  assert a["judge_pair"]["chosen_original"] == 0.0
  assert a["oracle_pair"]["rejected"] == {"quality": pytest.approx(0.15), "factuality": 0.0}
  assert a["oracle_pair"]["chosen_original"] == 1.0


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
  """A 2-step pretraining run on a small world (byte tokenizer, 30k-parameter model)."""
  from earlyrl_jax.train import loop
  root = tmp_path_factory.mktemp("audit")
  cfg = set_fields(configs.load_config_file(os.path.join(REPO, "configs", "tiny.py")), {
      "num_steps": 2, "log_every_steps": 1, "eval_every_steps": 0, "eval_world_prompts": 0,
      "data.tokenizer": "byte", "model.vocab_size": 384, "model.d_model": 32, "model.n_layers": 1,
      "model.n_heads": 2, "model.n_kv_heads": 1, "model.head_dim": 16, "model.d_ff": 64,
      "model.max_seq_len": 160, "data.seq_len": 64, "data.batch_size": 8, "data.suffix_len": 80,
      "sip.num_rollouts": 3, "checkpoint.every_steps": 2,
      "world.num_train_documents": 200, "world.num_eval_documents": 10,
      "world.num_preference_pairs": 5, "world.num_rewrite_examples": 5,
      "world.num_factual_probes": 5, "world.num_unsafe_bait": 3})
  workdir = str(root / "run")
  loop.train(cfg, workdir)
  return workdir


def test_oracle_judge_agrees_with_itself_end_to_end(world_run, tmp_path):
  out = str(tmp_path / "a.json")
  a = JA.run_audit(world_run, judge="oracle", num_prefixes=8, out=out)
  assert json.load(open(out)) == json.loads(json.dumps(a))
  assert (a["groups"], a["candidates"], a["rollouts"]) == (8, 4, 3)  # original + sip.num_rollouts
  assert a["axes"]["quality"]["pairs"] > 0
  for axis in a["axes"].values():
    assert axis["pairs"] == 0 and axis["agreement"] is None or axis["agreement"] == 1.0
  assert a["judge_pair"] == a["oracle_pair"]


def test_command_line_with_a_teacher_judge(world_run, tmp_path):
  """The LM judge path from the command line (a random tiny teacher: its verdicts are noise)."""
  from tests.test_placement import write_tiny_teacher
  teacher = write_tiny_teacher(str(tmp_path))
  oracle = JA.run_audit(world_run, judge="oracle", num_prefixes=6, num_rollouts=2,
                        out=str(tmp_path / "o.json"))
  out = str(tmp_path / "t.json")
  proc = subprocess.run([sys.executable, "-m", "earlyrl_jax.eval.judge_audit", f"--run={world_run}",
                         f"--teacher={teacher}", "--prefixes=6", "--rollouts=2", f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "rollout/rollout" in proc.stdout and f"wrote {out}" in proc.stdout
  a = json.load(open(out))
  assert a["judge"] == "teacher" and a["candidates"] == 3
  for axis, r in a["axes"].items():   # same seed, same candidates: the oracles order the same pairs
    assert r["pairs"] == oracle["axes"][axis]["pairs"]
    assert r["pairs"] == 0 or 0.0 <= r["agreement"] <= 1.0
  assert a["oracle_pair"] == oracle["oracle_pair"]
  # The oracles on factuality, the teacher on the rest: factuality agrees fully, quality as before.
  h = JA.run_audit(world_run, teacher_dir=teacher, oracle_axes="factuality", num_prefixes=6,
                   num_rollouts=2, out=str(tmp_path / "h.json"))
  assert h["judge"] == "teacher, oracles on factuality"
  assert h["axes"]["factuality"]["agreement"] in (None, 1.0)
  assert h["axes"]["quality"] == a["axes"]["quality"]


def test_a_run_without_rollouts_or_world_is_a_clear_error(world_run, tmp_path):
  import shutil
  run = str(tmp_path / "copy")
  shutil.copytree(world_run, run)
  cfg = json.load(open(os.path.join(run, "config.json")))
  cfg["sip"]["num_rollouts"] = 0
  json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
  with pytest.raises(ValueError, match="pass --rollouts"):
    JA.run_audit(run, judge="oracle", num_prefixes=2)
  cfg["world_dir"] = str(tmp_path / "nowhere")
  json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
  with pytest.raises(FileNotFoundError, match="validation_prefixes.jsonl"):
    JA.run_audit(run, judge="oracle", num_prefixes=2, num_rollouts=2)


def test_the_audit_reads_validation_and_refuses_test(world_run):
  """It informs choices: the test prefixes (the final table's) are refused, whatever the run."""
  with pytest.raises(ValueError, match="the test split scores the final table only"):
    JA.run_audit(world_run, judge="oracle", num_prefixes=2, split="test")
  g = JA.build_groups(world_run, num_prefixes=4, num_rollouts=2)
  val = [json.loads(l) for l in open(os.path.join(world_run, "world", "validation_prefixes.jsonl"))][:4]
  assert g.prefixes == [r["prefix"] for r in val]


def test_next_span_reference_is_the_documents_text_after_the_original(world_run):
  """'original': the judge's factuality reference is candidate 0 itself (untrimmed); 'next_span':
  the document's next tokens after it, in no candidate."""
  own = JA.build_groups(world_run, num_prefixes=5, num_rollouts=2)
  nxt = JA.build_groups(world_run, num_prefixes=5, num_rollouts=2, reference="next_span")
  val = [json.loads(l) for l in open(os.path.join(world_run, "world", "validation_prefixes.jsonl"))][:5]
  for g, row in enumerate(val):
    assert own.references[g].startswith(own.judged[g][0]) and row["rest"].startswith(own.references[g])
    ref = nxt.references[g]
    assert row["rest"].startswith(own.references[g] + ref)   # byte tokens: exact pieces
    assert (ref != "") == (len(row["rest"]) > len(own.references[g]))   # '' only where the document ends
    assert not ref or all(ref not in c for c in nxt.judged[g])
  assert any(nxt.references) and nxt.judged == own.judged   # same seed: same candidates, another reference


def test_pair_gap_weighs_the_dpo_pairs_oracle_gap_by_axis():
  from earlyrl_jax.eval import select_inference as SI
  a = {"judge_pair": {"chosen": {"quality": 0.9, "factuality": 0.8, "safety": 1.0},
                      "rejected": {"quality": 0.5, "factuality": 0.6, "safety": 0.0}}}
  assert SI.pair_gap(a, {"quality": 1.0, "factuality": 1.0, "safety": 2.0}) == pytest.approx((0.4 + 0.2 + 2.0) / 4)


def test_select_inference_judges_validation_with_every_setting(world_run, tmp_path):
  """Each setting reaches the judge (the teacher's info is swapped, then restored), every row is
  scored by its DPO pair's gap, rows come sorted; the oracles agree with their own pair labels."""
  from earlyrl_jax.eval import select_inference as SI
  from earlyrl_jax.eval.evaluate import _read
  from earlyrl_jax.teacher import teacher as Tch
  from earlyrl_jax.teacher.judges.oracle import OracleJudge
  from earlyrl_jax.world import KnowledgeBase, Oracles
  from tests.test_placement import write_tiny_teacher
  teacher = write_tiny_teacher(str(tmp_path))
  seen = []
  real = Tch.Teacher.judge
  def judge(self, *a, **k):
    from earlyrl_jax.embedded.recipe import settings_of
    seen.append(settings_of(self)["quality_mix"])
    return real(self, *a, **k)
  grid = {"recorded": {}, "quality surprise": {"quality_mix": [1.0, 1.0]}}
  import unittest.mock
  with unittest.mock.patch.object(Tch.Teacher, "judge", judge):
    res = SI.select([world_run], teacher_dir=teacher, num_prefixes=4, num_pairs=6, grid=grid, log=lambda m: None)
  assert seen == [[1.0, 0.0], [1.0, 1.0]]
  assert res["split"] == "validation" and {r["setting"] for r in res["rows"]} == set(grid)
  assert [r["score"] for r in res["rows"]] == sorted((r["score"] for r in res["rows"]), reverse=True)
  for r in res["rows"]:
    assert r["score"] == pytest.approx(r["runs"][0]["pair_gap"]) and set(r["pairs_agreement"]) == set(SI.AXES)
  world = os.path.join(world_run, "world")
  pairs = _read(os.path.join(world, "validation_pairs.jsonl"), 6)
  agree = SI.pair_labels_agreement(OracleJudge(Oracles(KnowledgeBase.load(world))), pairs)
  assert all(v in (None, 1.0) for v in agree.values()) and any(v == 1.0 for v in agree.values())
