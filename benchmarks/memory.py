"""Per-device memory plan of a SIP run: does `configs/midtrain.py` fit an H100 or a TPU v5p chip?

  python benchmarks/memory.py                                   # midtrain, 64 devices FSDP
  python benchmarks/memory.py --target=tpu_v5p --mesh=fsdp=64   # a v5p-128 slice (64 chips)
  python benchmarks/memory.py --mesh=fsdp=32 --teacher_devices=32  # teacher on 32 other devices
  python benchmarks/memory.py --judge_rows=4096                 # judge sampler calls of 4096 rows
  python benchmarks/memory.py --quick                           # configs/tiny.py, seconds
  python benchmarks/memory.py --teacher_backend=openai          # a served teacher: policy only
  python benchmarks/memory.py --policy=8b                       # the policy's shape (from_checkpoint)

Why a plan and not a run: the pod is not where one finds out. Every number is per device:
- params, AdamW state, the frozen DPO reference and the teacher's params: exact, from
  `jax.eval_shape` shapes and the project's sharding rules (`parallel/mesh.py`) on the
  given mesh (each NamedSharding's shard shape);
- KV caches (rollouts: windows x K rows; the teacher's judge and rewrite calls): the
  formula rows x slots x layers x kv_heads x head_dim x 2 (k, v) x dtype bytes, with the
  rows, buckets and shardings the sampler uses, printed with the numbers;
- transients of each phase (train-step activations, sampler prefill and decode
  buffers): `memory_analysis()` of the compiled programs, compiled here on simulated CPU
  devices of the real mesh at the real width and per-device rows but fewer layers, then
  extrapolated to the real depth (the method is printed; see `residuals_per_layer` and
  `sampler_transient`).
Phases take turns (rollouts, judging, rewriting, the update), so the peak is
persistent + the largest phase. The last line is

  memory: per_device_gib=<n> fits=<true|false>

for --target. Above it, one `memory: target=...` line per target (--target's last) gives
usable memory, headroom and the largest judge call that would fit.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import math
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2 ** 30

# Usable HBM per device. H100 SXM: 80 GB (80e9 bytes) HBM3; JAX's GPU client takes 75% by
# default (XLA_PYTHON_CLIENT_MEM_FRACTION), a run raises it to 0.92 (CUDA context, NCCL
# buffers and cuBLAS workspaces need the rest). TPU v5p: 95 GiB HBM per chip; the runtime
# keeps ~5% for programs and its own buffers.
TARGETS = {
    "h100_80gb": dict(capacity=80e9, usable_frac=0.92, what="NVIDIA H100 SXM 80 GB"),
    "tpu_v5p": dict(capacity=95 * GiB, usable_frac=0.95, what="TPU v5p chip, 95 GiB HBM"),
}
AXES = ("data", "fsdp", "tensor")


class PlanError(ValueError):
  """A flag of this benchmark has a bad value; the message names it."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "midtrain.py"))
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, e.g. --set=opt.grad_accum_steps=2 (repeatable)")
  p.add_argument("--mesh", default="", help="the policy's mesh, e.g. 'fsdp=64' or "
                 "'data=2,fsdp=32,tensor=1' (default fsdp=64; --quick: fsdp=8)")
  p.add_argument("--target", default="h100_80gb", choices=sorted(TARGETS))
  p.add_argument("--capacity_gib", type=float, default=0.0,
                 help="usable GiB per device instead of the target's (0 = the target's)")
  p.add_argument("--policy", default="1b", help="the policy's shape when the config takes it from "
                 "the checkpoint (model.preset='from_checkpoint'): a preset of models/transformer.py")
  p.add_argument("--teacher_backend", default="", choices=("", "inprocess", "openai"),
                 help="'' = the config's teacher.backend; 'openai': the teacher is served on other "
                 "machines, so only the policy is on these devices")
  p.add_argument("--teacher", default="8b", help="the teacher's shape: a preset of "
                 "models/transformer.py or a config file whose `model` section is the teacher")
  p.add_argument("--teacher_dtype", default="float32", choices=("float32", "bfloat16"),
                 help="the teacher's weights and compute (sip loads HF teachers in float32)")
  p.add_argument("--teacher_devices", type=int, default=-1, help="-1 = the config's "
                 "teacher.placement; 0 = time-shared on the policy's devices; n = n other devices")
  p.add_argument("--judge_rows", type=int, default=0, help="global rows per judge sampler call "
                 "(0 = every row of one compare call, as the generative judge asks today)")
  p.add_argument("--judge_new_tokens", type=int, default=256,
                 help="generated tokens per verdict (judge.sampler_generate's default)")
  p.add_argument("--rewrite_new_tokens", type=int, default=96, help="generated tokens per rewrite (PaperRewriter: 1.15 x the suffix's + 4)")
  p.add_argument("--rewrite_rows", type=int, default=64, help="rewriter.PaperRewriter's batch_size")
  p.add_argument("--chars_per_token", type=float, default=4.0,
                 help="teacher tokenizer on English text, for prompt lengths from char limits")
  p.add_argument("--template_tokens", type=int, default=48, help="chat template around a prompt")
  p.add_argument("--layers", default="1,2", help="proxy depths compiled on CPU")
  p.add_argument("--measure", default="all", choices=("all", "none"),
                 help="'none': shapes and formulas only (no compilation; a lower bound)")
  p.add_argument("--quick", action="store_true",
                 help="configs/tiny.py as a SIP run with the embedded teacher's shape, 8 devices")
  return p


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'fsdp=64' / 'data=2,fsdp=32' -> (data, fsdp, tensor); absent axes are 1."""
  shape = dict.fromkeys(AXES, 1)
  for part in filter(None, re.split(r"[,\s]+", text.strip())):
    name, _, value = part.partition("=")
    if name not in shape or not value.isdigit() or int(value) < 1:
      raise PlanError(f"--mesh={text!r}: expected axis=size pairs over {AXES} with sizes >= 1 "
                      f"(a plan needs explicit sizes, no -1), got {part!r}")
    shape[name] = int(value)
  return tuple(shape[a] for a in AXES)


def resolve_args(argv=None) -> argparse.Namespace:
  args = build_parser().parse_args(argv)
  if args.quick:
    args.config = os.path.join(REPO, "configs", "tiny.py")
    args.teacher = os.path.join(REPO, "configs", "teacher_tiny.py")
    args.judge_new_tokens, args.rewrite_new_tokens = 32, 32
    args.mesh = args.mesh or "fsdp=8"
  args.mesh_shape = parse_mesh(args.mesh or "fsdp=64")
  args.layer_list = sorted({int(x) for x in args.layers.split(",") if x.strip()})
  if not args.layer_list or min(args.layer_list) < 1:
    raise PlanError(f"--layers={args.layers!r}: give positive depths, e.g. 1,2")
  return args


def devices_needed(args) -> int:
  return math.prod(args.mesh_shape) + max(args.teacher_devices, 0)


def _prepare_host(argv) -> None:
  """Simulated CPU devices for the whole mesh, set before jax is imported (compilation only:
  nothing of the model is allocated). The memory-optimised scheduler orders the programs as
  an accelerator's memory-aware scheduler would, not for CPU thread concurrency."""
  try:
    n = devices_needed(resolve_args(argv))
  except PlanError:
    return  # main() reports it
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
  os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={n} "
                             "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


