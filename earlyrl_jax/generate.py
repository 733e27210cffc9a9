"""`mode='generate'`: continue prompts with a trained run or an HF model directory.

  python -m earlyrl_jax.main --config=configs/tiny.py --workdir=RUN --config.mode=generate \
      --config.generate.prompt='The capital of' --config.generate.num_samples=4
  python -m earlyrl_jax.main ... --config.mode=generate --config.generate.prompt_file=prompts.jsonl \
      --config.generate.model_path=/path/to/hf_model --config.generate.output_file=out.jsonl

The model is the newest checkpoint of the run in WORKDIR (or `generate.model_path`:
another run directory, or a Hugging Face Llama/Mistral/Qwen2 directory); the
tokenizer is the one the run trained (WORKDIR/tokenizer.model) or named
(data.tokenizer_path), or the HF directory's own. A BOS starts a prompt where the
tokenizer's own convention puts one (`generate.add_bos`: an HF directory's tokenizer as
transformers applies it, so greedy output equals transformers' `generate`; a run's as its
training documents start). Prompts come from
`generate.prompt` or a JSONL file with a `prompt` field per line. Output is JSONL,
one record per prompt: the input record's fields plus prompt, completions (K),
prompt_tokens, completion_tokens, finish_reasons ('eos' | 'length') and
prompt_truncated; written to WORKDIR/generations.jsonl (or `generate.output_file`,
'-' = stdout) and shown on the console.

Console script: `earlyrl-generate --workdir=RUN --config.generate.prompt=...`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from earlyrl_jax import configs
from earlyrl_jax.configs import ConfigError, GenerateConfig
from earlyrl_jax.data.tokenizer import adds_bos
from earlyrl_jax.data.sources import DataError
from earlyrl_jax.errors import json_problem


def _is_main() -> bool:
  return jax.process_index() == 0


def _info(msg: str) -> None:
  """Status lines go to stderr, so stdout holds only the completions."""
  if _is_main():
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- prompts


def read_prompts(g: GenerateConfig) -> list[dict[str, Any]]:
  """Prompt records ({'prompt': str, ...other input fields}); errors name file:line."""
  if g.prompt:
    return [{"prompt": g.prompt}]
  path = g.prompt_file
  if not os.path.isfile(path):
    raise DataError(f"generate.prompt_file: {path}: no such file"
                    + (" (it is a directory)" if os.path.isdir(path) else ""))
  records = []
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        obj = json.loads(raw.decode("utf-8"))
      except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid UTF-8 at byte {e.start}") from None
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({json_problem(e)}); "
                        f"generate.prompt_file needs one JSON object per line") from None
      if not isinstance(obj, dict) or not isinstance(obj.get(g.prompt_field), str):
        has = f"its fields are {sorted(obj)[:12]}" if isinstance(obj, dict) else (
            f"it is a JSON {type(obj).__name__}, not an object")
        raise DataError(f"{where}: no string field {g.prompt_field!r} (generate.prompt_field); {has}")
      rec = dict(obj)
      rec["prompt"] = rec.pop(g.prompt_field) if g.prompt_field != "prompt" else rec["prompt"]
      records.append(rec)
  if not records:
    raise DataError(f"generate.prompt_file: {path} holds no prompts")
  return records


# --------------------------------------------------------------------------- model


def _is_hf_dir(path: str) -> bool:
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return False
  try:
    with open(cfg) as f:
      c = json.load(f)
  except (OSError, ValueError):
    return False
  return "model_type" in c or "architectures" in c


def checkpoint_steps(run_dir: str) -> list[int]:
  """Complete checkpoint steps of a run (orbax's unfinished temporary dirs excluded)."""
  from earlyrl_jax.train.checkpoint import checkpoint_path
  d = checkpoint_path(os.path.join(run_dir, "checkpoints"))
  if not d.exists():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def _run_tokenizer(run_dir: str, run_cfg):
  from earlyrl_jax.data import tokenizer as tok_lib
  trained = os.path.join(run_dir, "tokenizer.model")
  d = run_cfg.data
  if d.tokenizer == "sentencepiece" and not d.tokenizer_path:
    if not os.path.isfile(trained):
      raise DataError(f"{run_dir}: no tokenizer.model (the run trains one before its first step)")
    return tok_lib.SentencePieceTokenizer(trained)
  return tok_lib.load_tokenizer(d.tokenizer, d.tokenizer_path, vocab_size=run_cfg.model.vocab_size)


def load_run(run_dir: str, *, step: int = -1, mesh=None):
  """(model, tokenizer, description) from a training run's checkpoint (newest when step < 0)."""
  import ml_collections
  from flax import nnx
  from earlyrl_jax.train import loop
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(cfg_path):
    raise DataError(f"{run_dir}: no config.json, so no training run here; train one first "
                    "(mode='pretrain') or set generate.model_path to a run or an HF model directory")
  steps = checkpoint_steps(run_dir)
  if not steps:
    raise DataError(f"{run_dir}/checkpoints: no checkpoint written yet; train first "
                    "(mode='pretrain') or set generate.model_path to an HF model directory")
  if step >= 0 and step not in steps:
    raise ConfigError(f"generate.step: no checkpoint of step {step} in {run_dir}/checkpoints "
                      f"(have {steps})")
  with open(cfg_path) as f:
    run_cfg = ml_collections.ConfigDict(json.load(f))
  tokenizer = _run_tokenizer(run_dir, run_cfg)
  chosen = step if step >= 0 else steps[-1]
  graphdef, params, _ = loop.load_run_params(run_dir, mesh=mesh, step=chosen)
  return nnx.merge(graphdef, params), tokenizer, f"{run_dir} step {chosen}"


def load_hf(path: str, *, dtype: str = "", mesh=None):
  """(model, tokenizer, description) from a Hugging Face model directory."""
  from earlyrl_jax.data.tokenizer import check_tokenizer_dir, load_tokenizer_dir
  from earlyrl_jax.models import hf_io
  check_tokenizer_dir(path, "generate.model_path")  # a missing package is named before any weight is read
  tokenizer = load_tokenizer_dir(path)
  return hf_io.load_model(path, mesh=mesh, dtype=dtype or None), tokenizer, f"HF model {path}"


def load_model(g: GenerateConfig, workdir: str, mesh=None):
  """The model named by generate.model_path ('' = the run in WORKDIR)."""
  path = g.model_path or workdir
  if g.model_path and not os.path.isdir(path):
    raise DataError(f"generate.model_path: {path} is not a directory")
  if _is_hf_dir(path):
    return load_hf(path, dtype=g.dtype, mesh=mesh)
  return load_run(path, step=g.step, mesh=mesh)


# --------------------------------------------------------------------------- sampling


def encode_prompt(tokenizer, text: str, *, add_bos: bool, max_len: int) -> tuple[list[int], bool]:
  """Token ids of a prompt, keeping the last max_len (BOS kept first); (ids, truncated)."""
  ids = list(tokenizer.encode(text))
  bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  if not bos and not ids:
    raise DataError("an empty prompt needs a BOS token (generate.add_bos=true)")
  room = max_len - len(bos)
  truncated = len(ids) > room
  return bos + ids[max(0, len(ids) - room):], truncated


def decode(tokenizer, ids: Sequence[int]) -> str:
  """Text of sampled ids; ids past the tokenizer's vocabulary (a model's padded
  embedding rows, never a training target) are dropped instead of crashing the decoder."""
  return tokenizer.decode([i for i in ids if 0 <= i < tokenizer.vocab_size])


def generate(model, tokenizer, prompts: Sequence[dict[str, Any]], g: GenerateConfig, *,
             mesh=None) -> list[dict[str, Any]]:
  """One output record per prompt record: K completions with token counts."""
  from earlyrl_jax.sampling.sampler import Sampler
  max_seq_len = model.cfg.max_seq_len
  if g.max_new_tokens >= max_seq_len:
    raise ConfigError(f"generate.max_new_tokens={g.max_new_tokens} leaves no room for a prompt "
                      f"in model.max_seq_len={max_seq_len}")
  sampler = Sampler(model, mesh=mesh, pad_id=tokenizer.pad_id)
  add_bos = adds_bos(tokenizer) if g.add_bos is None else g.add_bos
  eos = tokenizer.eos_id
  stop = [eos] if g.stop_at_eos and eos is not None else []
  key = jax.random.key(g.seed)
  out: list[dict[str, Any]] = []
  n_truncated = 0
  batch = min(g.batch_size, len(prompts))
  for b0 in range(0, len(prompts), batch):
    chunk = prompts[b0:b0 + batch]
    encoded = [encode_prompt(tokenizer, r["prompt"], add_bos=add_bos,
                             max_len=max_seq_len - g.max_new_tokens) for r in chunk]
    rows = [ids for ids, _ in encoded]
    rows += [rows[0]] * (batch - len(rows))  # a short last batch reuses the compiled program
    res = sampler(rows, max_new_tokens=g.max_new_tokens,
                  key=jax.random.fold_in(key, b0), temperature=g.temperature, top_k=g.top_k,
                  top_p=g.top_p, stop_tokens=stop, num_samples=g.num_samples, early_stop=True)
    K = g.num_samples
    for i, (rec, (ids, truncated)) in enumerate(zip(chunk, encoded)):
      texts, counts, reasons = [], [], []
      for k in range(K):
        row = np.asarray(res.tokens[i * K + k])[:int(res.lengths[i * K + k])].tolist()
        hit_eos = bool(row) and bool(stop) and row[-1] == eos
        if hit_eos:
          row = row[:-1]
        texts.append(decode(tokenizer, row))
        counts.append(len(row))
        reasons.append("eos" if hit_eos else "length")
      n_truncated += truncated
      out.append({**rec, "prompt": rec["prompt"], "completions": texts, "prompt_tokens": len(ids),
                  "completion_tokens": counts, "finish_reasons": reasons,
                  "prompt_truncated": bool(truncated)})
  if n_truncated:
    _info(f"warning: {n_truncated} prompt(s) kept only their last "
          f"{max_seq_len - g.max_new_tokens} tokens (model.max_seq_len={max_seq_len} minus "
          f"generate.max_new_tokens={g.max_new_tokens})")
  return out


# --------------------------------------------------------------------------- the job


def _write_jsonl(records: list[dict[str, Any]], path: str) -> None:
  """Atomic: a reader never sees a half-written file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def _show(records: list[dict[str, Any]]) -> None:
  for i, r in enumerate(records):
    print(f"[{i}] prompt ({r['prompt_tokens']} tokens): {r['prompt']!r}")
    for k, (text, n, why) in enumerate(zip(r["completions"], r["completion_tokens"],
                                           r["finish_reasons"])):
      print(f"  #{k} ({n} tokens, {why}): {text!r}")
  sys.stdout.flush()


def _mesh(cfg):
  """The config's mesh; a fully fixed shape smaller than the machine takes the first devices."""
  from earlyrl_jax.parallel import mesh as mesh_lib
  if "mesh" not in cfg:
    return mesh_lib.single_device_mesh()
  shape = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  devices = None
  if -1 not in shape and int(np.prod(shape)) < jax.device_count():
    devices = jax.devices()[:int(np.prod(shape))]
  try:
    return mesh_lib.mesh_from_config(cfg.mesh, devices)
  except mesh_lib.MeshConfigError as e:
    raise ConfigError(str(e)) from None


def run_generate(cfg, workdir: str) -> list[dict[str, Any]]:
  """The `generate` mode: load, sample, write JSONL. Returns the output records."""
  g = configs.generate_config(cfg)
  prompts = read_prompts(g)  # bad prompt input fails before any model is loaded
  mesh = _mesh(cfg)
  t0 = time.time()
  model, tokenizer, desc = load_model(g, workdir, mesh)
  _info(f"loaded {desc} ({model.cfg.num_params() / 1e6:.2f}M params, vocab "
        f"{tokenizer.vocab_size}) in {time.time() - t0:.1f}s")
  t0 = time.time()
  records = generate(model, tokenizer, prompts, g, mesh=mesh)
  n_tok = sum(sum(r["completion_tokens"]) for r in records)
  _info(f"generated {len(records)} x {g.num_samples} completions ({n_tok} tokens) in "
        f"{time.time() - t0:.1f}s")
  if _is_main():
    if g.output_file == "-":
      for r in records:
        print(json.dumps(r, ensure_ascii=False))
      sys.stdout.flush()
    else:
      path = g.output_file or os.path.join(workdir, "generations.jsonl")
      _show(records)
      _write_jsonl(records, path)
      _info(f"wrote {path}")
  return records


def main(argv: list[str] | None = None) -> None:
  """Console script `earlyrl-generate`: the main entry with config.mode='generate'."""
  from earlyrl_jax import main as entry
  argv = list(sys.argv if argv is None else argv)
  entry.cli(argv + ["--config.mode=generate"])


if __name__ == "__main__":
  main()
