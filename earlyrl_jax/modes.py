"""The one table of jobs (`config.mode`): main.py, config validation and `--help` read it.

Each entry names the function that runs the job (imported lazily, so `--help`
and validation never import the trainer) and one line of help.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Mode:
  target: str      # "package.module:function", called as function(cfg, workdir)
  help: str        # one line for --help and error messages
  trains: bool     # builds a model, a mesh and an optimizer (validated as such)

  def load(self) -> Callable:
    module, fn = self.target.split(":")
    return getattr(importlib.import_module(module), fn)


MODES: dict[str, Mode] = {
    "pretrain": Mode("earlyrl_jax.train.loop:train", "next-token pretraining with checkpoints, "
                     "automatic resume and held-out eval", trains=True),
    "world": Mode("earlyrl_jax.world:run_world_job", "write the synthetic world (corpus, knowledge "
                  "base, eval sets, teacher supervision) to WORKDIR", trains=False),
    "generate": Mode("earlyrl_jax.generate:run_generate", "continue prompts (generate.prompt or "
                     "generate.prompt_file) with the run's newest checkpoint or an HF model "
                     "directory; JSONL out", trains=False),
    "teacher": Mode("earlyrl_jax.embedded.job:run", "train (or reuse) the embedded teacher "
                    "(judge + rewriter) into WORKDIR/teacher and write teacher_report.{json,md}",
                    trains=False),
    "report": Mode("earlyrl_jax.tools.report:run", "the paper's table in miniature: world, "
                   "teacher, then NLL / rewrite-NLL / SIP RF-NLL, DPO, PG (+ oracle judge) from one "
                   "base model; report.{md,json} and plots", trains=True),
    "sip": Mode("earlyrl_jax.sip_job:run", "self-improving pretraining: rollouts, teacher "
                "rewrites and judging, online DPO / RF-NLL / policy gradient", trains=True),
    "rewrite": Mode("earlyrl_jax.rewrite_job:run", "rewrite (and optionally judge) every window of "
                    "the corpus with the teacher into ArrayRecord shards + index (resumable), "
                    "read by sip.rewrite='precomputed'", trains=False),
    "judge_train": Mode("earlyrl_jax.judge_train.job:run", "train an HF model as the paper's judge "
                        "(SFT on the verdict or GRPO with the 0/1 agreement reward) on labelled "
                        "JSONL or the world's supervision; writes WORKDIR/judge and "
                        "judge_agreement.json (held-out agreement per axis, before and after)",
                        trains=False),
}


def help_text() -> str:
  width = max(map(len, MODES))
  return "\n".join(f"  {name:<{width}}  {m.help}" for name, m in MODES.items())
