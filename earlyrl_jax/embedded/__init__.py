"""The embedded teacher: the synthetic world's own small judge and rewriter, and its recipe.

It stands for the strong post-trained teacher of the paper on the synthetic world, where the
oracles can check every verdict. Everything here is about that one teacher; the general
teacher layer (`earlyrl_jax/teacher/`) serves any model, this one included.

  recipe     its inference settings (`teacher.inference`) and JudgeRecipe, its judge's one object
  judge      EmbeddedJudge: the general LM judge + its recipe + the claims verdict
  surprise   where the teacher's own LM confidently expected something else (the judge's mix)
  editor     the edit rewriter: keep or drop each sentence (the world's rules), write anew if none
  data       its training data from the world: tokenizer, packed rows, SFT examples
  training   its stages (pretrain, sft, noisy policies, grpo) as jobs of the shared loop
  report     its held-out report against the oracles
  job        mode='teacher': train (or reuse) it and write the report

`judge`, `editor`, `recipe`, `surprise` and `data` sit at the teacher layer's level (they import
no trainer); `training`, `report` and `job` are a job, above the trainer (tests/test_import_rules.py).
"""
