"""The synthetic world: knowledge base, corpus with planted defects, oracles, supervision, eval sets.

Why: self-improving pretraining needs a judge and benchmarks; on a laptop both are
replaced by ground truth. Modules, each importing only those above it:

  grammar      constants, templates, KnowledgeBase, build_kb, parse_claim
  corpus       documents with planted defects (imports grammar)
  oracles      factuality / safety / quality of any text (imports grammar)
  splits       the held-out splits: validation (every choice) and test (the final table)
  supervision  preference and rewrite examples, eval sets, write_world (imports all three)
  reasoning    two-hop items, their oracle and the thought augmenter (world.reasoning_rate;
               import it as earlyrl_jax.world.reasoning)
  principled   the principle-following reviser (import it as earlyrl_jax.world.principled)

`from earlyrl_jax import world as W` gives the public names of the first five.
"""
from __future__ import annotations

from earlyrl_jax.world.corpus import (
    Document, Sentence, clean_sentences, degrade, fact_sentence, generate_documents, join, layout,
    make_document, unsafe_passage)
from earlyrl_jax.world.grammar import (
    COLORS, CONNECTIVES, DEFECT_TYPES, EVAL_DOCS, FILLERS, HEADER, INSULT, INSULT_ADJ, INSULT_NOUN,
    KB_FILE, LOW_QUALITY_KINDS, MANIFEST, PII, PROFESSIONS, QUESTIONS, RECIPE, RELATIONS, TRAIN_GLOB,
    UNSAFE_CATEGORIES, WORD_LISTS, KnowledgeBase, build_kb, default_world_config, parse_claim)
from earlyrl_jax.world.oracles import OFF_TOPIC_THRESHOLD, Oracles, sentences_of
from earlyrl_jax.world.splits import SPLITS, TEST, VALIDATION, check_split, split_file, tuning_split
from earlyrl_jax.world.supervision import (
    corrupt_suffix, factual_probes, main, preference_example, rewrite_example, split_prefix_suffix,
    unsafe_bait, write_world)


def run_world_job(cfg, workdir: str) -> dict:
  """Mode 'world': writes `cfg.world` to WORKDIR, prints one line of counts, returns the manifest."""
  manifest = write_world(cfg.world, workdir)
  counts = " ".join(f"{k}={v}" for k, v in manifest["counts"].items())
  print(f"wrote the synthetic world to {workdir}: {counts}", flush=True)
  return manifest
