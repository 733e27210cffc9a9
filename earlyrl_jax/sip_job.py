"""mode='sip': self-improving pretraining, its teacher and its rewriter through the shared loop.

    loop.setup ──▶ teacher_setup.load_teacher_for (teacher.path, or the embedded teacher)
               ──▶ rewrite_job.sip_rewriter (the teacher's, the precomputed shards', or none)
               ──▶ train/sip.sip_job ──▶ loop.train_loop

The job level composes what `train/sip.py` (the batch producer) takes as arguments, so the
trainer imports neither the rewrite job nor the embedded teacher's training.
"""
from __future__ import annotations

from typing import Any

from earlyrl_jax.rewrite_job import sip_rewriter
from earlyrl_jax.teacher_setup import load_teacher_for
from earlyrl_jax.train import loop, sip


def run(cfg, workdir: str, *, rewrite_memo: dict[str, str] | None = None) -> dict[str, Any]:
  """`mode='sip'`: self-improving pretraining (runs or resumes).

  rewrite_memo: greedy rewrites by window, shared by runs over the same windows (the report)."""
  sip.max_staleness(cfg)  # a bad value fails before anything slow
  r = loop.setup(cfg, workdir)  # the policy's mesh: every device, or those the teacher leaves
  teacher = load_teacher_for(cfg, workdir, r.mesh) if needs_bundle(cfg) else None
  return loop.train_loop(r, sip.sip_job(r, teacher, sip_rewriter(r, teacher, rewrite_memo)))


def needs_bundle(cfg) -> bool:
  """Whether the teacher's weights are loaded into this program: to judge in process, or to
  rewrite online (the rewriter runs in process). A served teacher that only judges
  (teacher.backend='openai') leaves the mesh to the policy: its judge talks to the server."""
  served = cfg.teacher.get("backend", "inprocess") != "inprocess"
  return ((cfg.sip.judge == "teacher" and not served) or cfg.sip.rewrite == "online"
          # token-level distillation: the teacher's pass over the rows (a served teacher has no
          # weights here: 'auto' then distils at sequence level, 'token' says so)
          or (cfg.sip.get("distill_coef", 0.0) > 0 and cfg.sip.get("distill_level", "auto") != "sequence"
              and not served))
