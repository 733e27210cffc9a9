"""Two local processes as two hosts (gloo collectives on CPU): the --distributed path of the
main job, per-host data slices, multi-process checkpoints and host-0-only metrics."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(argv, port, pid, local_devices=1):
  """`python *argv` as host `pid` of 2 (`local_devices` CPU devices each, coordinator on 127.0.0.1)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if local_devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  env.update(EARLYRL_COORDINATOR=f"127.0.0.1:{port}", EARLYRL_NUM_PROCESSES="2",
             EARLYRL_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# A small world and byte tokenizer: the 2-host runs start in seconds.
def _assert_all_succeeded(procs, logs) -> None:
  """Every host exited 0; otherwise show every host's log (the host that fails first is often
  only the one that noticed another host's crash)."""
  codes = [p.returncode for p in procs]
  assert codes == [0] * len(procs), "\n".join(
      f"--- process {i} (exit {c}) ---\n{log}" for i, (c, log) in enumerate(zip(codes, logs)))


SMALL_RUN = ["--config.mode=pretrain", "--config.data.tokenizer=byte", "--config.model.vocab_size=384",
             "--config.world.num_train_documents=200", "--config.world.num_eval_documents=10",
             "--config.world.num_preference_pairs=5", "--config.world.num_rewrite_examples=5",
             "--config.world.num_factual_probes=5", "--config.world.num_unsafe_bait=3"]


def _main_on_two_hosts(workdir: str, args: list[str], local_devices: int = 1):
  """`python -m earlyrl_jax.main --distributed` on two local hosts with the tiny config."""
  port = _free_port()
  argv = ["-m", "earlyrl_jax.main", "--distributed", f"--workdir={workdir}",
          "--config=" + os.path.join(REPO, "configs", "tiny.py"), *SMALL_RUN, *args]
  return [_spawn(argv, port, pid, local_devices) for pid in range(2)]


@pytest.mark.slow
def test_two_process_pretraining(tmp_path):
  workdir = str(tmp_path / "run")
  procs = _main_on_two_hosts(workdir, [
      "--config.num_steps=6", "--config.eval_world_prompts=4", "--config.log_every_steps=2",
      "--config.eval_every_steps=0", "--config.checkpoint.every_steps=3",
      "--config.data.batch_size=8", "--config.data.seq_len=64"])
  logs = [p.communicate(timeout=300)[0] for p in procs]
  _assert_all_succeeded(procs, logs)
  assert "process 0/2" in logs[0] and "process 1/2" in logs[1]
  assert "step 6/6" in logs[0] and "step 6/6" not in logs[1]  # only host 0 reports
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
  assert "world/false_claim_rate" in records[-1]  # the sampler ran across both processes
  data_iter = os.path.join(workdir, "checkpoints", "6", "data_iter")
  states = sorted(f for f in os.listdir(data_iter) if f.endswith(".json"))
  assert states == ["process_0-of-2.json", "process_1-of-2.json"]
  s0, s1 = (json.load(open(os.path.join(data_iter, f))) for f in states)
  assert s0 != s1  # each host iterates its own slice of the corpus


# ----------------------------------------------------------------------------- fast 2-process checks

_DATA_WORKER = r'''
import json, os, re, sys
from earlyrl_jax.parallel import distributed
distributed.initialize()
import jax
from ml_collections import ConfigDict
from earlyrl_jax.data import pipeline as PL, sources as S, tokenizer as TK
cfg = ConfigDict(dict(format="jsonl", train_files=sys.argv[1], text_field="text", text_split="file",
                      on_error="raise", encoding_errors="replace", min_doc_tokens=2, shuffle=True,
                      num_epochs=1, worker_count=0))
tok = TK.ByteTokenizer()
host = dict(process_index=jax.process_index(), process_count=jax.process_count())
# The documents this host reads in one epoch (exact: by record index, after shuffling).
src = S.make_source("jsonl", sys.argv[1])
docs = PL.document_dataset(src, PL.tokenize_fn(cfg, tok, src.kind), seed=0, num_epochs=1, **host)
seen = [int(d["index"]) for d in docs]
# What the training batches of this host contain (markers cut by a row boundary are missed).
ds = PL.make_lm_dataset(cfg, tok, seq_len=64, host_batch_size=2, seed=0, **host)
packed = []
for batch in ds:
  for row in batch["tokens"]:
    packed += [int(m) for m in re.findall(r"<doc(\d+)>", tok.decode([t for t in row.tolist() if t > 2]))]
print("SEEN", json.dumps(seen), flush=True)
print("PACKED", json.dumps(packed), flush=True)
'''

_PREEMPT_WORKER = r'''
import os, sys, time
from earlyrl_jax.parallel import distributed
distributed.initialize()
import jax, numpy as np
from earlyrl_jax.train.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1], every_steps=1000, async_save=False)
print("READY", os.getpid(), flush=True)
with ck.watch_preemption():
  for step in range(1, 2000):
    time.sleep(0.01 if jax.process_index() == 0 else 0.02)   # hosts run at different speeds
    if ck.reached_preemption(step):
      ck.save(step, {"w": np.full(4, step, np.float32)}, force=True)
      print("STOP", step, flush=True)
      break
  else:
    print("NEVER", flush=True)
ck.close()
'''



_GATHER_WORKER = r'''
import json, time
from earlyrl_jax.parallel import distributed
distributed.initialize()
import jax
from earlyrl_jax.models.scoring import agree_max, lockstep_chunks
me = jax.process_index()
if me == 1:
  time.sleep(1.0)  # the hosts arrive apart: the first one waits, nothing is lost
rows = [distributed.host_allgather([me, 10 * me + k, -k]).tolist() for k in range(3)]
empty = distributed.host_allgather([]).shape
chunks = len(lockstep_chunks(5 if me == 0 else 17, 4))   # the host with most rows decides: 5 calls
client = distributed._coordination_client()
try:   # call 0's key was deleted by this process once every process had read it
  client.key_value_try_get(f"{distributed._KEY_PREFIX}/0/{me}")
  deleted = False
except Exception:
  deleted = True
print("OUT", json.dumps(dict(rows=rows, empty=list(empty), chunks=chunks, deleted=deleted,
                             most=agree_max(me, 7 - me))), flush=True)
'''


def test_two_processes_read_disjoint_documents_that_cover_the_data(tmp_path):
  n = 37  # not a multiple of the host count
  data = tmp_path / "d.jsonl"
  with open(data, "w") as f:
    for i in range(n):
      f.write(json.dumps({"text": f"<doc{i}> " + "some words " * (i % 4 + 1)}) + "\n")
  script = tmp_path / "worker.py"
  script.write_text(_DATA_WORKER)
  port = _free_port()
  procs = [_spawn([str(script), str(data)], port, pid) for pid in range(2)]
  logs = [p.communicate(timeout=120)[0] for p in procs]
  seen, packed = [], []
  _assert_all_succeeded(procs, logs)
  for log in logs:
    seen.append(json.loads(log.split("SEEN ", 1)[1].splitlines()[0]))
    packed.append(json.loads(log.split("PACKED ", 1)[1].splitlines()[0]))
  a, b = seen
  assert len(a) == len(set(a)) and len(b) == len(set(b))  # one epoch: no document twice
  assert not set(a) & set(b)                              # disjoint slices
  assert set(a) | set(b) == set(range(n))                 # together: every document
  assert abs(len(a) - len(b)) <= 1
  assert a != sorted(a)                                   # shuffled within the host's slice
  # The packed training batches carry only the host's own documents, most of them.
  for mine, docs in zip(packed, seen):
    assert set(mine) <= set(docs)
    assert len(set(mine)) >= len(docs) // 2


def test_two_processes_gather_host_values_without_a_device_program(tmp_path):
  """`host_allgather` (the key-value store): rows in process order, hosts arriving apart,
  the bucket/chunk agreements built on it, and its keys cleaned up behind it."""
  script = tmp_path / "worker.py"
  script.write_text(_GATHER_WORKER)
  port = _free_port()
  procs = [_spawn([str(script)], port, pid) for pid in range(2)]
  logs = [p.communicate(timeout=120)[0] for p in procs]
  _assert_all_succeeded(procs, logs)
  outs = [json.loads(log.split("OUT ", 1)[1].splitlines()[0]) for log in logs]
  for out in outs:
    assert out["rows"] == [[[0, k, -k], [1, 10 + k, -k]] for k in range(3)]
    assert out["empty"] == [2, 0]
    assert out["chunks"] == 5
    assert out["deleted"] is True
    assert out["most"] == [1, 7]


def test_two_processes_agree_on_the_preemption_step(tmp_path):
  """SIGTERM to one host: both hosts stop and save at the same step (JAX's preemption sync)."""
  import signal
  import time
  script = tmp_path / "worker.py"
  script.write_text(_PREEMPT_WORKER)
  ckdir = str(tmp_path / "ck")
  port = _free_port()
  procs = [_spawn([str(script), ckdir], port, pid) for pid in range(2)]
  first = procs[1].stdout.readline()
  while first and not first.startswith("READY"):
    first = procs[1].stdout.readline()
  assert first.startswith("READY"), first
  time.sleep(1.0)
  procs[1].send_signal(signal.SIGTERM)  # the non-main host is the one preempted
  logs = [p.communicate(timeout=120)[0] for p in procs]
  _assert_all_succeeded(procs, logs)
  stops = [int(log.split("STOP ", 1)[1].split()[0]) for log in logs]
  assert stops[0] == stops[1], stops
  assert os.path.isdir(os.path.join(ckdir, str(stops[0])))


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_the_same_checkpoint(tmp_path):
  """The training loop on two hosts: the preempted host and the other one save one step and
  exit with 75 (errors.STOPPED, which the launchers requeue on)."""
  import signal
  import time
  workdir = str(tmp_path / "run")
  procs = _main_on_two_hosts(workdir, [
      "--config.num_steps=5000", "--config.eval_world_prompts=0", "--config.log_every_steps=2",
      "--config.eval_every_steps=0", "--config.checkpoint.every_steps=100000",
      "--config.data.batch_size=8", "--config.data.seq_len=64"])
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2):
    assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
    assert time.time() < deadline, "no training steps logged"
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  try:
    logs = [p.communicate(timeout=120)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError("a host kept stepping after the other was preempted (hang)")
  codes = [p.returncode for p in procs]
  assert codes == [75, 75], "\n".join(f"--- process {i} (exit {c}) ---\n{log}"
                                      for i, (c, log) in enumerate(zip(codes, logs)))
  steps = [int(x) for x in os.listdir(os.path.join(workdir, "checkpoints")) if x.isdigit()]
  assert len(steps) == 1 and 0 < steps[0] < 5000, steps
  assert f"saved step {steps[0]}" in logs[0]  # host 0 says so
  data_iter = os.path.join(workdir, "checkpoints", str(steps[0]), "data_iter")
  assert sorted(f for f in os.listdir(data_iter) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]  # both hosts saved their data position


# The one-process reference of the 2-host SIP run: the same global batch. Each host reads
# its own slice of the documents, so one process reading the whole corpus would see other
# windows; the reference instead reads both hosts' windows (host 0's rows first, as the
# global batch is laid out) and runs everything else unchanged on 2 local devices.
_ONE_PROCESS_SIP = r'''
import sys
import grain
import numpy as np
from earlyrl_jax.data import pipeline

make = pipeline.make_window_dataset


class BothHosts(grain.DatasetIterator):
  def __init__(self, its):
    super().__init__()
    self.its = its

  def __next__(self):
    a, b = (next(it) for it in self.its)
    out = {k: (list(a[k]) + list(b[k]) if isinstance(a[k], list) else np.concatenate([a[k], b[k]]))
           for k in a if k != "stats"}
    out["stats"] = {k: a["stats"][k] + b["stats"][k] for k in a["stats"]}
    return out

  def get_state(self):
    return {"hosts": [it.get_state() for it in self.its]}

  def set_state(self, state):
    for it, s in zip(self.its, state["hosts"]):
      it.set_state(s)


class Windows:
  def __init__(self, *args, host_batch_size, **kw):
    kw.update(process_count=2)
    self.parts = [make(*args, host_batch_size=host_batch_size // 2, **{**kw, "process_index": i})
                  for i in range(2)]

  def __iter__(self):
    return BothHosts([iter(p) for p in self.parts])


pipeline.make_window_dataset = Windows
from earlyrl_jax import main
main.cli(["main", *sys.argv[1:]])
'''


@pytest.mark.slow
def test_two_process_sip_and_restore_on_one(tmp_path):
  """SIP across two hosts: each samples rollouts for its own windows, judges them, and both
  join one update; only host 0 reports; the checkpoint both wrote restores in one process,
  and equals that of one process with 2 devices fed the same global batch."""
  from tests.test_placement import write_tiny_teacher
  workdir, ref_dir = str(tmp_path / "run"), str(tmp_path / "one_process")
  teacher = write_tiny_teacher(str(tmp_path))  # rewrites and judges (all pairs) on both hosts
  args = ["--config.mode=sip", "--config.num_steps=3", "--config.eval_world_prompts=0",
          "--config.log_every_steps=1", "--config.eval_every_steps=0",
          "--config.checkpoint.every_steps=3", "--config.sip.judge=teacher",
          "--config.sip.rewrite=online", f"--config.teacher.path={teacher}",
          "--config.sip.num_rollouts=2", "--config.data.batch_size=4",
          "--config.data.prefix_len=32", "--config.data.suffix_len=24"]
  procs = _main_on_two_hosts(workdir, args)
  logs = [p.communicate(timeout=400)[0] for p in procs]
  _assert_all_succeeded(procs, logs)
  assert "step 3/3" in logs[0] and "step 3/3" not in logs[1]
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all("sip/win_share_rollout" in r and "rewards/margin" in r for r in records)
  assert all(r["time/rewrite"] > 0 and "sip/win_share_rewrite" in r for r in records)
  assert all(r["sip/judge_calls"] > 0 for r in records)   # the LM judge ran on both hosts
  out = subprocess.run(
      [sys.executable, "-c", "import sys, jax; from earlyrl_jax.train import loop; "
       "g, p, c = loop.load_run_params(sys.argv[1]); "
       "print('restored', sum(x.size for x in jax.tree.leaves(p)), c.num_params())", workdir],
      cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  _, n, expected = out.stdout.split()[-3:]
  assert n == expected
  script = tmp_path / "one_process.py"
  script.write_text(_ONE_PROCESS_SIP)
  ref = subprocess.run(
      [sys.executable, str(script), f"--workdir={ref_dir}",
       "--config=" + os.path.join(REPO, "configs", "tiny.py"), *SMALL_RUN, *args],
      cwd=REPO, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                     "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
  ref_log = ref.stdout
  assert ref.returncode == 0, ref_log
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in ref_log and "step 3/3" in ref_log
  import jax
  from earlyrl_jax.train import loop
  two = jax.device_get(loop.load_run_params(workdir)[1])
  one = jax.device_get(loop.load_run_params(ref_dir)[1])
  # Same rows, same rollout keys, same bucket shapes (agreed across hosts), the same SPMD
  # program per device: only the gradient all-reduce differs (gloo across processes vs
  # in-process), and a sum of two shards is the same in either order. So: bit for bit.
  leaves, tree = jax.tree_util.tree_flatten_with_path(two)
  assert tree == jax.tree.structure(one)
  for (path, a), b in zip(leaves, jax.tree.leaves(one)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # ... and not because nothing moved: the 3 updates changed the starting parameters.
  import ml_collections
  from earlyrl_jax import configs
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.train import state as state_lib
  cfg = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
  _, start, _ = state_lib.init_train_state(
      configs.model_config(cfg), state_lib.make_optimizer(cfg.opt, cfg.num_steps),
      mesh_lib.single_device_mesh(), seed=cfg.seed)
  moved = max(float(np.abs(a - b).max()) for (_, a), b in
              zip(leaves, jax.tree.leaves(jax.device_get(start.params))))
  assert moved > 1e-4, moved


@pytest.mark.slow
def test_two_process_sip_with_the_teacher_on_a_sub_mesh(tmp_path):
  """2 hosts x 2 devices, teacher.devices=2: one device of every host rewrites and judges, the
  other trains; each host's windows are rewritten and judged where they are. Adaptive judging
  asks a different number of pairs on each host, so the hosts' judge calls must stay in step."""
  from tests.test_placement import write_tiny_teacher
  workdir = str(tmp_path / "run")
  procs = _main_on_two_hosts(workdir, [
      "--config.mode=sip", "--config.num_steps=2", "--config.eval_world_prompts=0",
      "--config.log_every_steps=1", "--config.eval_every_steps=0",
      "--config.checkpoint.every_steps=2", "--config.sip.judge=teacher",
      "--config.sip.judge_scheme=adaptive",
      "--config.sip.rewrite=online", f"--config.teacher.path={write_tiny_teacher(str(tmp_path))}",
      "--config.teacher.placement=submesh", "--config.teacher.devices=2",
      "--config.sip.num_rollouts=2", "--config.data.batch_size=4",
      "--config.data.prefix_len=32", "--config.data.suffix_len=24"], local_devices=2)
  logs = [p.communicate(timeout=400)[0] for p in procs]
  _assert_all_succeeded(procs, logs)
  assert "process 0/2: 2 local of 4 devices" in logs[0]
  assert ("teacher on its own sub-mesh {'data': 2, 'fsdp': 1, 'tensor': 1} (2 devices); "
          "policy mesh {'data': 2, 'fsdp': 1, 'tensor': 1} (2 devices)") in logs[0]
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2]
  assert all(r["time/rewrite"] > 0 and r["sip/judge_calls"] > 0 for r in records)
