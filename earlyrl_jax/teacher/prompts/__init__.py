"""Prompt families of the teacher, each versioned (its text is training data or a measured setting).

  text      what every family shares: sentences, clipping, character budgets (PromptLimits)
  markup    the embedded teacher's family: one-token markers, verdicts read at the prompt's end
            (pairwise, pointwise, scored, rewrite, edit, claims) and its generative variant

A family for instruct models (the paper's formats, rendered through the model's chat template)
goes beside `markup` as a module of its own with its own version string.
"""
from __future__ import annotations

AXES = ("quality", "safety", "factuality")   # the judge's axes, whatever the family
