"""Converters: a GGUF file -> HF directory; HF directory <-> orbax checkpoint.

  earlyrl-convert gguf --src=SmolLM2-135M-Instruct.Q4_1.gguf --dst=/models/smollm2  # llama.cpp file
  python -m earlyrl_jax.tools.convert hf2orbax --src=/ckpt/Llama-3.2-1B --dst=/ckpt/llama1b-orbax
  python -m earlyrl_jax.tools.convert orbax2hf --src=/ckpt/llama1b-orbax --dst=/out/hf
  python -m earlyrl_jax.tools.convert orbax2hf --src=WORKDIR --dst=/out/hf   # a pretraining run

`gguf` dequantizes with the `gguf` package alone (no torch; models/gguf_io.py) and writes
config.json, safetensors and the tokenizer files that `init.params_from`, `teacher.path` and
`generate.model_path` read.

An orbax model directory holds `model_config.json`, `params/` (orbax, restorable
onto any mesh) and the tokenizer files. Restoring it skips safetensors parsing
and layout conversion, and each host reads only its shards.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from earlyrl_jax.data import tokenizer as tok_lib
from earlyrl_jax.models import hf_io
from earlyrl_jax.models.transformer import ModelConfig, split_abstract
from earlyrl_jax.parallel import mesh as mesh_lib

MODEL_CONFIG = "model_config.json"


def save_orbax(model, path: str, tokenizer=None) -> None:
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, MODEL_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(model.cfg), f, indent=1)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, "params"), nnx.state(model), force=True)
  ckptr.wait_until_finished()
  if tokenizer is not None:
    tok_lib.save_tokenizer_files(tokenizer, path)


def load_orbax(path: str, *, mesh=None):
  """(model, tokenizer) from a directory written by `save_orbax`, sharded onto `mesh`."""
  path = os.path.abspath(path)
  with open(os.path.join(path, MODEL_CONFIG)) as f:
    cfg = ModelConfig(**json.load(f))
  mesh = mesh or mesh_lib.single_device_mesh()
  graphdef, abstract = split_abstract(cfg)
  shardings = mesh_lib.state_shardings(abstract, mesh)
  target = mesh_lib.with_shardings(abstract, shardings)
  state = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), target)
  return nnx.merge(graphdef, state), tok_lib.load_tokenizer_dir(path)


def load_workdir(path: str, *, mesh=None):
  """(model, tokenizer) from the newest checkpoint of a pretraining workdir."""
  from earlyrl_jax.train import loop
  graphdef, params, _ = loop.load_run_params(path, mesh)
  tok_path = os.path.join(path, "tokenizer.model")
  tokenizer = None
  if os.path.exists(tok_path):
    from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
    tokenizer = SentencePieceTokenizer(tok_path)
  return nnx.merge(graphdef, params), tokenizer


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("direction", choices=["gguf", "hf2orbax", "orbax2hf"])
  p.add_argument("--src", required=True)
  p.add_argument("--dst", required=True)
  p.add_argument("--dtype", default=None, help="hf2orbax: param dtype (default float32); "
                 "orbax2hf and gguf: safetensors dtype (default float32)")
  args = p.parse_args(argv)
  if args.direction == "gguf":
    from earlyrl_jax.models import gguf_io
    try:
      info = gguf_io.convert_gguf(args.src, args.dst, dtype=args.dtype or "float32")
    except (gguf_io.GGUFError, FileNotFoundError) as e:
      raise SystemExit(f"error: {e}") from None
    print(f"gguf: {args.src} -> {args.dst} ({info['name'] or 'model'}, {info['params'] / 1e6:.1f}M "
          f"parameters, {info['dtype']}) in {info['seconds']:.1f}s")
    return
  if args.direction == "hf2orbax":
    model, tok = hf_io.load_model(args.src, dtype=args.dtype), tok_lib.load_tokenizer_dir(args.src)
    save_orbax(model, args.dst, tok)
  else:
    is_workdir = os.path.exists(os.path.join(args.src, "checkpoints"))
    model, tok = (load_workdir if is_workdir else load_orbax)(args.src)
    hf_io.save_pretrained(model, args.dst, tok, dtype=args.dtype or "float32")
    if tok is not None:
      tok_lib.save_tokenizer_files(tok, args.dst)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  print(f"{args.direction}: {args.src} -> {args.dst} ({n / 1e6:.1f}M parameters)")


if __name__ == "__main__":
  main()
