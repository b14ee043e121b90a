"""Checkpoints: resuming equals never stopping, on the same mesh or another; run directories load
for inference on their own."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import train_helpers
from asarm_jax import checkpoint
from asarm_jax import metrics
from asarm_jax import train_lib

STEPS = 6  # 2n, with n = 3


def _config(num_train_steps, **overrides):
  return train_helpers.tiny_config(num_train_steps=num_train_steps, checkpoint_every_steps=2,
                                   keep_checkpoints=2, num_eval_batches=0, **overrides)


def _train_losses(workdir):
  """{step: loss}; every step must have been trained exactly once."""
  records = [(r["step"], r["train/loss"]) for r in metrics.read_metrics(workdir)
             if "train/loss" in r]
  steps = [step for step, _ in records]
  assert len(steps) == len(set(steps)), f"steps trained more than once: {steps}"
  return dict(records)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """A run of 2n steps without interruption."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train_lib.train_and_evaluate(_config(STEPS), workdir)
  return workdir


@pytest.mark.slow
def test_resume_gives_the_same_losses_and_params_as_never_stopping(straight_run, tmp_path):
  workdir = str(tmp_path / "resumed")
  train_lib.train_and_evaluate(_config(STEPS // 2), workdir)  # n steps, then stop
  assert sorted(_train_losses(workdir)) == [1, 2, 3]
  train_lib.train_and_evaluate(_config(STEPS), workdir)  # restart: n more
  resumed, straight = _train_losses(workdir), _train_losses(straight_run)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  assert resumed == straight  # exactly: same params, optimizer state, data position and rng
  _, resumed_params, _ = checkpoint.load_for_inference(workdir)
  _, straight_params, _ = checkpoint.load_for_inference(straight_run)
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(straight_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_run_resumes_under_another_mesh_shape(straight_run, tmp_path):
  # mesh_shape is not part of the run's identity: changing parallelism between restarts is allowed.
  continued = {}
  for mesh_shape in [(-1, 1, 1), (2, 2, 2)]:  # the straight run's (data=8), then sharded params
    workdir = str(tmp_path / "x".join(map(str, mesh_shape)))
    shutil.copytree(straight_run, workdir)
    train_lib.train_and_evaluate(_config(STEPS + 2, mesh_shape=mesh_shape), workdir)
    continued[mesh_shape] = workdir
  same, other = continued[(-1, 1, 1)], continued[(2, 2, 2)]
  assert sorted(_train_losses(other)) == list(range(1, STEPS + 3))
  np.testing.assert_allclose([_train_losses(other)[s] for s in (7, 8)],
                             [_train_losses(same)[s] for s in (7, 8)], rtol=1e-6)
  _, same_params, _ = checkpoint.load_for_inference(same)
  _, other_params, _ = checkpoint.load_for_inference(other)
  for a, b in zip(jax.tree.leaves(other_params), jax.tree.leaves(same_params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_keeps_the_last_k_checkpoints(straight_run):
  checkpointer = checkpoint.Checkpointer(straight_run, read_only=True)
  assert checkpointer.all_steps() == [4, 6]  # every 2 steps, keep 2
  checkpointer.close()
  data_state = os.path.join(straight_run, "checkpoints", "6", "data", "process_0-of-1.json")
  assert json.load(open(data_state))  # the grain iterator position


def test_load_for_inference_needs_only_the_workdir(straight_run):
  model_cfg, params, tokenizer = checkpoint.load_for_inference(straight_run)
  assert model_cfg.vocab_size == tokenizer.vocab_size
  assert model_cfg.mask_token_id == tokenizer.mask_id
  assert model_cfg.d_model == 32 and model_cfg.n_layers == 2
  expected = jax.eval_shape(lambda: train_lib.init_params(model_cfg, jax.random.key(0)))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert leaf.shape == want.shape and leaf.dtype == want.dtype
  _, older, _ = checkpoint.load_for_inference(straight_run, step=4)
  assert not np.array_equal(older["embedding"], params["embedding"])
  with pytest.raises(FileNotFoundError, match="step 5"):
    checkpoint.load_for_inference(straight_run, step=5)


def test_incompatible_workdir_fails_before_any_work(straight_run):
  run_file = os.path.join(straight_run, checkpoint.RUN_FILE)
  before = (os.path.getmtime(run_file), sorted(os.listdir(straight_run)))
  config = _config(STEPS + 2)
  config.model.d_model = 48
  with pytest.raises(ValueError, match=r"incompatible config(.|\n)*model\.d_model: 32"):
    train_lib.train_and_evaluate(config, straight_run)
  assert (os.path.getmtime(run_file), sorted(os.listdir(straight_run))) == before


def test_missing_checkpoint_is_a_clear_error(tmp_path, straight_run):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpoint.load_for_inference(tmp_path)
  # run.json and the tokenizer but no checkpoint yet.
  for name in (checkpoint.RUN_FILE, checkpoint.TOKENIZER_FILE):
    with open(os.path.join(straight_run, name), "rb") as src:
      (tmp_path / name).write_bytes(src.read())
  with pytest.raises(FileNotFoundError, match="no checkpoint found in .*checkpoints"):
    checkpoint.load_for_inference(tmp_path)


def test_init_from_starts_a_new_run_from_trained_parameters(straight_run, tmp_path):
  workdir = str(tmp_path / "finetune")
  config = _config(1, init_from=straight_run)
  config.optimizer.learning_rate = 1e-9  # one step that barely moves the parameters
  train_lib.train_and_evaluate(config, workdir)
  _, tuned, tuned_tokenizer = checkpoint.load_for_inference(workdir)
  _, source, source_tokenizer = checkpoint.load_for_inference(straight_run)
  assert tuned_tokenizer.model_proto == source_tokenizer.model_proto
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(source)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert checkpoint.Checkpointer(workdir, read_only=True).all_steps() == [1]


def test_init_from_a_different_architecture_fails_before_work(straight_run, tmp_path):
  config = _config(1, init_from=straight_run)
  config.model.n_layers = 3
  with pytest.raises(ValueError, match="model.n_layers: 2 there, 3 here"):
    train_lib.train_and_evaluate(config, str(tmp_path / "never"))
  assert not (tmp_path / "never").exists()
  config = _config(1, init_from=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a training run directory"):
    train_lib.train_and_evaluate(config, str(tmp_path / "never"))


# Meshes of the restore tests: the 8 simulated devices sharded three ways, and one device.
MESHES = {8: (2, 2, 2), 1: (1, 1, 1)}


@pytest.fixture(scope="module")
def trainers():
  """{number of devices: a Trainer on MESHES[number] over the first that many devices}."""
  return {n: train_helpers.make_trainer(shape, jax.devices()[:n]) for n, shape in MESHES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [(8, 1), (1, 8)])
def test_a_checkpoint_continues_on_another_mesh_as_on_its_own(trainers, tmp_path, source, target):
  saved, _ = train_helpers.train_steps(trainers[source], trainers[source].init(0), range(2))
  writer = checkpoint.Checkpointer(tmp_path, async_save=False)
  writer.save(2, saved, force=True)
  writer.close()
  reader = checkpoint.Checkpointer(tmp_path, read_only=True)
  own, other = (reader.restore(trainers[n].abstract_state()) for n in (source, target))
  reader.close()
  for leaf, want, sharding in zip(jax.tree.leaves(other), jax.tree.leaves(saved),
                                  jax.tree.leaves(trainers[target].state_shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)  # laid out for the target mesh
    np.testing.assert_array_equal(leaf, want)  # and read back exactly
  own, own_losses = train_helpers.train_steps(trainers[source], own, range(2, 5))
  other, other_losses = train_helpers.train_steps(trainers[target], other, range(2, 5))
  assert int(other.step) == 5
  np.testing.assert_allclose(other_losses, own_losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(other.params), jax.tree.leaves(own.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)  # sharded and unsharded reductions round apart
