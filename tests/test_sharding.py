"""Sharded train steps equal the single-device step; mesh/config errors are clear."""
import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train import steps as steps_lib
from tests.helpers import cpu_devices, random_lm_batch, tiny_model_config

# eps well above the smallest gradients: Adam's first step is ~lr*sign(g), which would
# turn float-rounding differences of near-zero gradients into lr-sized parameter differences.
OPT = ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                      eps=1e-4, weight_decay=0.1, grad_clip=1.0))


def _one_step(shape, devices, grad_accum=1, batch=None):
  mc = tiny_model_config()
  mesh = mesh_lib.make_mesh(shape, devices)
  tx = state_lib.make_optimizer(OPT, 10)
  sched = state_lib.lr_schedule(OPT, 10)
  graphdef, state, shardings = state_lib.init_train_state(mc, tx, mesh, seed=3)
  step = steps_lib.make_train_step(graphdef, tx, sched, mesh, shardings, steps_lib.spec_of(batch),
                                   grad_accum_steps=grad_accum, coefs={"nll": 1.0, "z_loss": 1e-4})
  with jax.set_mesh(mesh):
    new_state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), {})
  params = jax.device_get(new_state.params)
  return jax.device_get(metrics), params, new_state


@pytest.fixture(scope="module")
def reference():
  batch = random_lm_batch(8, 32, 128, seed=0)
  return batch, _one_step((1, 1, 1), cpu_devices(1), batch=batch)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_matches_single_device(reference, shape):
  batch, (m1, p1, _) = reference
  m8, p8, state = _one_step(shape, cpu_devices(8), batch=batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  # Parameters really are distributed: the embedding is split over fsdp x tensor.
  emb = state.params["embed"][...]
  assert len(emb.sharding.device_set) == 8
  if shape[1] * shape[2] > 1:
    assert emb.addressable_shards[0].data.shape != emb.shape


def test_gradient_accumulation_is_exact(reference):
  batch, (m1, p1, _) = reference
  m4, p4, _ = _one_step((2, 1, 1), cpu_devices(2), grad_accum=4, batch=batch)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)


def test_optimizer_state_follows_param_sharding():
  mesh = mesh_lib.make_mesh((1, 4, 2), cpu_devices(8))
  tx = state_lib.make_optimizer(OPT, 10)
  _, abs_state, shardings = state_lib.abstract_train_state(tiny_model_config(), tx, mesh)
  mu = shardings.opt_state[1][0].mu  # chain(clip, adamw) -> adam state
  assert mu["embed"].spec == shardings.params["embed"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")


@pytest.mark.parametrize("shape,devices,match", [
    ((3, 1, 1), 8, "needs 3 devices"),
    ((-1, 3, 1), 8, "do not divide"),
    ((-1, -1, 1), 8, "at most one axis"),
    ((0, 1, 1), 8, "positive"),
])
def test_mesh_errors(shape, devices, match):
  with pytest.raises(mesh_lib.MeshConfigError, match=match):
    mesh_lib.resolve_mesh_shape(shape, devices)


def test_logical_rules_reject_unknown_axis():
  with pytest.raises(KeyError, match="no rule"):
    mesh_lib.logical_to_spec(("embed", "not_an_axis"))
