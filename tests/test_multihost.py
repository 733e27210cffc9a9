"""Two local processes as two hosts (gloo collectives on CPU): the --distributed path of the
main job, per-host data slices, multi-process checkpoints and host-0-only metrics."""
import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_pretraining(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / "run")
  procs = []
  for pid in range(2):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env.update(EARLYRL_COORDINATOR=f"127.0.0.1:{port}", EARLYRL_NUM_PROCESSES="2",
               EARLYRL_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "earlyrl_jax.main", "--distributed", f"--workdir={workdir}",
         "--config=" + os.path.join(REPO, "configs", "tiny.py"), "--config.num_steps=6", "--config.eval_world_prompts=4",
         "--config.log_every_steps=2", "--config.eval_every_steps=0", "--config.checkpoint.every_steps=3",
         "--config.data.tokenizer=byte", "--config.model.vocab_size=384", "--config.data.batch_size=8",
         "--config.data.seq_len=64", "--config.world.num_train_documents=200",
         "--config.world.num_eval_documents=10", "--config.world.num_preference_pairs=5",
         "--config.world.num_rewrite_examples=5", "--config.world.num_factual_probes=5",
         "--config.world.num_unsafe_bait=3"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log
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
