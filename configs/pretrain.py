"""A realistic 1B pretraining run (Llama-3.2-1B shape) on your own corpus.

  python -m earlyrl_jax.main --config=configs/pretrain.py --workdir=/mnt/runs/run1 \
      --config.checkpoint.dir=gs://bucket/run1/checkpoints \
      --config.data.train_files='/data/corpus/*.jsonl' \
      --config.data.tokenizer_path=/models/llama3/tokenizer.json

Sized for a TPU v5e-64 or 8x H100 node with FSDP: global batch 512 x 2048 tokens
(1M tokens per step), 20k steps = 21B tokens. On one 8-GPU node expect roughly
0.4-0.5M tokens/s at ~50% MFU. Change mesh.* to match your devices (mesh.fsdp=-1
shards params, grads and optimizer state over every device).
"""
import os

from earlyrl_jax.configs import load_config_file, model_section


def get_config():
  # Every field is documented in tiny.py; this file changes only what a 1B run needs.
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
  c.mode = "pretrain"                   # (tiny.py's own default job is the report)
  c.num_steps = 20_000
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.eval_batches = 20

  c.model = model_section("1b", dtype="bfloat16", remat=True)  # bf16 compute, f32 master params

  c.data.corpus = "files"
  c.data.train_files = ""               # required: comma-separated globs of your corpus
  c.data.eval_files = ""                # optional held-out globs
  c.data.tokenizer = "hf"               # tokenizer.json (e.g. the Llama 3 tokenizer)
  c.data.tokenizer_path = ""            # required with tokenizer='hf'
  c.data.seq_len = 2048
  c.data.batch_size = 512
  c.data.on_error = "skip"              # web data: skip and count malformed records
  c.data.min_doc_tokens = 32
  c.data.worker_count = 8               # tokenization in grain worker processes

  c.opt.learning_rate = 3e-4
  c.opt.warmup_steps = 2000
  c.opt.weight_decay = 0.1
  c.opt.grad_accum_steps = 1

  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 3
  return c
