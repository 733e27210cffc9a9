"""Train any model as judge (issue 39 item 1): `mode='judge_train'`.

    labelled JSONL (or the world's supervision, with label noise) ──data.py──▶ items
    items ──examples.py──▶ verdict examples in the paper's formats (teacher/prompts/paper.py)
    SFT on the verdict (sft.py) or GRPO with the 0/1 agreement reward (grpo.py), each a Job
    of the shared loop (train/loop.py: checkpoints, resume, progress)
    ──job.py──▶ an HF directory that `teacher.path` loads, judge_agreement.json (held out)
    method 'bt' (bradley_terry.py): the Bradley-Terry baseline, a scalar reward head per axis on
    the backbone (HF directory + bt_head.npz); hybrid.py: a budget of human labels, AI labels
    (judge_train.ai_labels) for the rest

docs/judge_training.md says what each piece does and what the numbers mean.
"""
