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


def _cli(workdir, *args, timeout=120, config=TINY, missing=()):
  """The command line as a user runs it; `missing`: modules made unimportable (a lacking extra)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fast
  entry = ["-m", "earlyrl_jax.main"]
  if missing:
    entry = ["-c", "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in missing)
             + "from earlyrl_jax.main import cli\ncli(sys.argv)"]
  mode = ["--config.mode=pretrain"] if config == TINY else []
  return subprocess.run([sys.executable, *entry, f"--workdir={workdir}", f"--config={config}", *mode,
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


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


# --------------------------------------------------------------------------- every setting up front
# Issue 42: each numeric and cross-field setting of every mode is checked in the validation pass
# (configs.validate_fields: RANGES and check_settings), before anything is written, loaded or
# compiled; none of these may train (on nothing), compile first or show a traceback.

SMALL_WORLD = ["--config.world.num_train_documents=200", "--config.world.num_eval_documents=10",
               "--config.world.num_preference_pairs=5", "--config.world.num_rewrite_examples=5",
               "--config.world.num_factual_probes=5", "--config.world.num_unsafe_bait=3"]
# SIP judged by the world's oracles, no rewriter: no teacher to train, so a setting that slips
# through the validation pass shows as a run that starts (and, bounded by the timeout, fails).
SIP = ["--config.mode=sip", "--config.sip.judge=oracle", "--config.sip.rewrite=none", *SMALL_WORLD,
       "--config.num_steps=2", "--config.eval_world_prompts=0", "--config.eval_every_steps=0"]
AXES_OFF = [f"--config.sip.judge_axes.{a}=0" for a in ("quality", "safety", "factuality")]


@pytest.mark.parametrize("args,needles", [
    pytest.param([*SIP, "--config.sip.beta=-1"], ["sip.beta", "> 0", "-1"], id="beta-negative"),
    pytest.param([*SIP, "--config.sip.beta=0"], ["sip.beta", "> 0"], id="beta-zero"),
    pytest.param([*SIP, "--config.sip.num_rollouts=0"], ["sip.num_rollouts", ">= 1", "'dpo'"],
                 id="no-rollouts"),
    pytest.param([*SIP, "--config.sip.num_rollouts=-1"], ["sip.num_rollouts", ">= 0", "-1"],
                 id="rollouts-negative"),
    pytest.param([*SIP, "--config.sip.top_p=0"], ["sip.top_p", "(0, 1]"], id="top_p-zero"),
    pytest.param([*SIP, "--config.data.prefix_len=100"],
                 ["data.prefix_len + data.suffix_len = 100 + 32", "model.max_seq_len=128"],
                 id="windows-longer-than-the-model"),
    pytest.param([*SIP, *AXES_OFF], ["sip.judge_axes", "positive weight"], id="judge-axes-all-zero"),
    pytest.param(["--config.mode=sip", "--config.sip.judge=none", "--config.sip.rewrite=none"],
                 ["sip.judge='none'", "sip.rewrite='none'", "nothing to compare"],
                 id="no-judge-no-rewrite"),
    pytest.param(["--config.mode=sip", "--config.sip.judge=none"], ["sip.judge", "'rf_nll'"],
                 id="no-judge-dpo"),
    pytest.param(["--config.mode=report", "--config.report.num_seeds=0"], ["report.num_seeds", ">= 1"],
                 id="report-no-seeds"),
    pytest.param(["--config.mode=report", "--config.sip.num_rollouts=0"],
                 ["report method 'sip_dpo'", "sip.num_rollouts"], id="report-method-no-rollouts"),
    pytest.param(["--config.num_steps=0"], ["num_steps", ">= 1"], id="pretrain-zero-steps"),
])
def test_bad_setting_fails_in_the_validation_pass(tmp_path, args, needles):
  run = tmp_path / "run"
  line = _one_error(_cli(run, *args, timeout=90))
  for needle in needles:
    assert needle in line, line
  assert not run.exists()  # nothing written: no world, no tokenizer, no config.json


def _tiny(**fields):
  from tests.helpers import set_fields
  return set_fields(configs.load_config_file(TINY), fields)


@pytest.mark.parametrize("fields,needle", [
    ({"mode": "pretrain", "data.batch_size": -8}, "data.batch_size: must be an integer >= 1, got -8"),
    ({"mode": "pretrain", "data.seq_len": 10**7}, "data.seq_len: 10000000 exceeds model.max_seq_len"),
    ({"mode": "pretrain", "opt.b2": 1.0}, "opt.b2: must be a number in [0, 1), got 1.0"),
    ({"mode": "pretrain", "opt.eps": 0.0}, "opt.eps: must be a number > 0"),
    ({"mode": "pretrain", "opt.warmup_steps": -1}, "opt.warmup_steps"),
    ({"mode": "pretrain", "data.tokenizer": "byte", "model.vocab_size": 200},
     "model.vocab_size: 200 is too small for data.tokenizer='byte'"),
    ({"mode": "pretrain", "data.tokenizer_vocab_size": 4096},
     "data.tokenizer_vocab_size: 4096 exceeds model.vocab_size=1024"),
    ({"mode": "pretrain", "eval_batches": 0}, "eval_batches"),
    ({"mode": "pretrain", "data.max_consecutive_skips": 0}, "data.max_consecutive_skips"),
    ({"mode": "pretrain", "model.rope_theta": -1.0}, "model.rope_theta"),
    ({"mode": "pretrain", "world.myth_rate": 1.5}, "world.myth_rate: must be a number in [0, 1]"),
    ({"mode": "world", "world.num_train_documents": 0}, "world.num_train_documents"),
    ({"mode": "sip", "data.suffix_len": -4}, "data.suffix_len: must be an integer >= 1, got -4"),
    ({"mode": "sip", "sip.top_p": 1.5}, "sip.top_p: must be a number in (0, 1], got 1.5"),
    ({"mode": "sip", "sip.candidate_len": 80}, "data.prefix_len + sip.candidate_len = 64 + 80 = 144 exceeds"),
    ({"mode": "sip", "sip.judge_axes.safety": -1.0}, "sip.judge_axes.safety: must be a weight >= 0"),
    ({"mode": "sip", "sip.recipe": "rf_nll", "sip.num_rollouts": 0, "sip.rewrite": "none"},
     "sip.num_rollouts: sip.num_rollouts=0 with sip.rewrite='none' leaves the original alone"),
    ({"mode": "sip", "sip.lm_coef": 0.0, "sip.coef": 0.0}, "would train on nothing"),
    ({"mode": "sip", "sip.temperature": -0.5}, "sip.temperature: must be a number >= 0"),
    ({"mode": "sip", "data.window_pool_size": 0}, "data.window_pool_size"),
    ({"mode": "sip", "sip.judge_budget": -2}, "sip.judge_budget"),
    ({"mode": "sip", "sip.kl_coef": -0.1}, "sip.kl_coef"),
    ({"mode": "rewrite", "data.prefix_len": 0}, "data.prefix_len: must be an integer >= 1"),
    ({"mode": "rewrite", "rewrite_job.batch_size": 0}, "rewrite_job.batch_size"),
    ({"mode": "rewrite", "rewrite_job.judge": "teacher", "sip.judge_axes.quality": -1.0},
     "sip.judge_axes.quality"),
    ({"mode": "report", "report.steps": 0}, "report.steps"),
    ({"mode": "report", "report.eval_samples": 0}, "report.eval_samples"),
    ({"mode": "report", "report.methods": "nll,sip_dpoo"}, "report.methods: ['sip_dpoo'] unknown"),
])
def test_held_out_settings_name_field_and_range(fields, needle):
  with pytest.raises(configs.ConfigError) as e:
    configs.validate_fields(_tiny(**fields))
  assert needle in str(e.value)


def test_a_model_shape_left_unset_is_checked_once_it_is_filled():
  """A shape taken from elsewhere (None: e.g. from the checkpoint a run starts from) passes the
  field pass; validate() checks rows and windows against it once it is filled."""
  import ml_collections
  cfg = _tiny(mode="sip")
  cfg.model = ml_collections.ConfigDict({**cfg.model.to_dict(), "max_seq_len": None})
  configs.validate_fields(cfg)
  cfg.model.max_seq_len = 90  # what validate() does with a shape from the checkpoint
  with pytest.raises(configs.ConfigError, match=r"data.seq_len: 128 exceeds model.max_seq_len=90"):
    configs.validate(cfg, num_devices=1, process_count=1)


def test_the_teacher_job_settings_are_checked():
  cfg = configs.load_config_file(os.path.join(REPO, "configs", "teacher_tiny.py"))
  configs.validate_fields(cfg)
  for field, value, needle in (
      ("grpo.samples_per_input", 1, "teacher.grpo.samples_per_input: must be an integer >= 2"),
      ("sft.judge_share", 1.5, "teacher.sft.judge_share"),
      ("pretrain.seq_len", 512, "teacher.pretrain.seq_len: 512 exceeds model.max_seq_len=256"),
      ("policy.weak_steps", 500, "teacher.policy.weak_steps"),
      ("tokenizer_vocab_size", 4096, "teacher.tokenizer_vocab_size: 4096 exceeds"),
      ("inference.claim_floor", -1.0, "teacher.inference: claim_floor")):
    bad = cfg.copy_and_resolve_references()
    section = bad.teacher
    *parents, name = field.split(".")
    for p in parents:
      section = section[p]
    section[name] = value
    with pytest.raises(configs.ConfigError) as e:
      configs.validate_fields(bad)
    assert needle in str(e.value), (field, str(e.value))


def _outside(row) -> list:
  """Values just outside a RANGES row's range, on every side it has."""
  m = configs._BOUND_RE.match(row.allowed)
  if m:
    op, b = m.group(1), float(m.group(2))
    return [row.kind(b - 1) if op == ">=" else row.kind(b)]
  lo_kind, lo, hi, hi_kind = configs._INTERVAL_RE.match(row.allowed).groups()
  return [float(lo) - 0.5 if lo_kind == "[" else float(lo),
          float(hi) + 0.5 if hi_kind == "]" else float(hi)]


