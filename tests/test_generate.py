"""mode='generate': a trained run's newest checkpoint or an HF directory continues prompts.

One tiny run is trained in-process (2 steps, a 30k-parameter model, SentencePiece
trained on a small corpus) and shared by the tests of this module.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from earlyrl_jax import configs
from earlyrl_jax import generate as G
from earlyrl_jax.data.sources import DataError
from tests.helpers import set_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")

RUN_OVERRIDES = {
    "mode": "pretrain", "num_steps": 2, "log_every_steps": 1, "eval_every_steps": 0, "eval_world_prompts": 0,
    "data.corpus": "files", "data.tokenizer_vocab_size": 300, "model.vocab_size": 304,
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.n_kv_heads": 1,
    "model.head_dim": 16, "model.d_ff": 64, "model.max_seq_len": 64, "data.seq_len": 64,
    "data.batch_size": 8, "checkpoint.every_steps": 1,
}


def _corpus(path, n=300, seed=0):
  r = random.Random(seed)
  syl = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "ve", "da", "zu", "ho"]
  words = ["".join(r.choice(syl) for _ in range(r.randint(1, 3))) for _ in range(120)]
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(30)) + "."}) + "\n")
  return str(path)


def _gen_cfg(**generate):
  cfg = configs.load_config_file(TINY)
  cfg.mode = "generate"
  cfg.generate = configs.generate_section(**generate)
  cfg.mesh.data = 1  # a one-device mesh is enough for these prompts
  return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from earlyrl_jax.train import loop
  root = tmp_path_factory.mktemp("gen")
  cfg = set_fields(configs.load_config_file(TINY),
             dict(RUN_OVERRIDES, **{"data.train_files": _corpus(root / "corpus.jsonl")}))
  workdir = str(root / "run")
  loop.train(cfg, workdir)
  assert G.checkpoint_steps(workdir) == [1, 2]
  return workdir


def test_generate_from_run_jsonl_in_and_out(run_dir, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(json.dumps({"id": 7, "prompt": "ka lo mi"}) + "\n\n"
                     + json.dumps({"id": 8, "prompt": "ta po"}) + "\n"
                     + json.dumps({"id": 9, "prompt": "si ve " * 40}) + "\n")  # longer than the model
  out = tmp_path / "out.jsonl"
  cfg = _gen_cfg(prompt_file=str(prompts), output_file=str(out), num_samples=3, max_new_tokens=10,
                 temperature=0.8, top_k=50, top_p=0.9, batch_size=2)
  records = G.run_generate(cfg, run_dir)
  written = [json.loads(l) for l in out.read_text().splitlines()]
  assert written == records and [r["id"] for r in written] == [7, 8, 9]
  for r in written:
    assert len(r["completions"]) == len(r["completion_tokens"]) == len(r["finish_reasons"]) == 3
    assert all(0 <= n <= 10 for n in r["completion_tokens"])
    assert all(w in ("eos", "length") for w in r["finish_reasons"])
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  tok = SentencePieceTokenizer(os.path.join(run_dir, "tokenizer.model"))
  assert written[0]["prompt_tokens"] == 1 + len(tok.encode("ka lo mi"))  # BOS + prompt
  assert written[2]["prompt_truncated"] and written[2]["prompt_tokens"] == 64 - 10
  assert not written[0]["prompt_truncated"]


def test_generate_from_hf_directory_matches_the_run(run_dir, tmp_path):
  from flax import nnx
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer, save_tokenizer_files
  from earlyrl_jax.models import hf_io
  from earlyrl_jax.train import loop
  graphdef, params, _ = loop.load_run_params(run_dir)
  hf_dir = str(tmp_path / "hf")
  tok = SentencePieceTokenizer(os.path.join(run_dir, "tokenizer.model"))
  hf_io.save_pretrained(nnx.merge(graphdef, params), hf_dir, tok)
  save_tokenizer_files(tok, hf_dir)
  greedy = dict(prompt="ka lo mi", temperature=0.0, max_new_tokens=12, output_file="-")
  from_run = G.run_generate(_gen_cfg(**greedy), run_dir)
  from_hf = G.run_generate(_gen_cfg(model_path=hf_dir, **greedy), str(tmp_path / "work"))
  assert from_hf == from_run
  assert from_run[0]["completion_tokens"][0] > 0


def test_generate_command_line(run_dir, tmp_path):
  cfg_file = tmp_path / "gen_config.py"
  cfg_file.write_text(
      "from earlyrl_jax import configs\n"
      "def get_config():\n"
      f"  c = configs.load_config_file({TINY!r})\n"
      "  c.generate = configs.generate_section()\n"
      "  return c\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-m", "earlyrl_jax.main", f"--config={cfg_file}",
                      f"--workdir={run_dir}", "--config.mode=generate", "--config.generate.prompt=ka lo",
                      "--config.generate.num_samples=2", "--config.generate.max_new_tokens=8",
                      "--config.generate.output_file=-"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  [rec] = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
  assert rec["prompt"] == "ka lo" and len(rec["completions"]) == 2
  # The console script's path (earlyrl-generate = earlyrl_jax.generate:main): a workdir without
  # a run is one error line, exit code 2.
  empty = tmp_path / "empty"
  empty.mkdir()
  r = subprocess.run([sys.executable, "-m", "earlyrl_jax.generate", f"--config={cfg_file}",
                      f"--workdir={empty}", "--config.generate.prompt=ka"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and str(empty) in errors[0] and "Traceback" not in r.stderr
  assert os.listdir(empty) == []


def test_generate_errors_name_the_file_line_or_field(run_dir, tmp_path):
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text(open(os.path.join(run_dir, "config.json")).read())
  with pytest.raises(DataError, match="no checkpoint written yet"):
    G.run_generate(_gen_cfg(prompt="ka"), str(no_ckpt))
  with pytest.raises(DataError, match="no config.json"):
    G.run_generate(_gen_cfg(prompt="ka"), str(tmp_path))
  with pytest.raises(configs.ConfigError, match="generate.step: no checkpoint of step 5"):
    G.run_generate(_gen_cfg(prompt="ka", step=5), run_dir)
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(DataError, match=f"generate.prompt_file: {missing}: no such file"):
    G.run_generate(_gen_cfg(prompt_file=str(missing)), run_dir)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
  with pytest.raises(DataError, match=f"{bad}:2: malformed JSON"):
    G.run_generate(_gen_cfg(prompt_file=str(bad)), run_dir)
  wrong = tmp_path / "wrong.jsonl"
  wrong.write_text('{"text": "ok"}\n')
  with pytest.raises(DataError, match=f"{wrong}:1: no string field 'prompt'.*'text'"):
    G.run_generate(_gen_cfg(prompt_file=str(wrong)), run_dir)
  with pytest.raises(configs.ConfigError, match="generate.prompt"):
    configs.validate_fields(_gen_cfg())
  with pytest.raises(configs.ConfigError, match="generate.top_p"):
    configs.validate_fields(_gen_cfg(prompt="ka", top_p=0.0))
  with pytest.raises(configs.ConfigError, match="generate.max_new_tokens=64 leaves no room"):
    G.run_generate(_gen_cfg(prompt="ka", max_new_tokens=64), run_dir)