if __name__ == "__main__":
  _prepare_host(sys.argv[1:])
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.ad_checkpoint  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from flax import nnx  # noqa: E402

from earlyrl_jax import configs  # noqa: E402
from earlyrl_jax.models import transformer as T  # noqa: E402
from earlyrl_jax.parallel import mesh as mesh_lib  # noqa: E402
from earlyrl_jax.sampling import sampler as sampler_lib  # noqa: E402
from earlyrl_jax.teacher.prompts import markup as prompts_lib  # noqa: E402
from earlyrl_jax.train import sip  # noqa: E402
from earlyrl_jax.train import state as state_lib  # noqa: E402
from earlyrl_jax.train import steps as steps_lib  # noqa: E402


# --------------------------------------------------------------------------- exact: shapes x shardings


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (each leaf's shard shape).

  With even splits (what the mesh checks demand) every device holds the same amount.
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def state_bytes(model_cfg, tx, mesh) -> dict[str, int]:
  """Per-device bytes of the train state's parts: params, opt_state (AdamW mu, nu, counts), step+rng."""
  _, abs_state, _ = state_lib.abstract_train_state(model_cfg, tx, mesh)
  return {"params": shard_bytes(abs_state.params), "opt_state": shard_bytes(abs_state.opt_state),
          "step_rng": shard_bytes((abs_state.step, abs_state.rng))}


def abstract_params(model_cfg, mesh):
  """(graphdef, sharded abstract params) of a model on `mesh` (how a teacher is loaded)."""
  graphdef, abs_params = T.split_abstract(model_cfg)
  return graphdef, mesh_lib.with_shardings(abs_params, mesh_lib.state_shardings(abs_params, mesh))


# --------------------------------------------------------------------------- formulas: KV caches


@dataclasses.dataclass
class CacheShape:
  """One sampler call as the sampler lays it out: prompt rows x K samples, P + T cache slots."""
  what: str
  prompts: int       # global prompt rows, padded to the data-parallel size
  samples: int       # K (rows of the decode = prompts x K)
  prompt_len: int    # P: the prompt bucket
  new_tokens: int    # T: the decode bucket
  dp: int            # data-parallel size of the mesh that runs it

  @property
  def slots(self) -> int:
    return self.prompt_len + self.new_tokens

  @property
  def rows_per_device(self) -> int:
    return self.prompts * self.samples // self.dp


def cache_shape(what: str, model_cfg, mesh, prompts: int, prompt_tokens: int, new_tokens: int,
                samples: int = 1) -> CacheShape:
  """The buckets `Sampler.sample` picks for these prompts (sampling/sampler.py)."""
  dp = mesh_lib.data_parallel_size(mesh)
  max_len = model_cfg.max_seq_len
  if prompt_tokens + new_tokens > max_len:  # the judge / rewriter prompt encoders cut to fit
    prompt_tokens = max(1, max_len - new_tokens)
  P = min(sampler_lib._bucket(prompt_tokens, sampler_lib.DEFAULT_PROMPT_BUCKETS), max_len - new_tokens)
  Tn = min(sampler_lib._pow2_at_least(new_tokens), max_len - P)
  return CacheShape(what, -(-prompts // dp) * dp, samples, P, Tn, dp)


def kv_cache_bytes(model_cfg, cs: CacheShape, mesh) -> tuple[int, str]:
  """(bytes per device, the formula) of a KVCache (models/transformer.py: k, v per layer
  [rows, slots, kv_heads, head_dim] in the compute dtype, sharded by CACHE_AXES, plus int32
  segment ids [rows, slots])."""
  item = jnp.dtype(model_cfg.compute_dtype).itemsize
  rows = cs.prompts * cs.samples
  kv = jax.ShapeDtypeStruct((rows, cs.slots, model_cfg.n_kv_heads, model_cfg.head_dim),
                            model_cfg.compute_dtype,
                            sharding=mesh_lib.named_sharding(mesh, T.CACHE_AXES))
  seg = jax.ShapeDtypeStruct((rows, cs.slots), jnp.int32,
                             sharding=mesh_lib.named_sharding(mesh, ("batch", "cache_length")))
  total = 2 * model_cfg.n_layers * shard_bytes(kv) + shard_bytes(seg)
  split = mesh.shape["tensor"]
  formula = (f"{cs.rows_per_device} rows x {cs.slots} slots x {model_cfg.n_layers} layers x "
             f"{model_cfg.n_kv_heads}{f'/{split}' if split > 1 else ''} kv_heads x "
             f"{model_cfg.head_dim} x 2 (k,v) x {item} B + int32 segment ids")
  return total, formula


# --------------------------------------------------------------------------- measured: compiled programs


def program_bytes(compiled, resident: int = 0) -> int:
  """Live bytes of one compiled program minus what stays resident anyway (e.g. its weights)."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes - resident)


def fit_line(points: dict[int, float]) -> tuple[float, float]:
  """(a, b) of y = a + b * layers through the measured depths (least squares)."""
  xs = np.array(sorted(points), float)
  ys = np.array([points[int(x)] for x in xs], float)
  if len(xs) == 1:
    return float(ys[0]), 0.0
  b, a = np.polyfit(xs, ys, 1)
  return float(a), float(b)


def sampler_transient(model_cfg, mesh, cs: CacheShape, *, greedy: bool, top_p: bool,
                      layer_list) -> tuple[int, str]:
  """(bytes, which program) a sampler call needs per device beyond its weights and its KV cache.

  Prefill and decode are compiled as `Sampler.sample` builds them at each proxy depth. What
  grows with depth is the cache (exactly known: the K-fold cache, plus the prompts' own
  cache that the prefill fans out); the rest is the largest single-layer or vocabulary
  buffer, the same at any depth. So the transient is the largest (program - both caches)
  over the proxy depths, and the phase at full depth is transient + both caches at full
  depth (for a decode-bound call that counts the prompts' cache, 1/K of the total, once more).
  """
  best, which = 0, "-"
  for L in layer_list:
    mc = dataclasses.replace(model_cfg, n_layers=L)
    _, params = abstract_params(mc, mesh)
    resident = shard_bytes(params)
    kv = kv_cache_bytes(mc, cs, mesh)[0]
    fan_in = kv_cache_bytes(mc, dataclasses.replace(cs, samples=1), mesh)[0] if cs.samples > 1 else 0
    s = sampler_lib.Sampler(T.abstract_model(mc), mesh=mesh)
    rows = lambda n, *tail, dt=jnp.int32: jax.ShapeDtypeStruct(
        (n,) + tail, dt, sharding=mesh_lib.named_sharding(mesh, ("batch",) + (None,) * len(tail)))
    B, K, P, Tn = cs.prompts, cs.samples, cs.prompt_len, cs.new_tokens
    pre = sampler_lib._Static(B, P, P + Tn, Tn, K, 0, False, False, False)
    dec = sampler_lib._Static(B * K, P, P + Tn, Tn, K, 0, greedy, top_p and not greedy, False)
    prompt_args = (rows(B, P), rows(B, P), rows(B, P))
    with jax.set_mesh(mesh):
      c_pre = s._prefill.lower(pre, params, *prompt_args).compile()
      logits, cache = jax.eval_shape(s._prefill, pre, params, *prompt_args)
      logits, cache = mesh_lib.with_shardings((logits, cache), c_pre.output_shardings)
      stops = rows(B * K, sampler_lib.MIN_STOP_SLOTS, sampler_lib.MIN_STOP_WIDTH)
      c_dec = s._decode.lower(dec, params, cache, logits, jax.random.key(0), rows(B * K),
                              rows(B * K), rows(B * K, dt=jnp.bool_), stops, jnp.float32(1.0),
                              jnp.float32(1.0)).compile()
    for name, b in (("prefill", program_bytes(c_pre, resident) - kv - fan_in),
                    ("decode", program_bytes(c_dec, resident) - kv - fan_in)):
      if b > best:
        best, which = b, f"{name} at {L} layer(s)"
  return best, which


def _residual_bytes(text: str) -> int:
  """Sum of `jax.ad_checkpoint.print_saved_residuals` lines that are not arguments."""
  item = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "u32": 4, "bool": 1, "i8": 1, "u8": 1,
          "f64": 8, "i64": 8}
  total = 0
  for line in text.splitlines():
    m = re.match(r"(\w+)\[([\d,]*)\] (.*)", line)
    if not m or m.group(3).startswith("from the argument"):
      continue
    total += math.prod(int(x) for x in m.group(2).split(",") if x) * item.get(m.group(1), 4)
  return total


def residuals_per_layer(model_cfg, objective, spec, dp: int) -> int:
  """Bytes the forward pass saves for the backward pass per extra layer, per device.

  Counted by JAX (`print_saved_residuals`) on the loss of one device's rows, so it honours
  `model.remat` exactly and does not depend on any backend's scheduler.
  """
  local = {k: jax.ShapeDtypeStruct((s.shape[0] // dp,) + s.shape[1:], s.dtype) for k, s in spec.items()}
  totals = []
  for L in (1, 2):
    graphdef, params = T.split_abstract(dataclasses.replace(model_cfg, n_layers=L))

    def loss(p, batch):   # the reference's log-probs are a batch field (train/objectives.py)
      terms, _ = objective(nnx.merge(graphdef, p), batch)
      return steps_lib.combine(terms, objective.coefs)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      jax.ad_checkpoint.print_saved_residuals(loss, params, local)
    totals.append(_residual_bytes(buf.getvalue()))
  return totals[1] - totals[0]


def train_step_temp(cfg, model_cfg, mesh, spec, objective, layer_list) -> dict[int, dict[str, int]]:
  """memory_analysis of the compiled SIP step at each proxy depth: temp and argument bytes."""
  out = {}
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  for L in layer_list:
    mc = dataclasses.replace(model_cfg, n_layers=L)
    graphdef, abs_state, shardings = state_lib.abstract_train_state(mc, tx, mesh)
    # The reference is not an argument of the step: its log-probs come with the batch.
    step = steps_lib.make_train_step(
        graphdef, tx, state_lib.lr_schedule(cfg.opt, cfg.num_steps), mesh, shardings, spec,
        loss_fn=objective, coefs=objective.coefs, grad_accum_steps=cfg.opt.grad_accum_steps)
    with jax.set_mesh(mesh):
      m = step.lower(abs_state, spec, {}).compile().memory_analysis()
    out[L] = {"temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes}
  return out


# --------------------------------------------------------------------------- the plan


def load_plan_config(args):
  cfg = configs.load_config_file(args.config)
  if args.quick:
    cfg.mode, cfg.sip.recipe = "sip", "dpo"
  from earlyrl_jax.checkpoint_shape import FROM_CHECKPOINT, SHAPE_FIELDS
  if cfg.model.get("preset") == FROM_CHECKPOINT and not cfg.init.get("params_from"):
    try:   # no checkpoint to read here: the shape of --policy (max_seq_len stays the windows')
      shape = T.preset(args.policy)
    except ValueError as e:
      raise PlanError(f"--policy={args.policy!r}: {e}") from None
    for k in SHAPE_FIELDS:
      if cfg.model.get(k) is None:
        cfg.model[k] = getattr(shape, k) if getattr(shape, k) is not None else {}
  for item in args.set:
    key, sep, raw = item.partition("=")
    if not sep:
      raise PlanError(f"--set={item!r}: expected FIELD=VALUE")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = cfg
    *path, last = key.split(".")
    for part in path + [last]:
      if not hasattr(node, "keys") or part not in node.keys():
        raise PlanError(f"--set={item!r}: the config has no field {key!r}")
      if part != last:
        node = node[part]
    node[last] = value
  return cfg


def teacher_model_config(args):
  if os.path.exists(args.teacher):
    mc = configs.model_config(configs.load_config_file(args.teacher))
  else:
    try:
      mc = T.preset(args.teacher)
    except ValueError as e:
      raise PlanError(f"--teacher={args.teacher!r}: {e}") from None
  return dataclasses.replace(mc, dtype=args.teacher_dtype, param_dtype=args.teacher_dtype,
                             remat=False)


def teacher_label(args) -> str:
  return os.path.basename(args.teacher) if os.path.exists(args.teacher) else args.teacher


def judge_rows_per_call(cfg, C: int, windows: int, teacher_devices: int) -> int:
  """Rows of the largest judge sampler call of one step: the rows of one tournament round,
  generated at most 128 per teacher device at a time (`judge.sampler_generate`'s chunks)."""
  s = cfg.sip
  scheme = s.judge_scheme
  if scheme == "all_pairs":
    pairs = C * (C - 1) // 2
  elif scheme == "pivot":
    pairs = C - 1
  else:  # adaptive: a round asks at most the budget (an upper bound for one call)
    from earlyrl_jax.teacher.tournament import default_budget
    pairs = min(C * (C - 1) // 2, int(s.get("judge_budget", 0) or 0) or default_budget(C))
  orders = 2 if s.both_orders else 1
  pairwise_axes = [a for a, w in s.judge_axes.items() if a != "safety" and w > 0]
  pairwise = windows * pairs * orders if pairwise_axes else 0
  rows = max(pairwise, windows * C)  # pointwise safety asks every candidate once
  return min(rows, 128 * teacher_devices)


def prompt_tokens(chars: int, args, template: bool) -> int:
  return math.ceil(chars / args.chars_per_token) + 1 + (args.template_tokens if template else 0)


def teacher_served(cfg, args) -> bool:
  """The teacher runs behind an OpenAI-compatible server on other machines (teacher.backend)."""
  kind = args.teacher_backend or (cfg.get("teacher") or {}).get("backend", "inprocess")
  return kind == "openai"


def teacher_placement(cfg, args) -> int:
  """Devices of the teacher's own sub-mesh (0 = time-shared on the policy's devices).

  The teacher's sub-mesh is planned as FSDP over those devices (teacher.mesh's default).
  """
  if args.teacher_devices >= 0:
    return args.teacher_devices
  t = cfg.get("teacher")
  if t is not None and t.get("placement", "shared") == "submesh":
    return int(t.get("devices", 0))
  return 0


@dataclasses.dataclass
class Line:
  name: str
  bytes: float
  group: str      # 'all' (time-shared), or 'policy' / 'teacher' devices
  phase: str      # 'persistent' or the phase it lives in
  how: str


def plan(args) -> dict:
  """Every component per device, the phases, and the peak (bytes)."""
  cfg = load_plan_config(args)
  if cfg.mode != "sip":
    raise PlanError(f"{args.config}: mode={cfg.mode!r}; the plan is for mode='sip'")
  served = teacher_served(cfg, args)
  n_teacher = 0 if served else teacher_placement(cfg, args)
  if served and cfg.get("teacher") is not None:
    cfg.teacher.placement = "shared"   # nothing of the teacher is placed on these devices
  need = math.prod(args.mesh_shape) + n_teacher
  if jax.device_count() < need:
    raise PlanError(f"--mesh={args.mesh} and {n_teacher} teacher devices need {need} devices, "
                    f"this process has {jax.device_count()} (run the script directly: it "
                    "simulates them)")
  devices = jax.devices()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = args.mesh_shape
  if cfg.data.corpus == "files" and not cfg.data.train_files:
    cfg.data.train_files = "<planned>"  # required fields of a real run, unused here
  if cfg.data.tokenizer == "hf" and not cfg.data.tokenizer_path:
    cfg.data.tokenizer_path = "<planned>"
  configs.validate(cfg, num_devices=math.prod(args.mesh_shape), process_count=1)
  mesh = mesh_lib.make_mesh(args.mesh_shape, devices[:math.prod(args.mesh_shape)])
  tmesh = mesh if not n_teacher else mesh_lib.make_mesh((1, n_teacher, 1), devices[-n_teacher:])
  mc = configs.model_config(cfg)
  tmc = teacher_model_config(args)
  s, d = cfg.sip, cfg.data
  objective = sip.objective_from_config(s)
  K = int(s.num_rollouts)
  with_rewrite = s.rewrite != "none"
  C = 1 + int(with_rewrite) + K
  producer = SimpleNamespace(layout=sip.window_layout(cfg, objective), C=C, objective=objective)
  spec = sip.batch_spec(producer, d.batch_size)
  dp = mesh_lib.data_parallel_size(mesh)
  lines: list[Line] = []
  notes: list[str] = []
  # Device groups: 'all' when policy and teacher time-share every device.
  pgroup, tgroup = ("policy", "teacher") if n_teacher else ("all", "all")

  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  sb = state_bytes(mc, tx, mesh)
  lines.append(Line(f"params ({mc.param_dtype} masters)", sb["params"], pgroup, "persistent",
                    "shapes x shardings"))
  lines.append(Line("optimizer state (AdamW mu, nu, count) + step, rng",
                    sb["opt_state"] + sb["step_rng"], pgroup, "persistent", "shapes x shardings"))
  if objective.needs_reference:
    lines.append(Line("DPO reference (frozen copy of the params)", sb["params"], pgroup,
                      "persistent", "shapes x shardings (sharded like the params)"))
  needs_teacher = (s.judge == "teacher" or s.rewrite == "online") and not served
  if served:
    notes.append("teacher.backend='openai': the teacher (weights, KV caches, judge and rewrite "
                 "programs) runs on the server's machines; these devices hold the policy only, "
                 "and judging/rewriting time is spent waiting on HTTP, not device memory")
  if needs_teacher:
    _, tparams = abstract_params(tmc, tmesh)
    where = f"{n_teacher} own devices" if n_teacher else "the policy's devices, time-shared"
    lines.append(Line(f"teacher params ({teacher_label(args)}, {tmc.param_dtype})", shard_bytes(tparams),
                      tgroup, "persistent", f"shapes x shardings, FSDP over {where}"))

  measure = args.measure == "all"
  L = mc.n_layers
  # ---- the update: the compiled SIP step
  batch_dev = sum(math.prod(v.shape) * jnp.dtype(v.dtype).itemsize for v in spec.values()) // dp
  lines.append(Line("SIP batch (rows of the step)", batch_dev, pgroup, "update", "batch spec / dp"))
  if measure:
    temps = train_step_temp(cfg, mc, mesh, spec, objective, args.layer_list)
    for Lp, m in temps.items():  # the compiled step's arguments: state + batch
      sp = state_bytes(dataclasses.replace(mc, n_layers=Lp), tx, mesh)
      state_ref = sum(sp.values())
      ok = 0 <= m["args"] - state_ref <= batch_dev  # jit drops batch fields the loss never reads
      notes.append(f"check at {Lp} layer(s): the compiled step's arguments are {m['args']} B per "
                   f"device; state from shapes x shardings {state_ref} B + batch "
                   f"<= {batch_dev} B: {'agree' if ok else 'MISMATCH'}")
    res = residuals_per_layer(mc, objective, spec, dp)
    grads = (sb["params"] - state_bytes(dataclasses.replace(mc, n_layers=max(L - 1, 1)), tx,
                                        mesh)["params"]) if L > 1 else 0
    l0 = min(temps)
    act = temps[l0]["temp"] + (L - l0) * (res + grads)
    lines.append(Line("train-step activations + grads (extrapolated)", act, pgroup, "update",
                      f"XLA:CPU temp at {l0} layer(s) {temps[l0]['temp'] / GiB:.2f} GiB + "
                      f"{L - l0} x ({res / GiB:.3f} GiB saved residuals + {grads / GiB:.4f} GiB "
                      "grads) per layer"))
    a, b = fit_line({Lp: m["temp"] for Lp, m in temps.items()})
    cpu_fit = a + b * L
    measured = ", ".join(f"{Lp} layers {m['temp'] / GiB:.2f} GiB" for Lp, m in temps.items())
    notes.append(
        f"train step, XLA:CPU temp at {measured}"
        f"; the CPU line a + b*layers gives {cpu_fit / GiB:.2f} GiB at {L} layers (b = {b / GiB:.2f} "
        f"GiB/layer). It is not the plan's figure: XLA:CPU runs the upper layers' recomputation "
        f"before the backward pass reaches them and holds their attention buffers until it does "
        f"(seen in its buffer live ranges), which rematerialisation exists to avoid; the plan "
        f"adds what JAX saves per layer instead "
        f"(model.remat={mc.remat}: {res / GiB:.3f} GiB per device) and the layer's f32 grads. "
        f"Check on the device: the loop prints the compiled step's memory before step 0.")
  else:
    notes.append("--measure=none: activations and sampler transients are not included "
                 "(the peak is a lower bound)")

  def sampler_lines(label, model_cfg, m, cs, group, phase, greedy, top_p=False, rows_note=""):
    kv, formula = kv_cache_bytes(model_cfg, cs, m)
    lines.append(Line(f"{label} KV cache", kv, group, phase, rows_note + formula))
    if cs.samples > 1:
      fan_in = kv_cache_bytes(model_cfg, dataclasses.replace(cs, samples=1), m)[0]
      lines.append(Line(f"{label} prompts' cache (prefill, before the K-fold fan-out)", fan_in,
                        group, phase, "the same formula at 1 sample"))
    if measure:
      t, which = sampler_transient(model_cfg, m, cs, greedy=greedy, top_p=top_p,
                                   layer_list=args.layer_list)
      lines.append(Line(f"{label} prefill/decode buffers", t, group, phase,
                        f"compiled sampler: largest at {which}"))

  # ---- rollouts: the policy's sampler, windows x K rows
  roll = cache_shape("rollouts", mc, mesh, d.batch_size, int(d.prefix_len), int(d.suffix_len), K)
  if K:
    sampler_lines("rollout", mc, mesh, roll, pgroup, "rollout", float(s.temperature) == 0.0,
                  float(s.get("top_p", 1.0)) < 1.0)
  # ---- the teacher: judge (generative: reason, then a verdict line) and rewrites
  js = None
  if s.judge == "teacher" and not served:
    pair_chars = len(prompts_lib.generative_pair_prompt("x" * 4000, "x" * 4000, "x" * 4000,
                                                        "factuality", "x" * 4000))
    rows = args.judge_rows or judge_rows_per_call(cfg, C, d.batch_size, tmesh.size)
    js = cache_shape("judge", tmc, tmesh, rows, prompt_tokens(pair_chars, args, True),
                     args.judge_new_tokens)
    sampler_lines("judge", tmc, tmesh, js, tgroup, "judge", True,
                  rows_note=f"{js.prompts} rows per call / {js.dp} = ")
  if s.rewrite == "online" and not served:
    rw_chars = len(prompts_lib.rewrite_prompt("x" * 4000, "x" * 4000))
    rs = cache_shape("rewrite", tmc, tmesh, args.rewrite_rows, prompt_tokens(rw_chars, args, False),
                     args.rewrite_new_tokens)
    sampler_lines("rewrite", tmc, tmesh, rs, tgroup, "rewrite", True)

  groups = {}
  for g in sorted({ln.group for ln in lines}):
    persistent = sum(ln.bytes for ln in lines if ln.group == g and ln.phase == "persistent")
    phases = {}
    for ln in lines:
      if ln.group == g and ln.phase != "persistent":
        phases[ln.phase] = phases.get(ln.phase, 0) + ln.bytes
    top = max(phases, key=phases.get) if phases else "-"
    groups[g] = dict(persistent=persistent, phases=phases, top=top,
                     peak=persistent + (phases[top] if phases else 0))
  judge_line = [ln for ln in lines if ln.phase == "judge"]
  return dict(cfg=cfg, args=args, mesh=mesh, tmesh=tmesh, n_teacher=n_teacher, mc=mc, tmc=tmc,
              served=served,
              lines=lines, groups=groups, notes=notes, roll=roll, K=K, C=C,
              judge=js,
              judge_bytes=sum(ln.bytes for ln in judge_line),
              peak=max(g["peak"] for g in groups.values()))


def usable_bytes(target: str, capacity_gib: float = 0.0) -> float:
  t = TARGETS[target]
  return capacity_gib * GiB if capacity_gib else t["capacity"] * t["usable_frac"]


def judge_rows_that_fit(p: dict, usable: float) -> int:
  """Largest global judge rows per call (a multiple of the teacher's dp) that fit, about:
  the judge phase scales with its rows (cache, logits and attention are all per row)."""
  js = p["judge"]
  if js is None or p["judge_bytes"] <= 0:
    return 0
  g = p["groups"]["teacher" if p["n_teacher"] else "all"]
  others = max([v for k, v in g["phases"].items() if k != "judge"] + [0])
  free = usable - g["persistent"]
  if free < others:
    return 0
  per_row = p["judge_bytes"] / js.rows_per_device
  return int(free // per_row) * js.dp


def report(p: dict) -> list[str]:
  args, cfg, mc, tmc = p["args"], p["cfg"], p["mc"], p["tmc"]
  mesh, tmesh = p["mesh"], p["tmesh"]
  out = []
  shape = lambda m: " ".join(f"{k}={v}" for k, v in m.shape.items())
  out.append(f"memory plan: {os.path.relpath(args.config, REPO)} | policy {mc.num_params() / 1e6:.1f}M "
             f"params, {mc.n_layers} layers, {mc.dtype} compute | mesh {shape(mesh)} "
             f"({mesh.devices.size} devices) | " + (
                 "teacher served over HTTP (teacher.backend='openai'), not on these devices"
                 if p["served"] else
                 f"teacher {tmc.num_params() / 1e6:.1f}M params ({teacher_label(args)}, {tmc.dtype}) on "
                 + (f"its own mesh {shape(tmesh)}" if p["n_teacher"] else
                    "the same devices (time-shared)")))
  s, d = cfg.sip, cfg.data
  out.append(f"step: {d.batch_size} windows of {d.prefix_len} + {d.suffix_len} tokens, "
             f"K={p['K']} rollouts, {p['C']} candidates, recipe {s.recipe}, judge {s.judge} "
             f"({s.judge_scheme}), rewrite {s.rewrite}, grad_accum_steps {cfg.opt.grad_accum_steps}")
  out.append(f"{'component':58s} {'GiB/device':>10s}  {'devices':8s} {'phase':10s} how")
  for ln in p["lines"]:
    out.append(f"{ln.name:58s} {ln.bytes / GiB:10.3f}  {ln.group:8s} {ln.phase:10s} {ln.how}")
  for g, v in p["groups"].items():
    phases = ", ".join(f"{k} {b / GiB:.2f}" for k, b in v["phases"].items())
    out.append(f"{g} devices: persistent {v['persistent'] / GiB:.2f} GiB + largest phase "
               f"({v['top']}) = {v['peak'] / GiB:.2f} GiB   [phases: {phases}]")
  out.append("assumptions:")
  rs = p["roll"]
  out.append("  - phases take turns (rollouts, judge, rewrite, update): peak = persistent + the "
             "largest phase; allocator fragmentation and runtime reserves are in the usable fraction")
  out.append("  - usable per device: " + "; ".join(
      f"{t} {v['usable_frac']:g} x {v['capacity'] / GiB:.1f} GiB" for t, v in TARGETS.items())
      + " (H100: XLA_PYTHON_CLIENT_MEM_FRACTION=0.92; JAX's default 0.75 leaves 55.9 GiB)")
  out.append(f"  - rollouts: {rs.prompts} prompts padded to dp={rs.dp} x K={rs.samples}, prompt "
             f"bucket {rs.prompt_len} + decode bucket {rs.new_tokens} slots (sampler.py buckets)")
  if p["judge"] is not None:
    js = p["judge"]
    origin = ("--judge_rows" if args.judge_rows
              else "one tournament round, windows x pairs x 2 orders, in chunks of 128 rows "
              "per teacher device (judge.sampler_generate)")
    out.append(f"  - judge: an HF instruct teacher judges generatively (reason, then 'Verdict:'): "
               f"{js.prompts} rows per sampler call ({origin}), "
               f"prompts <= {js.prompt_len} tokens ({args.chars_per_token:g} chars/token at the "
               f"prompt char limits + {args.template_tokens} template tokens), "
               f"{js.new_tokens} new tokens")
  if not p["served"]:
    out.append(f"  - teacher weights and compute in {tmc.dtype} (teacher_setup.load_teacher_for loads HF "
               "weights without a dtype: float32); --teacher_dtype=bfloat16 halves both")
  out.append("  - activations: the XLA:CPU compile stands in for the accelerator's (same HLO, "
             "shardings and per-device shapes; its fusion differs)")
  out.extend(f"  - {n}" for n in p["notes"])
  return out


def main(argv=None) -> dict:
  args = resolve_args(argv)
  p = plan(args)
  for line in report(p):
    print(line)
  peak = p["peak"]
  verdicts = {}
  for t in sorted(TARGETS, key=lambda t: t == args.target):  # --target last
    usable = usable_bytes(t, args.capacity_gib if t == args.target else 0.0)
    fits = peak <= usable
    verdicts[t] = fits
    extra = ""
    if p["judge"] is not None:
      extra = f" judge_rows_per_call_that_fit={judge_rows_that_fit(p, usable)}"
    print(f"memory: target={t} ({TARGETS[t]['what']}) usable_gib={usable / GiB:.2f} "
          f"per_device_gib={peak / GiB:.2f} headroom_gib={(usable - peak) / GiB:.2f} "
          f"fits={str(fits).lower()}{extra}")
  print(f"memory: per_device_gib={peak / GiB:.2f} fits={str(verdicts[args.target]).lower()}")
  return p


if __name__ == "__main__":
  main()
