"""Mistakes a user makes end with one `error:` line and exit code 2, before anything slow.

Each case runs the real command line as a subprocess (one CPU device, tiny settings)
and checks: exit code 2, exactly one line starting with `error:` on stderr naming the
field or path, no traceback, and nothing already in the workdir removed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from earlyrl_jax import configs
from earlyrl_jax.data import sources as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")

# A model and batch small enough that a subprocess compiles its step in a few seconds.
SMALL = ["--config.data.tokenizer=byte", "--config.model.vocab_size=384", "--config.model.d_model=32",
         "--config.model.n_layers=1", "--config.model.n_heads=2", "--config.model.n_kv_heads=1",
         "--config.model.head_dim=16", "--config.model.d_ff=64", "--config.model.max_seq_len=32",
         "--config.data.seq_len=32", "--config.data.batch_size=2", "--config.eval_world_prompts=0",
         "--config.eval_every_steps=0", "--config.log_every_steps=1"]


def _cli(workdir, *args, timeout=120):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fast
  return subprocess.run([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={workdir}",
                         f"--config={TINY}", "--config.mode=pretrain", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _one_error(r) -> str:
  """The single `error:` line of a run that must have failed cleanly."""
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  return errors[0]


def _corpus(path, n=40, field="text"):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({field: f"document {i}: " + "the cat sat on the mat. " * 4}) + "\n")
  return str(path)


# --------------------------------------------------------------------------- command line


def test_unknown_config_field_is_one_line_naming_field_and_known_ones(tmp_path):
  line = _one_error(_cli(tmp_path / "run", "--config.model.nonexistent=3"))
  assert "--config.model.nonexistent: unknown field" in line
  assert "d_model" in line and "n_layers" in line  # the known fields of that section
  line = _one_error(_cli(tmp_path / "run", "--config.model.d_modl=3"))
  assert "did you mean 'model.d_model'" in line
  assert not (tmp_path / "run").exists()


def test_bad_enum_value_fails_before_anything_is_written(tmp_path):
  line = _one_error(_cli(tmp_path / "run", "--config.data.on_error=skp"))
  assert "data.on_error" in line and "'skp'" in line and "'skip'" in line
  assert not (tmp_path / "run").exists()  # no world generated, no tokenizer trained


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "notes.txt"
  f.write_text("keep me")
  line = _one_error(_cli(f, "--config.num_steps=0"))
  assert str(f) in line and "--workdir" in line
  line = _one_error(_cli(f / "sub", "--config.num_steps=0"))
  assert str(f) in line
  assert f.read_text() == "keep me"


def test_unknown_mode_names_the_known_ones(tmp_path):
  # A mode this version lacks (as 'sip' was before it landed) says so and lists the modes.
  from earlyrl_jax.modes import MODES
  line = _one_error(_cli(tmp_path / "run", "--config.mode=sft", timeout=60))
  assert "mode: 'sft' is not a mode of this version" in line
  for known in MODES:
    assert known in line
  assert not (tmp_path / "run").exists()


def test_bad_globs_fail_before_tokenizer_and_compile(tmp_path):
  train = _corpus(tmp_path / "train.jsonl")
  line = _one_error(_cli(tmp_path / "a", "--config.data.corpus=files",
                         f"--config.data.train_files={tmp_path}/nope-*.jsonl"))
  assert "data.train_files" in line and "nope-*.jsonl" in line
  line = _one_error(_cli(tmp_path / "b", "--config.data.corpus=files", f"--config.data.train_files={train}",
                         f"--config.data.eval_files={tmp_path}/held-*.jsonl"))
  assert "data.eval_files" in line and "held-*.jsonl" in line
  assert not (tmp_path / "b" / "tokenizer.model").exists()


def test_wrong_text_field_with_skip_fails_up_front_naming_file_line_and_field(tmp_path):
  # Today's behaviour was a silent busy loop: every record skipped, no batch ever filled.
  train = _corpus(tmp_path / "train.jsonl", field="body")
  line = _one_error(_cli(tmp_path / "run", "--config.data.corpus=files", f"--config.data.train_files={train}",
                         "--config.data.on_error=skip", timeout=60))
  assert f"{train}:1" in line and "'text'" in line and "data.text_field" in line
  assert "'body'" in line  # what the records do have
  assert not (tmp_path / "run" / "tokenizer.model").exists()


def test_nonfinite_stop_is_one_line_keeps_checkpoint_and_hint_fits_config(tmp_path):
  train = _corpus(tmp_path / "train.jsonl")
  run = tmp_path / "run"
  r = _cli(run, "--config.data.corpus=files", f"--config.data.train_files={train}", *SMALL,
           "--config.num_steps=6", "--config.opt.learning_rate=1e30", "--config.opt.warmup_steps=0",
           "--config.checkpoint.every_steps=1", "--config.opt.grad_clip=1.0")
  line = _one_error(r)
  assert "non-finite" in line and "step" in line
  assert "enable opt.grad_clip" not in line  # it is on
  assert "opt.learning_rate" in line
  assert (run / "config.json").exists() and (run / "metrics.jsonl").exists()
  kept = [d for d in os.listdir(run / "checkpoints") if d.isdigit()]
  assert f"last good checkpoint: step {max(map(int, kept))}" in line


# --------------------------------------------------------------------------- in-process checks


def test_every_enum_field_is_validated():
  cfg = configs.load_config_file(TINY)
  configs.validate_fields(cfg)
  for field in configs.ENUM_FIELDS:
    section, name = field.split(".")
    if section not in cfg or name not in cfg[section]:
      continue
    bad = cfg.copy_and_resolve_references()
    bad[section][name] = "nonsense"
    with pytest.raises(configs.ConfigError, match=field.replace(".", r"\.")):
      configs.validate_fields(bad)


def test_oracle_axes_must_be_judge_axes():
  cfg = configs.load_config_file(TINY)
  assert configs.oracle_axes(cfg) == []
  cfg.sip.oracle_axes = "factuality, safety"
  assert configs.oracle_axes(cfg) == ["factuality", "safety"]
  cfg.sip.oracle_axes = "factuality,fluency"
  with pytest.raises(configs.ConfigError, match=r"sip\.oracle_axes: \['fluency'\]"):
    configs.validate_fields(cfg)


def test_nonfinite_hint_follows_the_config():
  cfg = configs.load_config_file(TINY)
  cfg.opt.grad_clip = 1.0
  assert "enable opt.grad_clip" not in configs.nonfinite_hint(cfg)
  cfg.opt.grad_clip = 0.0
  assert "enable opt.grad_clip" in configs.nonfinite_hint(cfg)


def test_preflight_names_glob_file_line_and_field(tmp_path, jsonl_file):
  good = jsonl_file([{"text": "fine"}] * 3, name="good.jsonl")
  with pytest.raises(S.DataError, match=r"data.eval_files: no files match .*missing-\*"):
    S.preflight(f"{good},{tmp_path}/missing-*.jsonl", field="data.eval_files")
  bad = jsonl_file([{"text": "fine"}, '{"text": oops}'], name="bad.jsonl")
  with pytest.raises(S.DataError, match=f"{bad}:2: malformed JSON"):
    S.preflight(bad)
  S.preflight(bad, on_error="skip")  # one usable record is enough when skipping
  wrong = jsonl_file([{"body": "x"}] * 3, name="wrong.jsonl")
  with pytest.raises(S.DataError, match=f"{wrong}:1: record has no string field 'text'"):
    S.preflight(wrong)
  with pytest.raises(S.DataError, match=r"none of the first 3 records .*missing_field=3"):
    S.preflight(wrong, on_error="skip")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(S.DataError, match="hold no records"):
    S.preflight(str(empty))


def test_check_data_covers_eval_files(tmp_path, jsonl_file):
  cfg = configs.load_config_file(TINY)
  cfg.data.corpus = "files"
  cfg.data.train_files = jsonl_file([{"text": "fine"}])
  cfg.data.eval_files = str(tmp_path / "held-*.jsonl")
  with pytest.raises(S.DataError, match="data.eval_files"):
    configs.check_data(cfg)
  cfg.data.eval_files = ""
  configs.check_data(cfg)


def test_replaced_non_utf8_is_counted_not_skipped(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"text": "caf\xe9 au lait"}\n{"text": "plain"}\n')
  src = S.JsonlSource([str(path)])
  text, status = S.parse_document(src[0], "json", S.ParseOptions())
  assert status == S.REPLACED_NON_UTF8 and text == "caf\ufffd au lait"
  assert S.STATUS_NAMES[status] == "replaced_non_utf8"
  assert status in S.USABLE_STATUSES and status not in S.SKIP_STATUSES
  assert S.parse_document(src[1], "json", S.ParseOptions())[1] == S.OK
  assert S.parse_document(src[0], "json", S.ParseOptions(encoding_errors="skip"))[1] == S.NON_UTF8
  report = S.preflight(str(path))
  assert report.status_counts["replaced_non_utf8"] == 1 and report.status_counts["ok"] == 1
  with pytest.raises(S.DataError, match=f"{path}:1: invalid UTF-8"):
    S.preflight(str(path), encoding_errors="raise")
