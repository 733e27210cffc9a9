"""A Bradley-Terry reward model: the judge's backbone with a scalar head per axis (method 'bt').

The baseline the paper's verdict-trained judges are compared against (issue 39 item 2): no
prompt, no verdict tokens; the backbone reads `prefix + candidate` as raw text (the prefix's
first `prefix_tokens` tokens, then the candidate whole) and its final-norm hidden state at the
last token goes through a linear head, one row per axis:

    r_axis(prefix, x) = w_axis · h_last + b_axis            (h_last: [D], w: [A, D], b: [A])

One head per axis (not one head with an axis prompt): the axes disagree on purpose (a fluent
unsafe text is good quality, bad safety), and a row each keeps them apart at the cost of A·(D+1)
parameters. Losses, on the same head:

    pair (chosen c, rejected j)   -log σ(r(c) - r(j))         (Bradley-Terry)
    pointwise safety item         -log σ(±r_safety(x))        (+ for 'safe', - for 'unsafe')

so P(a better) = σ(r_a - r_b) and P(unsafe) = σ(-r_safety): `RewardJudge` serves both through
the interface `agreement.heldout_agreement` asks of any judge, and held-out agreement is
sign(r_a - r_b) against the label, comparable with the SFT/GRPO judges'. Factuality's reference
is not read (the head scores the candidate alone).

Saved as the backbone's HF directory plus `bt_head.npz` (w, b, axes) beside it
(`load_reward_model`). The directory loads as `teacher.path`, but that judge asks the LM for a
verdict the BT training never taught: use the reward model through `RewardJudge`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.judge_train import examples as E
from earlyrl_jax.judge_train.data import Point
from earlyrl_jax.models.transformer import Transformer
from earlyrl_jax.teacher.backends.base import prompt_ids

HEAD_FILE = "bt_head.npz"


class RewardModel(nnx.Module):
  """The backbone (a Transformer, LM head unused) and a linear head [A, D] + bias [A]."""

  def __init__(self, backbone: Transformer, num_axes: int, *, rngs: nnx.Rngs):
    self.backbone = backbone
    d = backbone.cfg.d_model
    # Small random rows: an untrained head ranks at chance, not all ties. Sharding names are
    # metadata only (placed by the train state's shardings), as the backbone's are.
    with nnx.use_eager_sharding(False):
      self.head_w = nnx.Param(jax.random.normal(rngs.params(), (num_axes, d), jnp.float32) / np.sqrt(d),
                              out_sharding=(None, "embed"))
      self.head_b = nnx.Param(jnp.zeros((num_axes,), jnp.float32), out_sharding=(None,))

  def rewards(self, tokens_BxT, last_B, axis_B, *, positions=None, segment_ids=None):
    """float32 [B]: row b's reward on head axis_B[b], read at its last token last_B[b]."""
    h, _ = self.backbone.hidden_states(tokens_BxT, positions=positions, segment_ids=segment_ids)
    h_last = jnp.take_along_axis(h, last_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)  # [B, D]
    w = self.head_w[...][axis_B]                                                               # [B, D]
    return jnp.sum(h_last * w, axis=-1) + self.head_b[...][axis_B]


def bt_logits(r_first, r_second, is_pair, sign):
  """The logit whose -log σ is the loss: r_c - r_j for a pair (rows chosen, rejected), ±r for a
  pointwise item (its second row unused)."""
  return sign * (r_first - is_pair * r_second)


def bt_terms(model, batch, frozen=None):
  """{'bt': (Σ -log σ(logit), examples)}; the share of examples ranked right as a diagnostic.
  batch: tokens/positions/segment_ids [2B, L] (rows 2i, 2i+1 = example i's chosen, rejected),
  last [2B], axis [B], is_pair [B], sign [B]."""
  del frozen
  r = model.rewards(batch["tokens"], batch["last"], jnp.repeat(batch["axis"], 2),
                    positions=batch["positions"], segment_ids=batch["segment_ids"])
  r = r.reshape(-1, 2)
  logit = bt_logits(r[:, 0], r[:, 1], batch["is_pair"], batch["sign"])
  n = jnp.asarray(logit.shape[0], jnp.float32)
  return ({"bt": (jnp.sum(jax.nn.softplus(-logit)), n)},
          {"bt/ranked_right": (jnp.sum((logit > 0).astype(jnp.float32)), n)})


# ----------------------------------------------------------------------------------- data


