"""The paper's setting: self-improving mid-training of a public 1B-class model (online DPO).

  python -m earlyrl_jax.main --config=configs/midtrain.py --workdir=/mnt/runs/sip1 \
      --config.init.params_from=/models/Llama-3.2-1B \
      --config.data.tokenizer_path=/models/Llama-3.2-1B/tokenizer.json \
      --config.teacher.path=/models/Llama-3.1-8B-Instruct \
      --config.data.train_files='/data/slimpajama/*.jsonl' \
      --config.checkpoint.dir=gs://bucket/sip1/checkpoints

What it sets (Tan et al. 2026, continual runs; docs/method.md): windows of 1920 prefix +
N=128 suffix tokens (sequence 2048), K=16 rollouts at temperature 1.0, online DPO of the
best against the worst candidate with a frozen reference, no rewriter (the paper's
strongest recipe: original suffix vs 16 rollouts), all-pairs judging by an 8B-class
instruct teacher, global batch 256 windows, lr 5e-6 cosine over 2000 steps. The policy is
the Llama-3.2-1B shape (set `model` to your checkpoint's shape if it differs: a mismatch
is an error naming the fields). Mesh: FSDP over every device of a GPU node or TPU pod
slice (mesh.fsdp=-1); the judge's cost dominates a step (benchmarks/RESULTS.md), so prefer
`sip.judge_scheme=adaptive` on a budget. tests/test_midtrain.py builds the whole step
abstractly (shapes and shardings) on 8 simulated devices.
"""
import os

from earlyrl_jax.configs import load_config_file, model_section


def get_config():
  # Every field is documented in tiny.py; this file changes only what the paper's run needs.
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
  c.mode = "sip"
  c.num_steps = 2000
  c.log_every_steps = 10
  c.eval_every_steps = 200
  c.eval_world_prompts = 0

  c.model = model_section("1b", dtype="bfloat16", remat=True)  # Llama-3.2-1B shape, bf16 compute
  c.init.params_from = ""               # required: the HF (or earlyrl_jax run) directory to mid-train

  c.data.corpus = "files"
  c.data.train_files = ""               # required: comma-separated globs of your corpus
  c.data.tokenizer = "hf"               # the policy's tokenizer.json
  c.data.tokenizer_path = ""            # required
  c.data.seq_len = 2048                 # held-out NLL eval rows
  c.data.prefix_len = 1920              # window prefix: sequence 2048 = prefix + suffix
  c.data.suffix_len = 128               # N (paper: 128)
  c.data.min_prefix_len = 64
  c.data.batch_size = 256               # windows (prefixes) per step (paper: 256)
  c.data.on_error = "skip"
  c.data.min_doc_tokens = 192

  c.sip.recipe = "dpo"
  c.sip.num_rollouts = 16               # K (paper: 16; gains rise monotonically from 1 to 16)
  c.sip.temperature = 1.0
  c.sip.rewrite = "none"                # original suffix vs rollouts (the paper's best DPO run)
  c.sip.judge = "teacher"
  c.sip.judge_scheme = "all_pairs"      # the paper's; 'adaptive' asks ~1/3 of the pairs
  c.sip.beta = 0.1
  c.sip.lm_coef = 0.0                   # the SIP loss alone, as in the paper's continual runs

  c.teacher.path = ""                   # required: an 8B-class instruct model (HF directory)
  c.teacher.placement = "shared"        # 'submesh' + teacher.devices: the teacher on its own devices
  c.teacher.devices = 0                 # e.g. 2 of a node's 8 GPUs (judging dominates: see README)
  c.teacher.mesh.data = 1               # 'submesh': the teacher's weights split over its devices
  c.teacher.mesh.fsdp = -1
  c.teacher.mesh.tensor = 1

  c.opt.learning_rate = 5e-6            # paper: 5e-6 cosine
  c.opt.warmup_steps = 50
  c.opt.min_lr_ratio = 0.0
  c.opt.weight_decay = 0.0

  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  c.checkpoint.every_steps = 100
  return c
