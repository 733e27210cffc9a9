"""Metric writers without TensorFlow: metrics.jsonl, TensorBoard events (tensorboardX), an
optional W&B writer behind the same interface, Progress, and the rolled-back JSONL on resume."""
import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from earlyrl_jax.train import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_events(logdir):
  """(tag, step, value) of every scalar in the event files, read with tensorboardX's protobufs."""
  from tensorboardX.proto import event_pb2
  import struct
  out = []
  for fn in sorted(os.listdir(logdir)):
    if not fn.startswith("events.out.tfevents"):
      continue
    data = open(os.path.join(logdir, fn), "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out.append((v.tag, ev.step, v.simple_value))
  return out


def test_jsonl_and_tensorboard_events_without_tensorflow(tmp_path):
  log = M.MetricsLogger(str(tmp_path), num_steps=10, every_steps=5)
  log.write(5, {"loss": np.float32(2.5), "grad_norm": 1.0})
  log.write(10, {"loss": 2.0, "bad": float("nan")})
  log.write_text(10, {"sample": "a <b> c"})
  log.tick(10)
  log.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 5, "loss": 2.5, "grad_norm": 1.0}, {"step": 10, "loss": 2.0, "bad": "nan"}]
  events = _read_events(str(tmp_path / "tensorboard"))
  assert ("loss", 5, 2.5) in events and ("loss", 10, 2.0) in events
  assert "tensorflow" not in sys.modules


def test_importing_the_package_and_writers_pulls_no_tensorflow():
  code = ("import sys; import earlyrl_jax.train.metrics as M, earlyrl_jax.train.loop, "
          "earlyrl_jax.train.checkpoint; import tempfile; d = tempfile.mkdtemp(); "
          "l = M.MetricsLogger(d); l.write(1, {'x': 1.0}); l.close(); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorboard')))")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "[]"


def test_only_the_main_process_writes(tmp_path):
  log = M.MetricsLogger(str(tmp_path), is_main=False)
  log.write(1, {"loss": 1.0})
  log.write_text(1, {"t": "x"})
  log.close()
  assert os.listdir(tmp_path) == []


class _FakeRun:
  def __init__(self, **kw):
    self.init_kw, self.logged, self.finished = kw, [], False

  def log(self, data, step):
    self.logged.append((step, data))

  def finish(self):
    self.finished = True


def test_wandb_writer_behind_the_same_interface(tmp_path, monkeypatch):
  runs = []
  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
  fake.Html = lambda s: ("html", s)
  monkeypatch.setitem(sys.modules, "wandb", fake)
  log = M.MetricsLogger(str(tmp_path), wandb_project="earlyrl", wandb_config={"seed": 1})
  log.write(3, {"loss": 1.5})
  log.write_text(3, {"sample": "<x>"})
  log.close()
  (run,) = runs
  assert run.init_kw["project"] == "earlyrl" and run.init_kw["config"] == {"seed": 1}
  assert run.init_kw["resume"] == "allow"  # a resumed run appends to the same W&B run
  assert run.logged[0] == (3, {"loss": 1.5})
  assert run.logged[1] == (3, {"sample": ("html", "<pre>&lt;x&gt;</pre>")})
  assert run.finished
  assert os.path.exists(tmp_path / "metrics.jsonl")  # JSONL and TensorBoard are still written


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
  with pytest.raises(ImportError, match=r"metrics.wandb_project='x' needs the wandb package: "
                                        r"pip install -e '.\[wandb\]'"):
    M.MetricsLogger(str(tmp_path), wandb_project="x")


def test_progress_reports_rates_and_eta():
  t = [100.0]
  out = io.StringIO()
  p = M.Progress(num_steps=100, start_step=0, stream=out, clock=lambda: t[0])
  t[0] = 110.0
  p.add_tokens(5000)
  perf = p.report(10, {"loss": 3.25})
  assert perf["perf/steps_per_s"] == pytest.approx(1.0)
  assert perf["perf/tokens_per_s"] == pytest.approx(500.0)
  assert perf["perf/eta_s"] == pytest.approx(90.0)
  line = out.getvalue()
  assert "step 10/100" in line and "loss 3.2500" in line and "ETA 0:01:30" in line


def test_progress_prints_what_the_job_shows():
  out = io.StringIO()
  p = M.Progress(num_steps=10, start_step=0, stream=out)
  p.report(5, {"sip/win_share_rollout": 0.25, "data/skipped_malformed": 3.0, "loss": 1.5})
  line = out.getvalue()
  assert line.index("loss 1.5000") < line.index("sip/win_share_rollout 0.2500")
  assert "data/skipped_malformed 3 " in line  # skip counts on the console (issue 16)


def test_parameter_overview_is_tf_free():
  from tests.helpers import tiny_model
  from flax import nnx
  table = M.parameter_overview(nnx.state(tiny_model()))
  assert "blocks/0/attn/q" in table and "(64, 4, 16)" in table


def test_roll_back_moves_records_past_the_checkpoint(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    for s in (5, 10, 15):
      f.write(json.dumps({"step": s, "loss": 1.0}) + "\n")
    f.write('{"step": 2')  # torn line of a killed run
  assert M.roll_back_jsonl(path, 10) == 2
  assert [json.loads(l)["step"] for l in open(path)] == [5, 10]
  assert len(open(str(tmp_path / "metrics.rolled_back.jsonl")).readlines()) == 2
