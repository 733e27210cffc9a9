"""Judges: one interface (`base.Judge`), several ways to reach a verdict.

  base        the Judge protocol, row and axis checks, the counts every judge keeps
  lm          LMJudge: verdict-token log-probs of an in-process Flax LM over the markup family
              (single-token markers: the embedded teacher), many rows per forward pass
  generative  GenerativeJudge: reason, then a verdict line (any instruct model), unparsable -> tie
  oracle      OracleJudge (ground truth from the world's oracles, passed in) and AxisJudges
              (one judge per axis)
  trl         RewardFunction: any judge in TRL's reward-function shape

Tournaments (`teacher/tournament.py`) turn any of them into per-candidate rewards. Nothing here
imports the trainer or the synthetic world: judging works without either.
"""
