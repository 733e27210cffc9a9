"""Prompt families of the teacher, each versioned (its text is training data or a measured setting).

  text      what every family shares: sentences, clipping, character budgets (PromptLimits)
  markup    the embedded teacher's family: one-token markers, verdicts read at the prompt's end
            (pairwise, pointwise, scored, rewrite, edit, claims) and its generative variant

  paper     the paper's judging formats for any instruct model (safety YES/NO, quality Option 1/2,
            factuality No/Possible/Definite with a reference), rendered through the model's
            chat template, budgets in the teacher's tokens; 'logprob' and 'generative' variants
"""
from __future__ import annotations

AXES = ("quality", "safety", "factuality")   # the judge's axes, whatever the family
