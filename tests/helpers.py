"""Small builders shared by tests: tiny configs, models and batches."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from earlyrl_jax import configs
from earlyrl_jax.models import transformer as T


def tiny_model_config(**kw) -> T.ModelConfig:
  base = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
              d_ff=128, max_seq_len=128)
  base.update(kw)
  return T.ModelConfig(**base)


def tiny_model(seed: int = 0, **kw) -> T.Transformer:
  return T.Transformer(tiny_model_config(**kw), rngs=nnx.Rngs(seed))


def random_lm_batch(batch: int, seq: int, vocab: int, seed: int = 0, packed: bool = True):
  """A packed LM batch with 2 segments per row (or 1 when packed=False)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, size=(batch, seq), dtype=np.int32)
  segs = np.ones((batch, seq), np.int32)
  pos = np.tile(np.arange(seq, dtype=np.int32), (batch, 1))
  if packed:
    cut = seq // 2
    segs[:, cut:] = 2
    pos[:, cut:] = np.arange(seq - cut)
  same_next = np.concatenate([segs[:, 1:] == segs[:, :-1], np.zeros((batch, 1), bool)], axis=1)
  targets = np.where(same_next, np.concatenate([tokens[:, 1:], np.zeros((batch, 1), np.int32)], 1), 0)
  return {"tokens": tokens, "targets": targets.astype(np.int32), "segment_ids": segs,
          "positions": pos, "loss_mask": same_next.astype(np.float32)}


def cpu_devices(n: int):
  devs = jax.devices()
  assert len(devs) >= n, f"tests need {n} devices; conftest sets 8 simulated CPU devices"
  return devs[:n]


set_fields = configs.set_fields   # dotted fields in place ('data.batch_size': 8)


def default_world():
  """(world config, knowledge base, oracles) of the default synthetic world."""
  from earlyrl_jax import world as W
  cfg = W.default_world_config()
  kb = W.build_kb(cfg)
  return cfg, kb, W.Oracles(kb)


def world_tokenizer(path: str, prompts: list[str], num_documents: int = 150, vocab_size: int = 400):
  """A SentencePiece tokenizer trained on clean world documents plus prompt markup (5 copies)."""
  from earlyrl_jax import world as W
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  from earlyrl_jax.embedded import data as D
  cfg = W.default_world_config()
  kb = W.build_kb(cfg)
  texts = [d.text for d in W.generate_documents(kb, cfg, "t", num_documents, clean=True)]
  D.train_tokenizer(texts + list(prompts) * 5, path, vocab_size)
  return SentencePieceTokenizer(path)


def random_teacher(tokenizer, max_seq_len: int = 256, limits=None):
  """An untrained Teacher of tiny shape over `tokenizer` (for code paths, not verdict quality)."""
  from earlyrl_jax.teacher.prompts import markup as P
  from earlyrl_jax.teacher import teacher as Tch
  mc = tiny_model_config(vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len)
  graphdef, params = nnx.split(T.Transformer(mc, rngs=nnx.Rngs(0)))
  return Tch.Teacher(graphdef, params, tokenizer, mc, None, limits or P.PromptLimits(80, 100, 100))


def save_reusable_teacher(workdir, teacher, tokenizer, cfg) -> str:
  """WORKDIR/teacher + teacher_report.json as `embedded.job.run` leaves them for `cfg`, so a
  second run reuses them; returns the teacher directory."""
  import json
  import os
  import shutil
  from earlyrl_jax.teacher import teacher as Tch
  from earlyrl_jax.embedded import job as TT
  h, inference = TT.config_hash(cfg), TT.inference_settings(cfg)
  path = os.path.join(str(workdir), "teacher")
  Tch.save_teacher(path, teacher, h, {"inference": inference})
  shutil.copy(tokenizer.path, os.path.join(path, Tch.TOKENIZER_FILE))
  with open(os.path.join(str(workdir), "teacher_report.json"), "w") as f:
    json.dump({"config_hash": h, "inference": inference}, f)
  return path
