"""benchmarks/device.py as a dry run on the CPU: every part runs and its numbers hang together."""
import json
import math

import pytest

from benchmarks import device, real_size


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("device")
  lines = []
  results = device.run_device_benchmark(device.dry_run_plan("float32"), out_dir,
                                        command="test dry run", log=lines.append)
  return results, out_dir, lines


@pytest.mark.slow
def test_dry_run_writes_every_report(dry_run):
  results, out_dir, lines = dry_run
  for name in ("device", "sampling", "memory_plan"):
    assert json.loads((out_dir / f"{name}.json").read_text())
    assert (out_dir / f"{name}.md").read_text().strip()
  assert json.loads((out_dir / "device.json").read_text())["device"] == results["device"]
  assert any(line.startswith("training step 3/3") for line in lines)
  summary = (out_dir / "device.md").read_text()
  assert summary.count("| float32 | 1 |") == 3  # one headline row per method
  assert "MFU" in summary and "Memory plan" in summary


@pytest.mark.slow
def test_sampling_rows_carry_speed_and_memory(dry_run):
  rows = dry_run[0]["sampling"]["results"]
  assert [(r["dtype"], r["method"]) for r in rows] == [
      pair for pair in real_size.CONFIGURATIONS if pair[0] == "float32"]
  for row in rows:
    assert row["tokens_per_second"] > 0 and row["floor"]["ms"] > 0
    memory = row["memory"]
    assert memory["planned_bytes"] >= memory["argument_bytes"] > 0
    assert memory["device_peak_bytes"] is None  # the CPU does not report it


@pytest.mark.slow
def test_memory_plan_counts_weights_and_cache(dry_run):
  memory = dry_run[0]["memory_plan"]
  assert [r["method"] for r in memory["rows"]] == list(device.PLAN_METHODS)
  for row in memory["rows"]:
    # The program holds at least its weights and one cache of keys and values.
    assert row["planned_bytes"] >= row["weight_bytes"] + row["cache_bytes"]
    assert row["fits"] == (row["planned_bytes"] <= memory["budget_bytes"])
  assert memory["rows"][0]["cache_bytes"] == device.cache_bytes(
      real_size.QUICK_MODEL, memory["batch"], memory["seq_len"])


@pytest.mark.slow
def test_training_throughput_is_measured_against_the_peak(dry_run):
  training = dry_run[0]["training"]
  assert training["tokens_per_second"] > 0 and math.isfinite(training["loss"])
  assert 0 < training["mfu"] < 1  # above 1 would mean a wrong peak
  assert len(training["step_seconds"]) == training["steps"] - 1
  assert training["grad_accum_steps"] == 2


def test_full_plan_uses_a_trained_run_only_when_there_is_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no runs/default here
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    device.full_plan(workdir=str(tmp_path), dtype=None, plan_batch=128, plan_budget_gb=16,
                     train_steps=12)
  plan = device.full_plan(workdir=None, dtype="bfloat16", plan_batch=128,
                          plan_budget_gb=16, train_steps=12)
  assert plan.sampling.workdir is None and plan.sampling.cfg == real_size.XLNET_BASE
  assert plan.sampling.batches == (1, 8, 32, 128)
  assert {d for d, _ in plan.sampling.configurations} == {"bfloat16"}
  assert plan.plan_cfg == real_size.XLNET_BASE and plan.plan_budget_bytes == 16e9