def text_ids(tokenizer, prefix: str, text: str, prefix_tokens: int) -> list[int]:
  """The reward model's input: the prefix's first `prefix_tokens` tokens (0 = all), then the
  candidate whole (raw text, no chat template)."""
  pre = prompt_ids(tokenizer, prefix) if prefix else prompt_ids(tokenizer, "")
  pre = pre[:prefix_tokens] if prefix_tokens else pre
  ids = pre + list(tokenizer.encode_continuation((" " if prefix else "") + text))
  if not ids:
    raise ValueError("an empty prefix and candidate: nothing to score")
  return ids


def comparisons(items, axes) -> list[tuple]:
  """(prefix, first, second, axis, is_pair, sign) per non-tie label on `axes`: a pair's chosen
  then rejected candidate; a pointwise safety item's text (sign +1 safe, -1 unsafe)."""
  out = []
  for it in items:
    if isinstance(it, Point):
      if "safety" in axes:
        out.append((it.prefix, it.text, it.text, "safety", 0.0, 1.0 if it.safety == "safe" else -1.0))
      continue
    for axis, label in it.labels.items():
      if label == "tie" or axis not in axes:
        continue
      good, bad = (it.a, it.b) if label == "a" else (it.b, it.a)
      out.append((it.prefix, good, bad, axis, 1.0, 1.0))
  return out


def rows(seqs: list[list[int]], length: int) -> dict[str, np.ndarray]:
  """Right-padded [n, length] tokens / positions / segment_ids and each row's last index."""
  n = len(seqs)
  out = {k: np.zeros((n, length), np.int32) for k in ("tokens", "positions", "segment_ids")}
  out["last"] = np.zeros((n,), np.int32)
  for i, ids in enumerate(seqs):
    if len(ids) > length:
      raise ValueError(f"a row of {len(ids)} tokens exceeds the row length {length}")
    out["tokens"][i, :len(ids)] = ids
    out["positions"][i, :len(ids)] = np.arange(len(ids))
    out["segment_ids"][i, :len(ids)] = 1
    out["last"][i] = len(ids) - 1
  return out


def fits(tokenizer, item, prefix_tokens: int, max_len: int) -> bool:
  """Every candidate of `item` fits `max_len` whole after the kept prefix."""
  texts = [item.text] if isinstance(item, Point) else [item.a, item.b]
  return all(len(text_ids(tokenizer, item.prefix, t, prefix_tokens)) <= max_len for t in texts)


class BtBatches:
  """`Job.next_batch`: `batch_size` comparisons per step (a function of the step: resumable)."""

  def __init__(self, tokenizer, items, axes, *, prefix_tokens: int, batch_size: int, steps: int, seed: int):
    self.comps = comparisons(items, axes)
    if not self.comps:
      raise ValueError("judge_train: no labelled (non-tie) example on the asked axes to train on")
    self.axes = list(axes)
    self.seqs = [(text_ids(tokenizer, p, a, prefix_tokens), text_ids(tokenizer, p, b, prefix_tokens))
                 for p, a, b, *_ in self.comps]
    self.length = E.round_up(max(max(len(x), len(y)) for x, y in self.seqs))
    self.batch_size = int(batch_size)
    self.order = E.batch_order(len(self.comps), self.batch_size, steps, seed)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    B, L = self.batch_size, self.length
    spec = {k: jax.ShapeDtypeStruct((2 * B, L), np.int32) for k in ("tokens", "positions", "segment_ids")}
    spec["last"] = jax.ShapeDtypeStruct((2 * B,), np.int32)
    spec["axis"] = jax.ShapeDtypeStruct((B,), np.int32)
    spec["is_pair"] = jax.ShapeDtypeStruct((B,), np.float32)
    spec["sign"] = jax.ShapeDtypeStruct((B,), np.float32)
    return spec

  def __call__(self, state, step: int):
    del state
    idx = [int(i) for i in self.order[step]]
    out = rows([s for i in idx for s in self.seqs[i]], self.length)
    out["axis"] = np.array([self.axes.index(self.comps[i][3]) for i in idx], np.int32)
    out["is_pair"] = np.array([self.comps[i][4] for i in idx], np.float32)
    out["sign"] = np.array([self.comps[i][5] for i in idx], np.float32)
    return out, {}


# ----------------------------------------------------------------------------------- the model


def reward_model(backbone: Transformer, axes, seed: int) -> RewardModel:
  return RewardModel(backbone, len(axes), rngs=nnx.Rngs(params=seed))


