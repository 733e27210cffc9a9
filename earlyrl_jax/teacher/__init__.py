"""The general teacher layer: judging and rewriting with any model (embedded, HF instruct, served).

  prompts      prompt families, versioned (text helpers; the embedded teacher's markup family)
  judges       the Judge interface and its kinds: LM verdict log-probs (embedded), the paper's
               formats read from answer log-probs or generated answers (any instruct model), ground truth
               (oracles passed in), one judge per axis, TRL's reward-function shape
  tournament   per-candidate rewards from any Judge (all pairs / pivot / adaptive)
  rewriter     the paper's rewriter for instruct models, the cut's whitespace rule (every
               rewriter), the paper's rewriter reward, GRPO pieces
  backends     where the teacher's model runs (the Backend contract)
  teacher      the Teacher bundle, its judge and rewriter kinds, save/load (embedded or HF directory)

Nothing here imports the trainer (`train/`) or the synthetic world (`world/`). The embedded
teacher's own recipe (its training job, surprise, claims verdict, editor) is `earlyrl_jax/embedded/`.
"""
from __future__ import annotations

from earlyrl_jax.teacher.judges.base import Judge  # noqa: F401
from earlyrl_jax.teacher.judges.generative import GenerativeJudge  # noqa: F401
from earlyrl_jax.teacher.judges.lm import LMJudge  # noqa: F401
from earlyrl_jax.teacher.judges.logprob import LogProbJudge  # noqa: F401
from earlyrl_jax.teacher.judges.oracle import AxisJudges, OracleJudge  # noqa: F401
from earlyrl_jax.teacher.judges.trl import RewardFunction  # noqa: F401
from earlyrl_jax.teacher.prompts import AXES  # noqa: F401
from earlyrl_jax.teacher.rewriter import (PaperRewriter, group_advantages, place_at_cut,  # noqa: F401
                                         rewriter_reward)
from earlyrl_jax.teacher.teacher import Teacher, load_teacher  # noqa: F401
