"""Mesh, logical rules and sharded training: data=2, fsdp=2, tensor=2 equals one device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_helpers
from asarm_jax import run_config
from asarm_jax import sharding
from asarm_jax import train_lib
from asarm_jax.model import param_logical_axes


def _steps(trainer, num_steps=2):
  state, losses = train_helpers.train_steps(trainer, trainer.init(0), range(num_steps))
  return losses, jax.device_get(state.params)


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  for bad in [(3, -1, 1), (2, 2, 1), (-1, -1, 1), (0, 1, 1), (8, 1)]:
    with pytest.raises(ValueError, match="mesh_shape"):
      sharding.resolve_mesh_shape(bad, 8)


def test_parameter_shardings_follow_the_rules_and_fall_back_when_uneven():
  run = run_config.parse(train_helpers.tiny_config())
  mesh = sharding.make_mesh((2, 2, 2))
  cfg = run.model_config(train_helpers.VOCAB, train_helpers.MASK_ID)
  abstract = jax.eval_shape(lambda: train_lib.init_params(cfg, jax.random.key(0)))
  specs = sharding.logical_shardings(param_logical_axes(cfg), abstract, mesh,
                                     sharding.DEFAULT_RULES)
  assert specs["embedding"].spec == P("tensor", "fsdp")
  assert specs["layer_0"]["attention"]["q"].spec == P("fsdp", "tensor", None)
  assert specs["layer_0"]["ff"]["layer_1"]["kernel"].spec == P("fsdp", "tensor")
  odd = run.model_config(63, 3)  # 63 is not divisible by tensor = 2: replicate that axis
  abstract = jax.eval_shape(lambda: train_lib.init_params(odd, jax.random.key(0)))
  specs = sharding.logical_shardings(param_logical_axes(odd), abstract, mesh,
                                     sharding.DEFAULT_RULES)
  assert specs["embedding"].spec == P(None, "fsdp")
  assert specs["lm_bias"].spec == P(None)


def test_batch_must_divide_over_data_and_fsdp():
  with pytest.raises(ValueError, match="not divisible by the mesh's data x fsdp"):
    train_helpers.make_trainer((2, 3, 1), jax.devices()[:6])


def test_process_data_shard_single_process():
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.process_data_shard(mesh, 8) == (0, 1, 8)


@pytest.fixture(scope="module")
def single_device_run():
  return _steps(train_helpers.make_trainer((1, 1, 1), jax.devices()[:1]))


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(single_device_run):
  single_losses, single_params = single_device_run
  sharded = train_helpers.make_trainer((2, 2, 2), jax.devices()[:8])
  assert sharded.state_shardings.params["embedding"].spec == P("tensor", "fsdp")
  sharded_losses, sharded_params = _steps(sharded)
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(sharded_params), jax.tree.leaves(single_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(single_device_run):
  plain_losses, plain_params = single_device_run
  accum = train_helpers.make_trainer((1, 1, 1), jax.devices()[:1], grad_accum_steps=2)
  accum_losses, accum_params = _steps(accum)
  np.testing.assert_allclose(accum_losses, plain_losses, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(accum_params), jax.tree.leaves(plain_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
