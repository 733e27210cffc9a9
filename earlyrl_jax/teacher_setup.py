"""The teacher a run uses: where it comes from, where it runs, trained on first use.

`teacher.path` (an embedded teacher's or an HF model's directory), or the embedded teacher of
`teacher.config`, trained once in `teacher.workdir` and reused while its config is unchanged;
placed on the policy's devices or on its own (`teacher.placement`). SIP (`sip_job.py`), the
rewrite job (`rewrite_job.py`) and the report (`tools/report.py`) all take their teacher here,
so the trainer (`train/`) never imports the embedded teacher's training job.
"""
from __future__ import annotations

import os

from earlyrl_jax import configs
from earlyrl_jax.configs import teacher_config  # noqa: F401  (the embedded teacher's config)
from earlyrl_jax.embedded import job as embedded_job
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.teacher.teacher import load_teacher, read_teacher_config
from earlyrl_jax.train import loop


def teacher_mesh(cfg, policy_mesh):
  """Where the teacher runs (`teacher.placement`).

  'shared': on the policy's mesh; judging and rewriting take turns with the update.
  'submesh': on its own devices (`teacher.devices`, laid out by `teacher.mesh`), the ones
  `loop.setup` left out of the policy's mesh, so the teacher's work can run while the
  policy's update is in flight. Candidates cross as host text, so no array ever moves
  between the two meshes.
  """
  _, devices = mesh_lib.placement_devices(cfg.get("teacher"))
  if devices is None:
    return policy_mesh
  try:
    return mesh_lib.make_mesh(mesh_lib.teacher_mesh_shape(cfg.teacher), devices)
  except mesh_lib.MeshConfigError as e:
    raise configs.ConfigError(f"teacher.mesh: {e}") from None


def check_teacher_fits(path: str, mesh, field: str) -> None:
  """The teacher's shape splits over `mesh` (checked before its weights are read)."""
  meta = read_teacher_config(path)
  try:
    if meta is not None:
      from earlyrl_jax.models.transformer import ModelConfig
      mc = ModelConfig(**meta["model"])
    else:
      from earlyrl_jax.models import hf_io
      mc = hf_io.model_config_from_hf(hf_io.read_hf_config(path))
  except Exception:  # unreadable here: load_teacher names the problem
    return
  bad = configs.model_mesh_mismatch(mc, fsdp=mesh.shape["fsdp"], tensor=mesh.shape["tensor"])
  if bad is not None:
    name, value, axis, size = bad
    raise configs.ConfigError(f"{field}.{axis}={size}: the teacher in {path} has {name}={value}, "
                              f"not divisible by it")


def teacher_workdir(cfg, workdir: str) -> str:
  """Where the embedded teacher is trained and reused: `teacher.workdir`, or WORKDIR/teacher_run."""
  return cfg.teacher.workdir or os.path.join(workdir, "teacher_run")


def load_teacher_for(cfg, workdir: str, mesh):
  """The configured teacher: `teacher.path`, or the embedded teacher (trained once, then reused).

  `mesh` is the policy's; under teacher.placement='submesh' the teacher gets its own.
  """
  tmesh = teacher_mesh(cfg, mesh)
  field = "mesh" if tmesh is mesh else "teacher.mesh"
  if cfg.teacher.path:
    path = cfg.teacher.path
    configs.check_model_dir(path, "teacher.path", teacher=True)  # its packages before its weights
  else:
    tdir = teacher_workdir(cfg, workdir)
    embedded_job.run(teacher_config(cfg), tdir)  # trains once; reused while its config is unchanged
    path = os.path.join(tdir, "teacher")
  check_teacher_fits(path, tmesh, field)
  teacher = load_teacher(path, mesh=tmesh, max_len=int(cfg.teacher.get("max_len", 0) or 0))
  if tmesh is not mesh:
    loop.log(f"teacher on its own sub-mesh {dict(tmesh.shape)} ({tmesh.devices.size} devices); "
             f"policy mesh {dict(mesh.shape)} ({mesh.devices.size} devices)")
  return teacher
