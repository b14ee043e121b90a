"""Faults during training: non-finite steps, SIGTERM, SIGKILL, corrupt and half-written checkpoints.

Each test injects one fault and checks that the run neither writes nor trusts a bad state, and that
a restarted run ends exactly where an uninterrupted one does.
"""
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train_helpers
from asarm_jax import checkpoint
from asarm_jax import metrics
from asarm_jax import run_config
from asarm_jax import train_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TESTS = os.path.join(_ROOT, "tests")

# The subprocess runs: long enough that a signal lands mid-run, checkpoints every 20 steps.
LONG_STEPS = 200
LONG = dict(num_train_steps=LONG_STEPS, checkpoint_every_steps=20, keep_checkpoints=2,
            num_eval_batches=0)
# The SIGKILL runs: a checkpoint every step, so the kill often lands during an (async) save.
KILL_STEPS = 20
KILL = dict(num_train_steps=KILL_STEPS, checkpoint_every_steps=1, keep_checkpoints=2,
            num_eval_batches=0)
KILL_SEED = 20240607  # picks the step after which the run is killed
# The in-process runs: checkpoints at 2, 4, 6.
SHORT_STEPS = 6
SHORT = dict(num_train_steps=SHORT_STEPS, checkpoint_every_steps=2, keep_checkpoints=3,
             num_eval_batches=0)


def _losses(workdir):
  """{step: loss}, the last record of each step (a step re-run after a crash is logged twice)."""
  return {r["step"]: r["train/loss"] for r in metrics.read_metrics(workdir) if "train/loss" in r}