def test_every_range_rejects_what_it_says_and_takes_its_default():
  """Each RANGES row on the configs that carry its field: the shipped value passes; values just
  outside the range, a wrong type and NaN fail naming the range."""
  shipped = [configs.load_config_file(os.path.join(REPO, "configs", n)) for n in ("tiny.py", "teacher_tiny.py", "judge_train.py")]
  seen = set()
  for row in configs.RANGES:
    for cfg in shipped:
      value = configs._get(cfg, row.field, None)
      if value is None:
        continue
      seen.add(row.field)
      if row.modes is None or cfg.mode in row.modes:
        assert row.problem(value) is None, (row, value)
      for bad in _outside(row) + ["5", True, float("nan")]:
        msg = row.problem(bad)
        assert msg and row.allowed in msg and repr(bad) in msg, (row, bad, msg)
  assert seen == {r.field for r in configs.RANGES}, sorted({r.field for r in configs.RANGES} - seen)


# Numeric fields checked elsewhere (ModelConfig, generate_config, check_placement, the judge's
# inference settings, the teacher backends' check_config) or free by nature (seeds, thresholds
# that take any number).
_NOT_RANGED = ("seed", "world.seed", "model.", "generate.", "mesh.", "teacher.mesh.", "teacher.devices",
               "teacher.inference.", "sip.judge_axes.", "sip.rf_threshold", "teacher.max_len",
               "teacher.openai.")


