"""train_and_evaluate end to end on a few stdlib files, its metric files (JSONL, TensorBoard), and
config errors raised before any work."""
import importlib.util
import os

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from tensorboard.backend.event_processing import event_accumulator

import train_helpers
from asarm_jax import checkpoint
from asarm_jax import metrics
from asarm_jax import run_config
from asarm_jax import sharding
from asarm_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensorboard_scalars(workdir):
  """{tag: [(step, value)]} of every event file in `workdir/tensorboard`, read by TensorBoard."""
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, metrics.TENSORBOARD_DIR),
      size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every event
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_metric_writer_tensorboard_events_read_back_exactly(tmp_path):
  written = {1: {"train/loss": 5.25, "train/lr": 1e-3},
             2: {"train/loss": 1 / 3, "train/lr": 2e-3, "eval/loss": -0.1},
             7: {"train/loss": 12345.678, "train/lr": 3e-7}}
  writer = metrics.MetricWriter(tmp_path)
  assert writer.has_tensorboard
  for step, scalars in written.items():
    writer.write_scalars(step, {k: np.float64(v) for k, v in scalars.items()})
  writer.close()
  assert not writer.has_tensorboard
  names = os.listdir(tmp_path / metrics.TENSORBOARD_DIR)
  assert len(names) == 1 and names[0].startswith("events.out.tfevents."), names
  expected = {}
  for step, scalars in written.items():
    for tag, value in scalars.items():
      expected.setdefault(tag, []).append((step, float(np.float32(value))))
  assert _tensorboard_scalars(tmp_path) == expected
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == list(written)


def test_disabled_metric_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(tmp_path / "run", enabled=False)
  writer.write_scalars(1, {"train/loss": 1.0})
  writer.close()
  assert not writer.has_tensorboard and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  config = train_helpers.tiny_config(num_train_steps=4, log_every_steps=2, eval_every_steps=2,
                                     measure_peak_flops=True)
  summary = train_lib.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "metrics.jsonl", "run.json",
                                         "tensorboard", "tokenizer.model"]
  records = metrics.read_metrics(workdir)
  scalars = _tensorboard_scalars(workdir)
  for tag in ("train/loss", "eval/loss", "train/learning_rate"):
    logged = [(r["step"], float(np.float32(r[tag]))) for r in records if tag in r]
    assert scalars[tag] == logged and logged, tag
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in train] == [2, 4]
  assert [r["step"] for r in evals] == [2, 4]
  for key in ("train/tokens_per_s", "train/steps_per_s", "train/mfu", "train/accuracy",
              "train/grad_norm", "train/learning_rate"):
    assert train[-1][key] > 0, key
  for key in ("eval/loss", "eval/loss@0.5", "eval/loss@0.9", "eval/accuracy@0.9",
              "eval/unigram_entropy"):
    assert 0 < evals[-1][key] < 20, key
  assert summary["eval/unigram_entropy"] == evals[-1]["eval/unigram_entropy"]
  assert summary["train/peak_flops"] > 0 and summary["time/total_s"] > 0
  model_cfg, _, tokenizer = checkpoint.load_for_inference(workdir)
  assert model_cfg.vocab_size == tokenizer.vocab_size
  # Running a finished run again only evaluates it.
  again = train_lib.train_and_evaluate(config, workdir)
  assert again["eval/loss"] == pytest.approx(evals[-1]["eval/loss"], rel=1e-6)
  assert len([r for r in metrics.read_metrics(workdir) if "train/loss" in r]) == 2


def _fails_before_work(tmp_path, config, error, match):
  workdir = tmp_path / "never"
  with pytest.raises(error, match=match):
    train_lib.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_unknown_top_level_key(tmp_path):
  config = train_helpers.tiny_config()
  config.num_trian_steps = 3
  _fails_before_work(tmp_path, config, ValueError, "unknown config keys.*num_trian_steps")


def test_unknown_section_key(tmp_path):
  config = train_helpers.tiny_config()
  config.optimizer.learning_rat = 1.0
  _fails_before_work(tmp_path, config, ValueError, "optimizer.learning_rat")


