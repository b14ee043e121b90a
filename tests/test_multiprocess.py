"""Two jax.distributed processes on 127.0.0.1 train exactly like one process."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

import train_helpers
from asarm_jax import checkpoint
from asarm_jax import run_config
from asarm_jax import sharding
from asarm_jax import train_lib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _single_process_reference(num_steps):
  run = run_config.parse(train_helpers.tiny_config(mesh_shape=(1, 1, 1)))
  model_cfg = run.model_config(train_helpers.VOCAB, train_helpers.MASK_ID)
  trainer = train_lib.Trainer(run, model_cfg, sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  state = trainer.init(0)
  losses = []
  for step in range(num_steps):
    batch = trainer.global_batch(train_helpers.synthetic_batch(8, 16, seed=step, padded_rows=2), 8)
    state, metrics = trainer.train_step(state, batch, trainer.step_key(state, step))
    losses.append(float(metrics.compute()["loss"]))
  return losses, jax.device_get(state.params)


@pytest.mark.slow  # about a minute: two processes compile on two cores
def test_two_processes_train_like_one(tmp_path):
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
  result = json.load(open(out))
  assert result["shard"] == [0, 2, 4]  # process 0 feeds rows 0..3 of each global batch of 8
  losses, params = _single_process_reference(len(result["losses"]))
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-5)
  gathered = np.load(out + ".npz")
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    np.testing.assert_allclose(gathered[jax.tree_util.keystr(path)], leaf, rtol=1e-5, atol=1e-5)
  # The full two-process run left a loadable run directory with one data state per process.
  step_dir = os.path.join(workdir, "checkpoints", "2", "data")
  assert sorted(os.listdir(step_dir))[-2:] == ["process_0-of-2.json", "process_1-of-2.json"]
  model_cfg, _, tokenizer = checkpoint.load_for_inference(workdir)
  assert model_cfg.vocab_size == tokenizer.vocab_size
  assert np.isfinite(result["eval_loss"])