def _numeric_leaves(node, prefix=""):
  for k, v in node.items():
    path = f"{prefix}{k}"
    if hasattr(v, "items"):
      yield from _numeric_leaves(v, path + ".")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield path


@pytest.mark.parametrize("name", ["tiny.py", "teacher_tiny.py", "midtrain.py", "pretrain.py",
                                  "judge_train.py"])
def test_every_numeric_field_of_the_shipped_configs_has_a_range(name):
  cfg = configs.load_config_file(os.path.join(REPO, "configs", name))
  ranged = {r.field for r in configs.RANGES}
  missing = [f for f in _numeric_leaves(cfg) if f not in ranged and not f.startswith(_NOT_RANGED)]
  assert not missing, f"{name}: numeric fields without a check in configs.RANGES: {missing}"


@pytest.mark.parametrize("name,mode", [("tiny.py", "report"), ("tiny.py", "sip"), ("tiny.py", "pretrain"),
                                       ("tiny.py", "rewrite"), ("midtrain.py", "sip"),
                                       ("pretrain.py", "pretrain"), ("teacher_tiny.py", "teacher"),
                                       ("judge_train.py", "judge_train")])
def test_shipped_configs_pass_without_warnings(name, mode, capsys):
  cfg = configs.load_config_file(os.path.join(REPO, "configs", name))
  cfg.mode = mode
  configs._WARNED.clear()
  configs.validate_fields(cfg)
  assert "warning:" not in capsys.readouterr().err


