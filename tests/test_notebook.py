"""The Colab quick start runs: every code cell of launch/colab/quickstart.ipynb is executed
in a fresh python3 kernel (nbclient + ipykernel, the `[test]` extra), from the repository root."""
from __future__ import annotations

import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab", "quickstart.ipynb")


def _outputs(cell) -> str:
  text = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      text.append(out.get("text", ""))
    elif "data" in out:
      text.append(out["data"].get("text/plain", ""))
  return "".join(text)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [test] extra)")
  nbclient = pytest.importorskip("nbclient", reason="needs nbclient (the [test] extra)")
  pytest.importorskip("ipykernel", reason="needs ipykernel for the python3 kernel (the [test] extra)")

  workdir = tmp_path / "nb_run"
  # The kernel inherits this environment: its own workdir, one CPU device (conftest's 8
  # simulated devices would only slow a 2-core machine down).
  monkeypatch.setenv("EARLYRL_NB_WORKDIR", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert not any("!pip" in line and not line.lstrip().startswith("#")
                 for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()), \
      "the install cell must stay commented"
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=240,
                                   resources={"metadata": {"path": REPO}})
  client.execute()  # raises CellExecutionError naming the cell on any failure

  code = [c for c in nb.cells if c.cell_type == "code"]
  printed = "\n".join(_outputs(c) for c in code)
  assert f"workdir: {workdir}" in printed
  assert "step 40/40" in printed  # the training progress line
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40]
  assert any("world/false_claim_rate" in r for r in records)
  assert (workdir / "checkpoints" / "40").is_dir()
  # The sampling cell prints four continuations, the last cell the loss curve and world eval.
  assert printed.count("'The capital of' ->") == 2
  assert "loss by step: [(10," in printed
  line = next(l for l in printed.splitlines() if l.startswith("world eval: "))
  world = eval(line[len("world eval: "):])  # noqa: S307 (our own printed dict)
  assert {"world/factuality", "world/false_claim_rate", "world/unsafe_rate_on_bait"} <= set(world)
