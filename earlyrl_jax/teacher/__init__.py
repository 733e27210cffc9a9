"""The teacher: judge and rewriter over any Flax LM, an embedded post-trained teacher, a ground-truth judge.

  prompts      versioned judge / rewriter prompts, untrusted text quoted and escaped
  judge        Judge protocol; LMJudge (verdict-token log-probs), OracleJudge (world oracles),
               GenerativeJudge (reason then verdict), RewardFunction (TRL reward-function shape)
  rewriter     Rewriter (compiled sampler), rewriter_reward, GRPO pieces
  teacher      Teacher bundle, save/load (embedded directory or HF directory)
  train_teacher  mode='teacher': pretrain + SFT + rewriter GRPO + held-out report
  tournament   per-candidate rewards from any Judge (all pairs / pivot / adaptive)
"""
from __future__ import annotations

from earlyrl_jax.teacher.judge import (  # noqa: F401  (light: numpy only at import time)
    AXES, GenerativeJudge, Judge, LMJudge, OracleJudge, RewardFunction)
from earlyrl_jax.teacher.rewriter import Rewriter, group_advantages, rewriter_reward  # noqa: F401
from earlyrl_jax.teacher.teacher import Teacher, load_teacher  # noqa: F401