def test_unknown_command_line_override():
  argv = ["train.py", f"--config={ROOT}/configs/default.py", "--config.model.d_modl=8"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  with pytest.raises(AttributeError, match="d_modl"):
    flag_values(argv)


def test_unknown_data_source(tmp_path):
  config = train_helpers.tiny_config(**{"data.source": "wikipedia"})
  _fails_before_work(tmp_path, config, ValueError, "Unknown data source 'wikipedia'")


@pytest.mark.parametrize("source, error, match", [
    ("tfds:no_such_dataset_anywhere", ValueError, "no_such_dataset_anywhere"),
    ("tfds:lm1b", FileNotFoundError, "not prepared"),  # known to TFDS, absent from data_dir
])
def test_dataset_that_cannot_be_found(tmp_path, source, error, match):
  config = train_helpers.tiny_config(**{"data.source": source,
                                        "data.data_dir": str(tmp_path / "tfds")})
  _fails_before_work(tmp_path, config, error, match)


def test_batch_not_divisible_by_the_mesh(tmp_path):
  config = train_helpers.tiny_config(batch_size=12, mesh_shape=(-1, 1, 1))  # 8 devices
  _fails_before_work(tmp_path, config, ValueError, "12 is not divisible by the mesh's data x fsdp")


def test_micro_batch_not_divisible_by_the_mesh(tmp_path):
  config = train_helpers.tiny_config(batch_size=8, grad_accum_steps=2, mesh_shape=(4, 2, 1))
  _fails_before_work(tmp_path, config, ValueError, "grad_accum_steps = 4 is not divisible")


def test_seq_len_above_max_len(tmp_path):
  config = train_helpers.tiny_config(seq_len=128)
  _fails_before_work(tmp_path, config, ValueError, "seq_len = 128 must be in .*max_len = 64")


def test_bad_mesh_shape(tmp_path):
  config = train_helpers.tiny_config(mesh_shape=(3, -1, 1))
  _fails_before_work(tmp_path, config, ValueError, "mesh_shape")


def test_bad_objective_range(tmp_path):
  config = train_helpers.tiny_config(**{"objective.min_rate": 0.9, "objective.max_rate": 0.1})
  _fails_before_work(tmp_path, config, ValueError, "min_rate <= max_rate")


def test_learning_rate_schedule():
  opt = run_config.OptimizerConfig(learning_rate=1e-3, lr_scaling_batch=16, warmup_steps=10,
                                   decay="linear", end_lr_factor=0.1)
  schedule = train_lib.learning_rate_schedule(opt, num_train_steps=110, batch_size=32)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                             [0.0, 1e-3, 2e-3, 1.1e-3, 2e-4], rtol=1e-5)
  cosine = train_lib.learning_rate_schedule(
      run_config.OptimizerConfig(learning_rate=1e-3, warmup_steps=0, decay="cosine",
                                 end_lr_factor=0.0), num_train_steps=100, batch_size=32)
  np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [1e-3, 5e-4, 0.0], atol=1e-9)


def test_weight_decay_skips_biases_norms_and_embeddings_of_one_dim():
  run = run_config.parse(train_helpers.tiny_config())
  cfg = run.model_config(64, 3)
  params = jax.eval_shape(lambda: train_lib.init_params(cfg, jax.random.key(0)))
  mask = train_lib._decay_mask(params)  # pylint: disable=protected-access
  assert mask["embedding"] and mask["layer_0"]["attention"]["q"]
  assert mask["layer_0"]["ff"]["layer_1"]["kernel"]
  assert not mask["layer_0"]["attention"]["r_w_bias"] and not mask["lm_bias"]
  assert not mask["layer_0"]["ff"]["layer_norm"]["scale"] and not mask["mask_emb"]


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights():
  run = run_config.parse(train_helpers.tiny_config(**{"model.dtype": "bfloat16",
                                                      "mesh_shape": (1, 1, 1)}))
  trainer = train_lib.Trainer(run, run.model_config(train_helpers.VOCAB, train_helpers.MASK_ID),
                              sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  state = trainer.init(0)
  batch = trainer.global_batch(train_helpers.synthetic_batch(8, 16), 8)
  state, step_metrics = trainer.train_step(state, batch, trainer.step_key(state, 0))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.opt_state)
             if np.issubdtype(leaf.dtype, np.floating))
  # A freshly initialised model is close to uniform over the vocabulary.
  assert abs(float(step_metrics.compute()["loss"]) - np.log(train_helpers.VOCAB)) < 0.5


@pytest.mark.parametrize("name", ["default", "xlnet_base", "xlnet_base_finetune", "tpu_pod"])
def test_shipped_configs_are_valid(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  run = run_config.parse(config)
  model_cfg = run.model_config(vocab_size=run.data.vocab_size, mask_token_id=3)
  assert run.seq_len <= model_cfg.max_len
  mesh = sharding.make_mesh(run.mesh_shape)  # on the 8 simulated devices
  train_lib.check_mesh(run, mesh)
