"""Evaluations: HumanEval infilling pipeline, held-out loss, story infilling, the CLI (on a run
directory and on the tests' tiny Hugging Face XLNet directory)."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from asarm_jax import checkpoint
from asarm_jax import masks
from asarm_jax import metrics as metrics_lib
from asarm_jax import sampling
from asarm_jax import train_lib
from asarm_jax.evals import heldout_loss
from asarm_jax.evals import humaneval_infill
from asarm_jax.evals import humaneval_tasks
from asarm_jax.evals import report
from asarm_jax.evals import sandbox
from asarm_jax.evals import span_infill
from asarm_jax.evals import story_infill
from train_helpers import tiny_config

# Tasks whose hidden line is essential: an `if`, a `return True`, an assignment, a `return`.
TASK_INDICES = (2, 5, 8, 21)
SMALL = dict(max_len=64, batch_size=4)  # one compiled sampler shape for every test below

ROOT = pathlib.Path(__file__).resolve().parents[1]

STORIES = [
    "Tom had a dog. The dog liked to run. One day the dog ran away! Tom looked everywhere. "
    "He found it at the park. Then they went home.",
    "Only two sentences here. Not enough.",
    "Ann baked bread. It smelled great. Her brother ate half of it. She was angry at first. "
    "Then they laughed about it.",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evals") / "run"
  train_lib.train_and_evaluate(tiny_config(num_train_steps=2, seq_len=32), str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def model(run_dir):
  return checkpoint.load_for_inference(run_dir)


@pytest.fixture(scope="module")
def tasks():
  every = humaneval_tasks.load_tasks()
  return [every[i] for i in TASK_INDICES]


# --- HumanEval ------------------------------------------------------------------------------


def test_fit_context_cuts_prefix_left_and_suffix_right():
  prefix, suffix = list(range(100)), list(range(100, 150))
  kept_prefix, kept_suffix = span_infill.fit_context(prefix, 10, suffix, max_len=50)
  assert len(kept_prefix) + 10 + len(kept_suffix) == 50
  assert kept_prefix == prefix[-len(kept_prefix):] and kept_suffix == suffix[:len(kept_suffix)]
  assert len(kept_suffix) == 10  # a quarter of the 40 tokens of room
  assert span_infill.fit_context([1, 2], 3, [4], max_len=10) == ([1, 2], [4])  # fits: untouched
  assert span_infill.fit_context([], 5, list(range(30)), max_len=10) == ([], list(range(5)))
  assert span_infill.fit_context(prefix, 50, suffix, max_len=50) is None  # no room for context


def test_select_tasks_is_a_seeded_sample_in_task_order():
  every = humaneval_tasks.load_tasks()
  first = humaneval_infill.select_tasks(every, 20, subset_seed=3)
  assert first == humaneval_infill.select_tasks(every, 20, subset_seed=3)
  assert first != humaneval_infill.select_tasks(every, 20, subset_seed=4)
  positions = [every.index(t) for t in first]
  assert positions == sorted(positions) and len(set(positions)) == 20
  assert humaneval_infill.select_tasks(every, None) == every
  assert humaneval_infill.select_tasks(every, 5000) == every


@pytest.mark.slow
def test_humaneval_pipeline_oracle_passes_and_model_middles_fail(model, tasks):
  cfg, params, tokenizer = model
  results = humaneval_infill.evaluate(params, cfg, tokenizer, tasks=tasks,
                                      methods=("oracle", "sequential", "assd"), timeout_s=20,
                                      **SMALL)
  # Every prompt is longer than 64 tokens here, so the context was cut, and nothing crashed.
  assert results["settings"]["skipped_too_long"] == 0
  assert results["settings"]["lossy_tasks"] == 0  # our tokenizer keeps code as it is
  assert "LOSSY" not in humaneval_infill.table(results)
  oracle = results["methods"]["oracle"]
  assert oracle["pass_at_1"] == 1.0, [t["detail"] for t in oracle["tasks"]]
  assert [t["completion"] for t in oracle["tasks"]] == [t.middle for t in tasks]
  middle_tokens = sum(len(tokenizer.encode(t.middle)) for t in tasks)
  for method in ("sequential", "assd"):
    values = results["methods"][method]
    assert values["total"] == len(tasks)
    for record, task in zip(values["tasks"], tasks):  # a 2-step model writes no working line
      assert not record["passed"] and record["status"] in ("failed", "timeout")
      assert record["completion"] != task.middle
    stats = values["sampling"]
    assert stats.rows == len(tasks) and stats.tokens == middle_tokens
    assert stats.seconds > 0 and stats.compile_seconds >= 0
  sequential, assd = results["methods"]["sequential"]["sampling"], results["methods"]["assd"][
      "sampling"]
  assert sequential.nfe == sequential.rounds == middle_tokens  # one forward per token
  assert assd.rounds <= assd.nfe <= middle_tokens  # the paper's bound
  assert "pass@1" in humaneval_infill.table(results)


def test_a_wrong_middle_fails_in_the_sandbox(tasks):
  programs = [t.program("    return None\n") for t in tasks] + [tasks[0].program(tasks[0].middle)]
  outcomes = sandbox.run_many(programs, timeout_s=20)
  assert [o.passed for o in outcomes] == [False] * len(tasks) + [True]


def test_completions_do_not_depend_on_the_batch(model, tasks):
  cfg, params, tokenizer = model
  examples = [humaneval_infill.pose(t, tokenizer, 64) for t in tasks]
  together = span_infill.infill_examples(params, cfg, examples, jax.random.key(1),
                                         method="sequential", batch_size=4)
  # Example i samples with fold_in(key, i), whatever else shares its batch.
  again = span_infill.infill_examples(params, cfg, examples[:3], jax.random.key(1),
                                      method="sequential", batch_size=4)
  np.testing.assert_array_equal(together.tokens[2], again.tokens[2])
  assert together.stats.rows == 4 and again.stats.rows == 3
  for example, tokens in zip(examples, together.tokens):
    np.testing.assert_array_equal(tokens[~example.hidden], example.tokens[~example.hidden])


# --- held-out loss ---------------------------------------------------------------------------


@pytest.mark.slow
def test_heldout_loss_numbers(model, run_dir):
  cfg, params, tokenizer = model
  rates = (0.15, 0.5, 0.9)
  kwargs = dict(source="stdlib", split="validation", seq_len=32, batch_size=4, num_batches=2)
  results = heldout_loss.evaluate(params, cfg, tokenizer, rates=rates, num_samples=4, **kwargs)
  batches = heldout_loss.load_batches(tokenizer, **kwargs)
  valid = np.concatenate([b["valid"].sum(axis=1) for b in batches]).astype(np.float32)
  # Every decoding order scores the same hidden sets; its NLL is its own.
  orders = [(o, r) for o in masks.ORDERS for r in rates]
  assert [(loss["order"], loss["rate"]) for loss in results["losses"]] == orders
  by_order = {o: [row["loss_nats"] for row in results["losses"] if row["order"] == o]
              for o in masks.ORDERS}
  assert by_order["left_to_right"] != by_order["random"] != by_order["spread"]
  for (_, rate), loss in zip(orders, results["losses"]):
    expected = np.minimum(np.maximum(np.floor(valid * np.float32(rate)), 1), valid)
    assert loss["hidden_tokens"] == int(expected.sum())
    assert loss["valid_tokens"] == int(valid.sum())
    assert math.isfinite(loss["loss_nats"]) and loss["loss_nats"] > 0
    assert loss["bits_per_token"] == pytest.approx(loss["loss_nats"] / math.log(2))
    assert loss["perplexity"] == pytest.approx(math.exp(loss["loss_nats"]))
    assert 0.0 <= loss["accuracy"] <= 1.0
  # An untrained-ish model is near uniform over the vocabulary.
  assert results["losses"][0]["loss_nats"] < 1.5 * math.log(cfg.vocab_size)
  entropy = results["unigram_entropy"]
  assert entropy["samples_tokens"] == 4 * 32 == entropy["data_matched_tokens"]
  assert entropy["data_tokens"] == int(valid.sum())
  for key in ("data_nats", "data_matched_nats", "samples_nats"):
    assert 0 < entropy[key] <= math.log(cfg.vocab_size)
  assert entropy["samples_bits"] == pytest.approx(entropy["samples_nats"] / math.log(2))
  stats = results["sampling"]
  assert stats.rows == 4 and stats.tokens == 4 * 32 and stats.nfe <= stats.tokens
  table = heldout_loss.table(results)
  assert "bits/token" in table and "model samples" in table
  # Same seed, same hidden sets: the numbers repeat.
  again = heldout_loss.evaluate(params, cfg, tokenizer, rates=rates[:1], num_samples=0, **kwargs)
  assert again["losses"][0] == results["losses"][0]


# --- story infilling -------------------------------------------------------------------------


def _mock_stories(self, split, **kwargs):
  del self, split, kwargs
  return [{"text": story.encode()} for story in STORIES]


def test_split_sentences_and_rouge():
  assert story_infill.split_sentences('He said "Go!" Then he left.  Fine? Yes') == [
      'He said "Go!"', "Then he left.", "Fine?", "Yes"]
  story = story_infill.make_story(STORIES[0])
  assert story.middle == "One day the dog ran away!"
  assert story.prefix + story.middle + story.suffix == (
      "Tom had a dog. The dog liked to run. One day the dog ran away! Tom looked everywhere. "
      "He found it at the park.")
  assert story_infill.make_story(STORIES[1]) is None
  assert story_infill.rouge_scores(["the cat sat"], ["the cat sat"]) == {
      "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
  assert story_infill.rouge_scores(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0


def test_story_infill_on_mock_tfds_data(model):
  cfg, params, tokenizer = model
  with tfds.testing.mock_data(as_data_source_fn=_mock_stories):
    results = story_infill.evaluate(params, cfg, tokenizer, dataset="tfds:lm1b",
                                    methods=("oracle", "sequential", "assd"), **SMALL)
  assert results["settings"]["num_stories"] == 2 and results["settings"]["texts_read"] == 3
  oracle = results["methods"]["oracle"]
  assert all(oracle[k] == 1.0 for k in story_infill.ROUGE_TYPES)  # the scorer path is right
  assert [e["fill"] for e in oracle["examples"]] == [e["reference"] for e in oracle["examples"]]
  for method in ("sequential", "assd"):
    values = results["methods"][method]
    assert all(0.0 <= values[k] <= 1.0 for k in story_infill.ROUGE_TYPES)
    assert values["count"] == 2 and values["sampling"].rows == 2
    assert values["sampling"].nfe > 0
  assert "ROUGE-1" in story_infill.table(results)


def test_story_that_does_not_fit_is_skipped_not_scored_as_empty(model):
  cfg, params, tokenizer = model
  long_middle = "It was " + " and ".join(["a very long day"] * 40) + "."
  texts = [STORIES[0], f"A. B. {long_middle} D. E."]

  def mock(self, split, **kwargs):
    del self, split, kwargs
    return [{"text": text.encode()} for text in texts]

  with tfds.testing.mock_data(as_data_source_fn=mock):
    results = story_infill.evaluate(params, cfg, tokenizer, dataset="tfds:lm1b",
                                    methods=("oracle",), **SMALL)
  assert results["settings"]["num_stories"] == 2
  assert results["settings"]["skipped_too_long"] == 1
  oracle = results["methods"]["oracle"]
  assert oracle["count"] == 1
  assert all(oracle[k] == 1.0 for k in story_infill.ROUGE_TYPES)


# --- the command line ------------------------------------------------------------------------


def _evals_cli(*argv):
  """`python -m asarm_jax.evals ARGV` in its own process (its flags are global to a process)."""
  return subprocess.run([sys.executable, "-m", "asarm_jax.evals", *argv], capture_output=True,
                        text=True, timeout=300, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_story_infill_without_dataset_is_one_line(run_dir):
  done = _evals_cli("--workdir", run_dir, "--task", "story_infill")
  assert done.returncode == 2 and done.stderr.strip() == (
      "error: --task story_infill needs --dataset tfds:<name> (and --text_key if the text "
      "feature is not 'text')")


@pytest.mark.slow
def test_cli_humaneval_end_to_end(tmp_path, run_dir):
  out = tmp_path / "results.json"
  done = _evals_cli("--workdir", run_dir, "--task", "humaneval_infill", "--limit", "3",
                    "--method", "sequential,assd,assd_fused,oracle", "--max_len", "64",
                    "--batch_size", "4", "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  k = sampling.DEFAULT_DRAFT_LEN
  assert "pass@1" in done.stdout and f"assd k={k}" in done.stdout and str(out) in done.stdout
  assert f"assd_fused k={k}" in done.stdout
  results = json.loads(out.read_text())
  assert results["settings"]["num_tasks"] == 3 and results["settings"]["limit"] == 3
  assert "seeded" in results["settings"]["subset"]
  assert results["methods"]["oracle"]["pass_at_1"] == 1.0
  for method in ("sequential", "assd", "assd_fused"):
    stats = results["methods"][method]["sampling"]
    assert stats["nfe"] > 0 and stats["tokens_per_second"] > 0
    assert len(results["methods"][method]["tasks"]) == 3


def test_cli_heldout_loss_defaults_score_what_training_scored(tmp_path, run_dir):
  """With the run's own settings (the defaults) the CLI evaluates the sequences and hidden sets of
  training's last evaluation, so it reports the same loss."""
  trained = [r for r in metrics_lib.read_metrics(run_dir) if "eval/loss@0.5" in r][-1]
  out = tmp_path / "heldout.json"
  done = _evals_cli("--workdir", run_dir, "--task", "heldout_loss", "--rates", "0.5",
                    "--orders", "left_to_right", "--num_samples", "0", "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(out.read_text())
  assert (results["settings"]["num_batches"], results["settings"]["batch_size"]) == (1, 8)
  assert results["losses"][0]["hidden_tokens"] == trained["eval/hidden_tokens@0.5"]
  assert results["losses"][0]["loss_nats"] == pytest.approx(trained["eval/loss@0.5"], rel=1e-5)


def test_cli_humaneval_refuses_code_an_hf_tokenizer_cannot_keep(hf, tmp_path):
  """XLNet's tokenizer folds newlines and indentation: one error line naming the first loss and the
  flag, exit status 2, before anything is sampled; nothing written."""
  import hf_xlnet_helpers  # pylint: disable=import-outside-toplevel (torch: only where needed)
  before = hf_xlnet_helpers.snapshot(hf.dirs["json"])
  done = _evals_cli("--workdir", str(hf.dirs["json"]), "--task", "humaneval_infill", "--limit",
                    "2", "--out", str(tmp_path / "refused.json"))
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
  assert re.fullmatch(
      r"error: the tokenizer cannot keep the code of 2 of the 2 tasks as it is \(first "
      r"HumanEval/\d+/L\d+: in its prefix, a newline at character \d+.*\); .*pass "
      r"allow_lossy_tokenization=True \(--allow_lossy_tokenization\) to evaluate it anyway",
      lines[0]), lines[0]
  assert not (tmp_path / "refused.json").exists()
  assert hf_xlnet_helpers.snapshot(hf.dirs["json"]) == before


@pytest.mark.slow
def test_cli_humaneval_with_allow_lossy_tokenization_on_an_hf_directory(hf, tmp_path):
  """--allow_lossy_tokenization: it runs and says LOSSY; the oracle's line comes back with its
  whitespace folded (no indentation, no newline), so even the oracle fails."""
  out = tmp_path / "lossy.json"
  done = _evals_cli("--workdir", str(hf.dirs["json"]), "--task", "humaneval_infill", "--limit",
                    "2", "--method", "sequential,oracle", "--max_len", "64", "--batch_size", "2",
                    "--allow_lossy_tokenization", "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "LOSSY tokenization: the tokenizer changed the code of 2 tasks" in done.stdout
  results = json.loads(out.read_text())
  assert results["settings"]["lossy_tasks"] == 2 and results["settings"]["num_tasks"] == 2
  middles = {task.task_id: task.middle for task in humaneval_tasks.load_tasks()}
  oracle = results["methods"]["oracle"]
  assert [t["completion"] for t in oracle["tasks"]] == [
      " ".join(middles[t["task_id"]].split()) for t in oracle["tasks"]]
  assert oracle["pass_at_1"] == 0.0 and oracle["statuses"] == {"failed": 2}
  sequential = results["methods"]["sequential"]
  assert sequential["total"] == 2 and len(sequential["tasks"]) == 2
  assert sequential["sampling"]["nfe"] == sequential["sampling"]["tokens"] > 0


@pytest.mark.slow
def test_cli_story_infill_on_an_hf_directory(hf, tmp_path):
  """story_infill runs on the HF directory and reports its ROUGE; the oracle's fill is the hidden
  sentence with XLNet's whitespace folding, which ROUGE does not see (1.0)."""
  out = tmp_path / "story.json"
  done = _evals_cli("--workdir", str(hf.dirs["json"]), "--task", "story_infill", "--dataset",
                    "stdlib", "--limit", "2", "--method", "sequential,oracle", "--max_len", "64",
                    "--batch_size", "2", "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ROUGE-1" in done.stdout
  results = json.loads(out.read_text())
  assert results["settings"]["num_stories"] == 2 and results["settings"]["skipped_too_long"] == 0
  oracle, sequential = results["methods"]["oracle"], results["methods"]["sequential"]
  assert all(oracle[k] == 1.0 for k in story_infill.ROUGE_TYPES)
  assert [e["fill"] for e in oracle["examples"]] == [
      " ".join(e["reference"].split()) for e in oracle["examples"]]
  assert all(0.0 <= sequential[k] <= 1.0 for k in story_infill.ROUGE_TYPES)
  assert sequential["count"] == 2
  assert sequential["sampling"]["nfe"] == sequential["sampling"]["tokens"] > 0


def test_method_labels():
  assert [report.method_label(m, 5) for m in ("sequential", "assd", "assd_fused", "oracle")] == [
      "sequential", "assd k=5", "assd_fused k=5", "oracle"]
  assert [report.drafts_per_round(m, 5) for m in span_infill.METHODS] == [
      1 if m in ("sequential", "oracle") else 5 for m in span_infill.METHODS]


def test_sampling_stats_merge_and_json():
  a = report.SamplingStats("assd", 5, rows=2, tokens=10, nfe=6, rounds=3, seconds=1.0)
  b = report.SamplingStats("assd", 5, rows=1, tokens=5, nfe=2, rounds=1, seconds=1.0)
  merged = a.merge(b)
  assert (merged.tokens, merged.nfe, merged.rounds) == (15, 8, 4)
  assert merged.tokens_per_round == 15 / 4 and merged.tokens_per_second == 7.5
  assert merged.to_json()["nfe_per_row"] == 8 / 3
  with pytest.raises(ValueError, match="cannot merge"):
    a.merge(report.SamplingStats("sequential"))
  assert report.SamplingStats("oracle").to_json()["tokens_per_round"] != 0  # NaN, not a crash


def _output(rounds, accepted):
  """A SampleOutput of fused rounds (one forward each) with these counts."""
  zeros = np.zeros((len(rounds), 4), np.int32)
  return sampling.SampleOutput(tokens=zeros, nfe=rounds, rounds=rounds, accepted=accepted,
                               drafted=accepted, ranks=zeros)


def test_sampling_stats_count_idle_rows_of_a_ragged_batch():
  """A batch loops until its slowest row is done: rows that finished earlier, and padding rows,
  idle for the rest of the call."""
  stats = report.SamplingStats("assd_fused", 3)
  ragged = _output(rounds=np.array([3, 5, 5]), accepted=np.array([6, 9, 9]))
  stats.add_call(ragged, np.array([9, 12, 12]), np.array([True, True, False]), 1.0, 0.0)
  assert (stats.rows, stats.rounds, stats.row_iterations) == (2, 8, 15)
  assert stats.idle_fraction == pytest.approx(7 / 15)  # 2 idle iterations of row 0, 5 of padding
  even = _output(rounds=np.array([4, 4]), accepted=np.array([8, 8]))
  stats.add_call(even, np.array([8, 8]), np.array([True, True]), 1.0, 0.0)
  assert stats.idle_fraction == pytest.approx(1 - 16 / 23)
  assert stats.to_json()["idle_fraction"] == stats.idle_fraction
  assert "idle" in report.format_table([report.sampling_row(stats)], report.SAMPLING_COLUMNS)
