"""The embedded teacher: the synthetic world's own small judge and rewriter, and its recipe.

It stands for the strong post-trained teacher of the paper on the synthetic world, where the
oracles can check every verdict. Everything here is about that one teacher; the general
teacher layer (`earlyrl_jax/teacher/`) serves any model, this one included.

  job        mode='teacher': tokenizer, pretraining, SFT, the rewriter's GRPO, held-out report
  surprise   where the teacher's own LM confidently expected something else (its judge's mix)
  editor     the edit rewriter: keep or drop each sentence (the world's rules), write anew if none
"""