def test_unintended_settings_warn_once_and_the_run_goes_on(capsys):
  configs._WARNED.clear()
  cfg = _tiny(mode="sip", **{"sip.temperature": 0.0, "sip.num_rollouts": 4})
  configs.validate_fields(cfg)
  configs.validate_fields(cfg)  # the loop validates again: one warning, not two
  err = capsys.readouterr().err.splitlines()
  assert err == ["warning: sip.temperature=0 samples greedily: the sip.num_rollouts=4 rollouts of a "
                 "prefix are identical; use a temperature > 0 (paper: 1.0) or sip.num_rollouts=1"]
  configs.validate_fields(_tiny(mode="sip", **{"sip.judge": "none", "sip.recipe": "rf_nll"}))
  assert "rollouts are sampled and never used" in capsys.readouterr().err
  configs.validate_fields(_tiny(mode="sip", **{"sip.coef": 0.0}))
  assert "sip.coef=0 turns the recipe's term off" in capsys.readouterr().err
  # The report's own plain-NLL baseline (recipe off, nothing sampled) is no mistake.
  configs.validate_fields(_tiny(mode="sip", **{"sip.coef": 0.0, "sip.num_rollouts": 0,
                                               "sip.judge": "none", "sip.rewrite": "none"}))
  assert capsys.readouterr().err == ""


def test_warning_is_one_stderr_line_before_a_later_error(tmp_path):
  run = tmp_path / "run"
  r = _cli(run, *SIP, "--config.sip.temperature=0", "--config.data.corpus=files",
           f"--config.data.train_files={tmp_path}/none-*.jsonl", timeout=60)
  line = _one_error(r)
  assert "data.train_files" in line
  warnings = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and "sip.temperature=0" in warnings[0]


# --------------------------------------------------------------------------- model directories
# A teacher or policy directory that cannot be used is one `error:` line naming the field and the
# file, found before any weight is read and before anything is written to the workdir.

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 384,
         "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 64,
         "max_position_embeddings": 128, "hidden_act": "silu", "tie_word_embeddings": True}