def _step_dirs(workdir):
  directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _assert_same_params(workdir_a, workdir_b):
  _, a, _ = checkpoint.load_for_inference(workdir_a)
  _, b, _ = checkpoint.load_for_inference(workdir_b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


# --- 1. Non-finite loss / gradient / update -----------------------------------------------------


def _tiny_state_and_step():
  run = run_config.parse(train_helpers.tiny_config())
  model_cfg = run.model_config(train_helpers.VOCAB, train_helpers.MASK_ID)
  schedule = train_lib.learning_rate_schedule(run.optimizer, num_train_steps=4, batch_size=8)
  tx = train_lib.make_optimizer(run.optimizer, schedule)
  state = train_lib.init_state(jax.random.key(0), model_cfg, tx)
  step = jax.jit(functools.partial(train_lib.train_step, model_cfg=model_cfg,
                                   masking=run.objective, tx=tx, schedule=schedule))
  return state, step


@pytest.mark.slow
def test_a_nonfinite_step_applies_no_update():
  state, step = _tiny_state_and_step()
  batch = train_helpers.synthetic_batch(8, 16)
  good, good_metrics = step(state, batch, jax.random.key(1))
  assert int(good_metrics.skipped_updates.compute()) == 0
  assert good_metrics.first_nonfinite.compute() == (None, [])
  assert not np.array_equal(good.params["embedding"], state.params["embedding"])

  embedding = np.array(state.params["embedding"])
  embedding[batch["tokens"][0, 0]] = np.nan  # poisons the loss and the gradient
  poisoned = state.replace(params={**state.params, "embedding": embedding})
  new, new_metrics = step(poisoned, batch, jax.random.key(1))
  assert int(new.step) == 1  # the step (and so the data position and rng) advances
  for a, b in zip(jax.tree.leaves((new.params, new.opt_state)),
                  jax.tree.leaves((poisoned.params, poisoned.opt_state))):
    np.testing.assert_array_equal(a, b)  # but nothing else changes
  assert int(new_metrics.skipped_updates.compute()) == 1
  first_step, which = new_metrics.first_nonfinite.compute()
  assert first_step == 0 and "loss" in which
  assert "skipped_updates" in new_metrics.compute()
  assert "first_nonfinite" not in new_metrics.compute()


@pytest.mark.slow
def test_skip_policy_counts_skipped_updates_and_never_checkpoints_nan(tmp_path):
  workdir = str(tmp_path)
  config = train_helpers.tiny_config(num_train_steps=3, checkpoint_every_steps=1,
                                     num_eval_batches=0)
  config.optimizer.learning_rate = float("inf")  # every update is inf / nan
  summary = train_lib.train_and_evaluate(config, workdir)
  assert summary["train/skipped_updates_total"] == 3
  records = [r for r in metrics.read_metrics(workdir) if "train/loss" in r]
  assert [r["train/skipped_updates"] for r in records] == [1, 1, 1]
  assert all(np.isfinite(r["train/loss"]) for r in records)
  assert _step_dirs(workdir) == [2, 3]
  _, params, _ = checkpoint.load_for_inference(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_stop_policy_raises_naming_the_step_before_any_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = train_helpers.tiny_config(num_train_steps=3, checkpoint_every_steps=1,
                                     log_every_steps=2, num_eval_batches=0,
                                     nonfinite_policy="stop")
  config.optimizer.learning_rate = float("inf")
  with pytest.raises(train_lib.NonFiniteError,
                     match=r"non-finite update_norm at step 0 .*batch index 0"):
    train_lib.train_and_evaluate(config, workdir)
  assert _step_dirs(workdir) == []


def test_unknown_nonfinite_policy_is_refused():
  with pytest.raises(ValueError, match="nonfinite_policy must be one of"):
    run_config.parse(train_helpers.tiny_config(nonfinite_policy="ignore"))


# --- 2. SIGTERM and SIGKILL of train.py ---------------------------------------------------------


def _write_config(path, overrides):
  path.write_text(
      "import sys\n"
      f"sys.path.insert(0, {_TESTS!r})\n"
      "import train_helpers\n\n\n"
      "def get_config():\n"
      f"  return train_helpers.tiny_config(**{overrides!r})\n")
  return str(path)


def _train_command(tmp_path, workdir, overrides):
  """The train.py command line of `tiny_config(**overrides)` (its config file in `tmp_path`)."""
  config = _write_config(tmp_path / "tiny_config.py", overrides)
  return [sys.executable, os.path.join(_ROOT, "train.py"), "--config", config,
          "--workdir", workdir]


def _start_train(tmp_path, command):
  """Starts `command`; its output is appended to tmp_path/train.log."""
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")  # as tests/conftest.py sets
  with open(tmp_path / "train.log", "ab") as log:  # not a pipe: a full pipe would block the child
    return subprocess.Popen(command, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _run_train(tmp_path, command):
  """Runs `command` to the end; it must succeed."""
  process = _start_train(tmp_path, command)
  process.wait(timeout=300)
  assert process.returncode == 0, _log_tail(tmp_path)


def _log_tail(tmp_path):
  with open(tmp_path / "train.log", "rb") as f:
    return f.read().decode(errors="replace")[-3000:]


def _wait_for_step(process, workdir, step, tmp_path, timeout=240):
  """Polls metrics.jsonl until `process` has logged `step` (it must keep running meanwhile)."""
  path = os.path.join(workdir, metrics.METRICS_FILE)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, _log_tail(tmp_path)
    if os.path.exists(path) and any(s >= step for s in _losses(workdir)):
      return
    time.sleep(0.005)
  raise TimeoutError(f"step {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
  """LONG_STEPS steps without interruption."""
  workdir = str(tmp_path_factory.mktemp("long"))
  train_lib.train_and_evaluate(train_helpers.tiny_config(**LONG), workdir)
  return workdir


@pytest.mark.slow  # about 100 s each on 2 cores with the uninterrupted run
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_stop_signal_checkpoints_the_step_reached_and_the_same_command_resumes_exactly(
    long_run, tmp_path, signum, status):
  workdir = str(tmp_path / "run")
  command = _train_command(tmp_path, workdir, LONG)
  process = _start_train(tmp_path, command)
  _wait_for_step(process, workdir, 2, tmp_path)
  process.send_signal(signum)  # SIGINT is Ctrl-C
  process.wait(timeout=120)
  assert process.returncode == status, _log_tail(tmp_path)
  reached = max(_losses(workdir))
  assert reached < LONG_STEPS, "the run ended before the signal: make it longer"
  assert _step_dirs(workdir)[-1] == reached  # the final checkpoint is the step reached
  assert sorted(_losses(workdir)) == list(range(1, reached + 1))
  log = _log_tail(tmp_path)
  assert (f"Stopped by {signal.Signals(signum).name} at step {reached}: its checkpoint is "
          "written") in log
  assert "Traceback" not in log and "KeyboardInterrupt" not in log

  _run_train(tmp_path, command)  # the same command
  assert f"Resuming {workdir} from its checkpoint of step {reached}." in _log_tail(tmp_path)
  assert _losses(workdir) == _losses(long_run)  # bitwise, every step
  _assert_same_params(workdir, long_run)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path):
  kill_step = int(np.random.default_rng(KILL_SEED).integers(1, KILL_STEPS // 2))
  straight, workdir = str(tmp_path / "straight"), str(tmp_path / "run")
  _run_train(tmp_path, _train_command(tmp_path, straight, KILL))
  command = _train_command(tmp_path, workdir, KILL)
  process = _start_train(tmp_path, command)
  try:
    _wait_for_step(process, workdir, kill_step, tmp_path)
  finally:
    process.send_signal(signal.SIGKILL)  # no handler, no final checkpoint: gone mid-step or -save
    process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  reached = max(_losses(workdir))
  assert reached < KILL_STEPS, "the run ended before the kill: make it longer"
  complete = _step_dirs(workdir)  # a save in flight is only a temporary directory

  _run_train(tmp_path, command)  # the same command, as a scheduler restarts it
  resumed = complete[-1] if complete else 0  # the newest complete checkpoint
  logged = [r["step"] for r in metrics.read_metrics(workdir) if "train/loss" in r]
  assert logged == list(range(1, reached + 1)) + list(range(resumed + 1, KILL_STEPS + 1))
  assert _losses(workdir) == _losses(straight)  # bitwise, every step
  _assert_same_params(workdir, straight)


# --- 3. Corrupt and half-written checkpoints -----------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("short"))
  train_lib.train_and_evaluate(train_helpers.tiny_config(**SHORT), workdir)
  return workdir


def _delete_a_params_file(step_dir):
  # The index of the array data (deleting the optional _METADATA alone loses nothing).
  os.remove(os.path.join(step_dir, "params", "manifest.ocdbt"))


def _garble_the_train_state(step_dir):
  for root, _, names in os.walk(os.path.join(step_dir, "train")):
    for name in names:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "wb") as f:
        f.write(b"\x00garbage" * max(size // 8, 1))


def _garble_the_data_state(step_dir):
  path = os.path.join(step_dir, "data", "process_0-of-1.json")
  with open(path, "w") as f:
    f.write('{"truncated": ')


@pytest.mark.parametrize("corrupt", [
    _delete_a_params_file, _garble_the_train_state,
    pytest.param(_garble_the_data_state, marks=pytest.mark.slow)])  # the file's time budget
@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(short_run, tmp_path, caplog,
                                                                    corrupt):
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(train_helpers.tiny_config(**{**SHORT, "num_train_steps": 4}),
                               workdir)
  assert _step_dirs(workdir) == [2, 4]
  corrupt(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "4"))
  with caplog.at_level(logging.WARNING):
    train_lib.train_and_evaluate(train_helpers.tiny_config(**SHORT), workdir)
  assert any("step 4" in r.getMessage() and "unusable" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert os.listdir(os.path.join(workdir, checkpoint.BAD_CHECKPOINT_DIR))[0].startswith("4.")
  assert _step_dirs(workdir) == [2, 4, 6]  # resumed from 2; steps 3 and 4 trained again
  assert _losses(workdir) == _losses(short_run)
  _assert_same_params(workdir, short_run)


@pytest.mark.slow
def test_a_half_written_checkpoint_is_never_taken_as_complete(short_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(short_run, workdir)
  checkpoints = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  # What orbax leaves when a process dies mid-save: the step's files in a temporary directory that
  # is renamed to '<step>' only once complete.
  shutil.copytree(os.path.join(checkpoints, "6"),
                  os.path.join(checkpoints, "8.orbax-checkpoint-tmp-1234567890"))
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  assert reader.all_steps() == [2, 4, 6] and reader.latest_step == 6
  reader.close()
  train_lib.train_and_evaluate(train_helpers.tiny_config(**{**SHORT, "num_train_steps": 8}),
                               workdir)
  assert _step_dirs(workdir) == [4, 6, 8]
  assert sorted(_losses(workdir)) == list(range(1, 9))
