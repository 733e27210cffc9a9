"""Train any HF instruct model as the paper's judge (mode='judge_train', docs/judge_training.md).

  python -m earlyrl_jax.main --config=configs/judge_train.py --workdir=/tmp/judge \
      --config.judge_train.teacher_path=MODEL_DIR

By default: SFT on the verdict in the log-prob format (the prompt `LogProbJudge` sends, the loss
on the label's answer option after 'Answer:') on the synthetic world's training pairs, labels
flipped with probability judge_train.label_noise (the human annotator's mistakes), held-out
agreement per axis on the world's validation pairs before and after. Writes WORKDIR/judge (an
HF directory: `--config.teacher.path=WORKDIR/judge` in a SIP run) and WORKDIR/judge_agreement.json.
GRPO with the 0/1 agreement reward: --config.judge_train.method=grpo (generative format; start
from an SFT'd judge so that its replies end with 'Answer: ...').

Measured: SmolLM2-135M, 2 shared CPU cores: benchmarks/RESULTS.md ("Training a judge").
"""
import os

from ml_collections import ConfigDict

from earlyrl_jax.judge_train.settings import section
from earlyrl_jax.world import default_world_config


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = "judge_train"   # earlyrl_jax/judge_train/job.py
  c.seed = 0               # data order, label noise, sampling
  c.world_dir = ""         # '' = WORKDIR/world (written on first use when judge_train.data is '')
  c.world = default_world_config()   # the world whose supervision trains and tests the judge

  c.judge_train = section(
      teacher_path=os.environ.get("EARLYRL_SMOL_DIR", ""),  # the HF model to train as judge
      data="",              # JSONL of labelled items ('' = the world's training pairs, exported)
      heldout="",           # JSONL of held-out items ('' = the world's validation pairs)
      out_dir="",           # '' = WORKDIR/judge
      method="sft",         # 'sft' (the verdict's NLL) | 'grpo' (0/1 agreement reward) |
                            # 'bt' (Bradley-Terry scalar head per axis on the backbone)
      variant="logprob",    # SFT's format: 'logprob' (option after 'Answer:') | 'generative'
      eval_variant="logprob",  # which judge measures held-out agreement
      axes="quality,factuality,safety",   # the axes trained (and measured)
      steps=60,             # optimizer steps
      learning_rate=1e-5,   # peak rate (the paper's GRPO: 2e-7 on an 8B model)
      warmup_steps=6,       # linear warmup
      min_lr_ratio=1.0,     # cosine decay to this share of the peak (1.0 = constant)
      weight_decay=0.0,     # AdamW decay on weight matrices
      grad_clip=1.0,        # global-norm clip (0 = off)
      batch_size=4,         # SFT: examples per step; GRPO: prompts per step
      samples_per_prompt=4,  # GRPO: verdicts sampled per prompt (the paper: 16)
      temperature=1.0,      # GRPO: sampling temperature
      top_p=1.0,            # GRPO: nucleus
      max_new_tokens=16,    # GRPO (and the generative judge): tokens per sampled verdict
      max_len=1024,         # the judge's context for its prompts (teacher.max_len when used)
      prefix_tokens=256,    # the document's start kept in a prompt (teacher.prompt.prefix_tokens)
      label_noise=0.1,      # probability each training label is flipped (the annotator's noise)
      world_pairs=0,        # training pairs taken from the world (0 = all)
      heldout_items=48,     # held-out items per axis measured (0 = all)
      eval_every=0,         # held-out agreement every N steps too (0 = before and after only)
      log_every=5,          # progress line / metrics.jsonl interval
      checkpoint_every=20,  # checkpoint interval (a killed run resumes from the newest)
      human_budget=0,       # training items that keep their human labels (0 = all; hybrid.py)
      ai_labels="none",     # the rest: 'none' (left out) | 'self' (this model's log-prob verdicts,
                            # before training) | another judge directory's verdicts
  )
  return c
