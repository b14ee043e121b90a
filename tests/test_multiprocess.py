"""Two jax.distributed processes on 127.0.0.1 train exactly like one process, and what they
checkpoint restores in one process."""
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

import train_helpers
from asarm_jax import checkpoint
from asarm_jax import data as data_lib
from asarm_jax import metrics
from asarm_jax import run_config
from asarm_jax import train_lib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """Runs the two workers; returns (their result JSON, its path, the full run's workdir)."""
  tmp_path = tmp_path_factory.mktemp("two_processes")
  port = portpicker.pick_unused_port()
  workdir, out = str(tmp_path / "run"), str(tmp_path / "result.json")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, HERE]))
  workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py"),
                               str(i), str(port), workdir, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=300)[0])
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-5000:]
  return json.load(open(out)), out, workdir


@pytest.fixture(scope="module")
def one_device():
  return train_helpers.make_trainer((1, 1, 1), jax.devices()[:1])


@pytest.mark.slow  # about a minute: two processes compile on two cores
def test_two_processes_train_like_one(two_process_run, one_device):
  result, out, workdir = two_process_run
  assert result["shard"] == [0, 2, 4]  # process 0 feeds rows 0..3 of each global batch of 8
  state, losses = train_helpers.train_steps(one_device, one_device.init(0),
                                            range(len(result["losses"])))
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-5)
  gathered = np.load(out + ".npz")
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    np.testing.assert_allclose(gathered[jax.tree_util.keystr(path)], leaf, rtol=1e-5, atol=1e-5)
  # The full two-process run left a loadable run directory with one data state per process.
  step_dir = os.path.join(workdir, "checkpoints", "2", "data")
  assert sorted(os.listdir(step_dir))[-2:] == ["process_0-of-2.json", "process_1-of-2.json"]
  model_cfg, _, tokenizer = checkpoint.load_for_inference(workdir)
  assert model_cfg.vocab_size == tokenizer.vocab_size
  assert np.isfinite(result["eval_loss"])


@pytest.mark.slow  # the two-process run of the fixture
def test_their_checkpoint_restores_and_continues_in_one_process(two_process_run, one_device):
  result, out, _ = two_process_run
  num_steps = len(result["losses"])
  reader = checkpoint.Checkpointer(out + ".state", read_only=True)
  restored = reader.restore(one_device.abstract_state())  # saved from a mesh over 2 processes
  reader.close()
  assert int(restored.step) == num_steps
  gathered = np.load(out + ".npz")
  for path, leaf in jax.tree_util.tree_leaves_with_path(restored.params):
    np.testing.assert_array_equal(leaf, gathered[jax.tree_util.keystr(path)])
  # Its next step (optimizer state included) is the single-process run's next step.
  state, _ = train_helpers.train_steps(one_device, one_device.init(0), range(num_steps + 1))
  np.testing.assert_array_equal(restored.rng, state.rng)
  restored, _ = train_helpers.train_steps(one_device, restored, [num_steps])
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # the two-process run of the fixture
def test_their_run_resumes_in_one_process_from_the_start_of_its_data_stream(two_process_run,
                                                                             tmp_path, caplog):
  _, _, their_workdir = two_process_run
  workdir = str(tmp_path / "run")
  shutil.copytree(their_workdir, workdir)  # the fixture's run stays as they left it
  config = train_helpers.tiny_config(num_train_steps=4, checkpoint_every_steps=2)
  with caplog.at_level(logging.WARNING):
    train_lib.train_and_evaluate(config, workdir)  # their step 2, then steps 3 and 4 here
  messages = [r.getMessage() for r in caplog.records]
  assert any("step 2" in m and "2 processes" in m and "this run has 1" in m for m in messages), (
      messages)
  assert not any("unusable" in m for m in messages), messages  # not taken for a corrupt one
  assert not os.path.exists(os.path.join(workdir, checkpoint.BAD_CHECKPOINT_DIR))
  logged = [(r["step"], r["train/loss"]) for r in metrics.read_metrics(workdir)
            if "train/loss" in r]
  assert [step for step, _ in logged] == [1, 2, 3, 4]  # 1, 2 by their process 0; 3, 4 here
  assert np.isfinite([loss for _, loss in logged]).all()
  # The data position: two batches into the one-process stream, as a fresh one-process run reads.
  run = run_config.parse(config)
  tokenizer = data_lib.Tokenizer.load(os.path.join(workdir, checkpoint.TOKENIZER_FILE))
  fresh = data_lib.train_iterator(run.data.source, tokenizer, run.seq_len, run.batch_size,
                                  seed=run.seed, split=run.data.train_split, process_index=0,
                                  process_count=1, max_documents=run.data.max_documents)
  for _ in range(2):
    next(fresh)
  saved = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "4", "data", "process_0-of-1.json")
  assert json.load(open(saved)) == fresh.get_state()