def abstract_state(model_cfg, num_axes: int, tx, mesh):
  """(graphdef, abstract TrainState with shardings, TrainState of NamedShardings) of a
  RewardModel: `state.abstract_train_state` for the backbone plus its head."""
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.train.state import TrainState
  import optax
  graphdef, abs_params = nnx.split(nnx.eval_shape(
      lambda: RewardModel(Transformer(model_cfg, rngs=nnx.Rngs(0)), num_axes, rngs=nnx.Rngs(0))))
  param_sh = mesh_lib.state_shardings(abs_params, mesh)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  rep = mesh_lib.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, param_sh, transform_non_params=lambda _: rep)
  shardings = TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)
  abs_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abs_params,
                         opt_state=abs_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return graphdef, mesh_lib.with_shardings(abs_state, shardings), shardings


class RewardJudge:
  """The judge interface `agreement.heldout_agreement` asks: compare -> σ(r_a - r_b) on the
  axis's head, pointwise -> P(unsafe) = σ(-r_safety). `params` may be swapped (the job measures
  before and after training with one judge)."""

  def __init__(self, graphdef, params, tokenizer, axes, *, prefix_tokens: int, batch_size: int = 8):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.axes, self.prefix_tokens, self.batch_size = list(axes), int(prefix_tokens), int(batch_size)
    self._fn = jax.jit(lambda g_params, b: nnx.merge(self.graphdef, g_params).rewards(
        b["tokens"], b["last"], b["axis"], positions=b["positions"], segment_ids=b["segment_ids"]))

  def rewards(self, prefixes, texts, axis: str) -> np.ndarray:
    """float64 [n]: r_axis(prefix, text), in batches padded to one shape per length bucket."""
    seqs = [text_ids(self.tokenizer, p, t, self.prefix_tokens) for p, t in zip(prefixes, texts)]
    out = []
    for s in range(0, len(seqs), self.batch_size):
      chunk = seqs[s:s + self.batch_size]
      chunk = chunk + [chunk[0]] * (self.batch_size - len(chunk))
      b = rows(chunk, E.round_up(max(map(len, chunk))))
      b["axis"] = np.full((self.batch_size,), self.axes.index(axis), np.int32)
      out.append(np.asarray(self._fn(self.params, b), np.float64)[:len(seqs[s:s + self.batch_size])])
    return np.concatenate(out) if out else np.zeros((0,), np.float64)

  def compare(self, prefixes, a, b, *, axis: str = "quality", references=None):
    del references   # the head scores the candidate alone
    n = len(prefixes)
    r = self.rewards(list(prefixes) * 2, list(a) + list(b), axis)
    return list(1.0 / (1.0 + np.exp(-(r[:n] - r[n:]))))

  def pointwise(self, prefixes, texts):
    r = self.rewards(prefixes, texts, "safety")
    return list(1.0 / (1.0 + np.exp(r)))


def save_head(out_dir: str, params, axes) -> None:
  np.savez(os.path.join(out_dir, HEAD_FILE), w=np.asarray(params["head_w"][...]),
           b=np.asarray(params["head_b"][...]), axes=np.array(list(axes)))


def load_reward_model(path: str, *, max_len: int = 1024, prefix_tokens: int = 512) -> RewardJudge:
  """A judge directory written by method 'bt' -> a RewardJudge (backbone + bt_head.npz)."""
  from earlyrl_jax.teacher import teacher as T
  head_path = os.path.join(path, HEAD_FILE)
  if not os.path.isfile(head_path):
    raise FileNotFoundError(f"{path}: no {HEAD_FILE}; not a Bradley-Terry judge (judge_train.method='bt')")
  teacher = T.load_teacher(path, max_len=max_len)
  with np.load(head_path) as f:
    w, b, axes = f["w"], f["b"], [str(a) for a in f["axes"]]
  model = RewardModel(nnx.merge(teacher.graphdef, teacher.params), len(axes), rngs=nnx.Rngs(0))
  with nnx.use_eager_sharding(False):
    model.head_w = nnx.Param(jnp.asarray(w, jnp.float32), out_sharding=(None, "embed"))
    model.head_b = nnx.Param(jnp.asarray(b, jnp.float32), out_sharding=(None,))
  graphdef, params = nnx.split(model)
  return RewardJudge(graphdef, params, teacher.tokenizer, axes, prefix_tokens=prefix_tokens)