def _hf_dir(path, *, config=LLAMA, weights="truncated", tokenizer=True):
  """A fake HF model directory: config.json (a dict, or raw text), model.safetensors
  ('ok': a valid file of one tensor, 'truncated': cut in half, 'empty': 0 bytes), tokenizer.json."""
  import numpy as np
  from safetensors.numpy import save_file
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
  st = path / "model.safetensors"
  save_file({"model.embed_tokens.weight": np.zeros((384, 32), np.float32)}, str(st))
  data = st.read_bytes()
  st.write_bytes({"ok": data, "truncated": data[:len(data) // 2], "empty": b""}[weights])
  if tokenizer:
    from tokenizers import Tokenizer, models  # the [hf] extra, installed for the tests
    Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(str(path / "tokenizer.json"))
  return str(path)


# SIP with the teacher as judge; the small world keeps a run that slips through short.
TEACHER_SIP = ["--config.mode=sip", "--config.sip.rewrite=none", *SMALL_WORLD]


@pytest.mark.parametrize("make,args,needles", [
    pytest.param(lambda d: _hf_dir(d, config={"hidden_size": 8}), TEACHER_SIP,
                 ["config.json: model_type None is not supported", "llama"], id="not-a-model-config"),
    pytest.param(lambda d: _hf_dir(d, config='{"model_type": "llama",'), TEACHER_SIP,
                 ["config.json:1: not JSON", "at column"], id="config-not-json"),
    pytest.param(lambda d: _hf_dir(d), TEACHER_SIP,
                 ["model.safetensors: not a readable safetensors file, truncated or corrupt"],
                 id="truncated-safetensors"),
    pytest.param(lambda d: _hf_dir(d, weights="empty"), TEACHER_SIP,
                 ["model.safetensors: not a readable safetensors file"], id="empty-safetensors"),
    pytest.param(lambda d: str(d / "nope"), TEACHER_SIP, ["teacher.path", "nope: no such directory"],
                 id="teacher-missing"),
    pytest.param(lambda d: (d.mkdir(), (d / "model.safetensors").write_bytes(b""), str(d / "model.safetensors"))[-1],
                 TEACHER_SIP, ["teacher.path", "model.safetensors is a file"], id="teacher-is-a-file"),
    pytest.param(lambda d: _hf_dir(d, tokenizer=False), ["--config.mode=pretrain", *SMALL_WORLD],
                 ["init.params_from", "truncated or corrupt"], id="policy-truncated"),
])
def test_unusable_model_directory_is_one_line_before_anything_is_written(tmp_path, make, args, needles):
  path = make(tmp_path / "model")
  field = ("generate.model_path" if "--config.mode=generate" in args else
           "teacher.path" if args is TEACHER_SIP else "init.params_from")
  run = tmp_path / "run"
  line = _one_error(_cli(run, *args, f"--config.{field}={path}", timeout=90))
  for needle in needles:
    assert needle in line, line
  assert not run.exists()


@pytest.mark.parametrize("make,fields,needles", [
    (lambda d: _hf_dir(d, config={**LLAMA, "model_type": "gpt2"}), {"teacher.path": None},
     ["teacher.path: ", "model_type 'gpt2' is not supported (supported: llama, mistral, qwen2)"]),
    (lambda d: _hf_dir(d, config={k: v for k, v in LLAMA.items() if k != "hidden_size"}),
     {"teacher.path": None}, ["config.json: no field 'hidden_size'"]),
    (lambda d: _hf_dir(d, config=[1, 2]), {"teacher.path": None}, ["holds a JSON list, not an object"]),
    (lambda d: _hf_dir(d, weights="ok", tokenizer=False), {"teacher.path": None},
     ["teacher.path: ", "no tokenizer.json or tokenizer.model"]),
    (lambda d: (d.mkdir(), str(d))[-1], {"teacher.path": None},
     ["teacher.path: ", "neither an embedded teacher", "nor an HF model directory"]),
    (lambda d: str(d / "nope"), {"mode": "pretrain", "init.params_from": None},
     ["init.params_from: ", "nope: no such directory"]),
    (lambda d: _hf_dir(d, config="not json"),
     {"mode": "generate", "generate.prompt": "hi", "generate.model_path": None},
     ["generate.model_path: ", "config.json:1: not JSON (Expecting value at column 1)"]),
    (lambda d: str(d / "tok.json"), {"mode": "pretrain", "data.tokenizer": "hf", "data.tokenizer_path": None},
     ["data.tokenizer_path: ", "tok.json: no such file"]),
    (lambda d: (d.mkdir(), (d / "tok.json").write_text("{}"), str(d / "tok.json"))[-1],
     {"mode": "pretrain", "data.tokenizer": "hf", "data.tokenizer_path": None},
     ["tok.json: not a readable tokenizer.json"]),
    (lambda d: (d.mkdir(), (d / "sp.model").write_text("junk"), str(d / "sp.model"))[-1],
     {"mode": "pretrain", "data.tokenizer_path": None}, ["sp.model: not a readable SentencePiece model"]),
    (lambda d: (_hf_dir(d, weights="ok"), (d / "tokenizer_config.json").write_text("{oops"), str(d))[-1],
     {"teacher.path": None}, ["tokenizer_config.json:1: not JSON"]),
])
def test_check_models_names_field_and_file(tmp_path, make, fields, needles):
  """More model directories a user may point at, checked in-process (the command line above
  shows that these errors are one line)."""
  from earlyrl_jax.main import _user_errors
  path = make(tmp_path / "model")
  cfg = _tiny(**{"mode": "sip", "sip.rewrite": "none",
                 **{k: (path if v is None else v) for k, v in fields.items()}})
  with pytest.raises(_user_errors()) as e:
    configs.check_models(cfg)
  for needle in needles:
    assert needle in str(e.value), str(e.value)


def test_a_good_teacher_directory_passes_the_check(tmp_path):
  configs.check_models(_tiny(mode="sip", **{"teacher.path": _hf_dir(tmp_path / "t", weights="ok")}))


def test_missing_hf_extra_is_named_before_any_weight_is_read(tmp_path):
  # The weights here are truncated: an error about them would mean they were read first.
  teacher = _hf_dir(tmp_path / "teacher")
  run = tmp_path / "run"
  line = _one_error(_cli(run, *TEACHER_SIP, f"--config.teacher.path={teacher}", missing=("tokenizers",),
                         timeout=90))
  assert "teacher.path" in line and "[hf] extra" in line and "pip install -e '.[hf]'" in line
  assert not run.exists()
  line = _one_error(_cli(run, "--config.data.tokenizer=hf", f"--config.data.tokenizer_path={teacher}",
                         missing=("tokenizers",), timeout=90))
  assert "data.tokenizer_path" in line and "[hf] extra" in line


def test_model_loaders_raise_checkpoint_errors_naming_the_file(tmp_path):
  """Notebooks call the loaders directly: the same errors, one class (errors.CheckpointError)."""
  from earlyrl_jax.errors import CheckpointError
  from earlyrl_jax.models import hf_io
  truncated = _hf_dir(tmp_path / "a")
  with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file") as e:
    hf_io.load_model(truncated)
  assert e.value.__cause__ is None and e.value.__suppress_context__  # one error, not a chain
  with pytest.raises(CheckpointError, match=r"config.json:1: not JSON \(Expecting value at column 1\)"):
    hf_io.read_hf_config(_hf_dir(tmp_path / "b", config="oops"))
  with pytest.raises(CheckpointError, match="Unterminated string starting at column"):
    hf_io.read_hf_config(_hf_dir(tmp_path / "c", config='{"model_type": "lla'))
  assert isinstance(hf_io.UnsupportedCheckpointError("x"), CheckpointError)


def test_load_teacher_says_a_missing_path_is_missing(tmp_path):
  from earlyrl_jax.teacher.teacher import load_teacher
  with pytest.raises(FileNotFoundError, match="no such teacher directory"):
    load_teacher(str(tmp_path / "nope"))
  (tmp_path / "f").write_text("x")
  with pytest.raises(FileNotFoundError, match="is a file, not a teacher directory"):
    load_teacher(str(tmp_path / "f"))


# --------------------------------------------------------------------------- what a stop returns
# A run stopped by SIGTERM (or SIGUSR1) writes its checkpoint, says "saved step N" and exits with
# errors.STOPPED (75, EX_TEMPFAIL), which the launchers requeue on; a finished run exits 0.


def _popen(workdir, *args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen([sys.executable, "-m", "earlyrl_jax.main", f"--workdir={workdir}",
                           f"--config={TINY}", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for(path_fn, proc, what, seconds=240):
  import time
  deadline = time.time() + seconds
  while not path_fn():
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


def test_sigterm_saves_says_the_step_and_exits_75_then_the_rerun_finishes_with_0(tmp_path):
  import signal
  from earlyrl_jax.errors import STOPPED
  train = _corpus(tmp_path / "train.jsonl", n=200)
  run = tmp_path / "run"
  args = ["--config.mode=pretrain", "--config.data.corpus=files", f"--config.data.train_files={train}",
          *SMALL, "--config.checkpoint.every_steps=100000"]
  p = _popen(run, *args, "--config.num_steps=100000")
  metrics = run / "metrics.jsonl"
  _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, p, "two steps")
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=120)[0]
  assert p.returncode == STOPPED == 75, out[-3000:]
  assert "Traceback" not in out
  saved = [int(d) for d in os.listdir(run / "checkpoints") if d.isdigit()]
  assert len(saved) == 1 and 2 <= saved[0] < 100000
  assert f"preempted (SIGTERM): saved step {saved[0]} in {run / 'checkpoints'}" in out
  # The rerun resumes from that step and, finished, exits 0.
  r = _cli(run, *args, f"--config.num_steps={saved[0] + 1}", timeout=180)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from step {saved[0]}" in r.stdout


def test_sigterm_outside_the_training_loop_exits_75_too(tmp_path):
  """World generation (like tokenizer or teacher training) has no step to save: the run still
  ends with the code a scheduler requeues, and says so in one line."""
  import signal
  from earlyrl_jax.errors import STOPPED
  run = tmp_path / "run"
  p = _popen(run, "--config.mode=world", "--config.world.num_train_documents=200000")
  _wait_for(run.exists, p, "the world job to start writing")  # it takes ~40 s if not stopped
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=120)[0]
  assert p.returncode == STOPPED, out[-3000:]
  assert "Traceback" not in out
  assert "stopped by SIGTERM outside a training step" in out


def test_a_stop_while_waiting_for_data_saves_and_says_so(tmp_path, capsys):
  """The data-wait path (a producer blocked on input: SIP's teacher, a slow file system) saves the
  last trained step and prints the same "saved step N" line; SIGUSR1 stops like SIGTERM."""
  import signal
  import threading
  import time
  from earlyrl_jax.train import loop
  from tests.test_train import tiny_cfg
  cfg = tiny_cfg(**{"num_steps": 50, "data.batch_size": 8, "data.seq_len": 32, "model.max_seq_len": 32,
                    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.n_kv_heads": 1,
                    "model.head_dim": 16, "model.d_ff": 64, "checkpoint.every_steps": 100,
                    "log_every_steps": 1})
  run = loop.setup(cfg, str(tmp_path / "run"))
  job = loop.pretrain_job(run)
  produce = job.next_batch

  def blocked_after_two(state, step):
    if step == 2:  # the stop arrives while this producer waits
      threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
      time.sleep(60)
      raise AssertionError("the stop signal did not interrupt the data wait")
    return produce(state, step)

  job.next_batch = blocked_after_two
  out = loop.train_loop(run, job)
  printed = capsys.readouterr().out
  assert out["preempted"] and int(out["state"].step) == 2
  assert "SIGUSR1 while waiting for data for step 3" in printed
  assert f"preempted (SIGUSR1): saved step 2 in {tmp_path / 'run' / 'checkpoints'}" in printed
  assert sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()) == [2]
  assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is put back
