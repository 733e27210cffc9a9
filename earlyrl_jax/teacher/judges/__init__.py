"""Judges: one interface (`base.Judge`), several ways to reach a verdict.

  base        the Judge protocol, row and axis checks, the counts every judge keeps
  lm          LMJudge: verdict-token log-probs of an in-process Flax LM over the markup family
              (single-token markers: the embedded teacher), many rows per forward pass
  paper       PaperJudge: the paper's formats (prompts/paper.py) over a teacher Backend, what the
              two readers below share (factuality pairs from pointwise scores)
  logprob     LogProbJudge: the answers' probabilities after a forced answer lead, one forward
              pass (the default for HF and served instruct teachers)
  generative  GenerativeJudge: reasoning, then 'Answer: ...', n samples averaged; unparsable and
              failed verdicts are counted ties, backend errors are raised
  configured  the judge a config asks for (teacher.judge_kind, teacher.prompt.*, .generative.*)
  oracle      OracleJudge (ground truth from the world's oracles, passed in) and AxisJudges
              (one judge per axis)
  trl         RewardFunction: any judge in TRL's reward-function shape

Tournaments (`teacher/tournament.py`) turn any of them into per-candidate rewards. Nothing here
imports the trainer or the synthetic world: judging works without either.
"""
