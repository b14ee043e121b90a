"""The main job end to end on a tiny config: train, infill held-out snippets, print, summarize."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from asarm_jax.cli import main_job
from asarm_jax.evals import report
from asarm_jax.data import StdlibCorpus
from asarm_jax.data import train_tokenizer
from train_helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config


def get_config():
  return tiny_config(num_train_steps=2, seq_len=32)
"""


def _run(args, cwd):
  """The job as `scripts/main.sh` runs it: its own process, one CPU device."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-m", "asarm_jax.cli.main_job", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env={**env, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path, capsys):
  config = tmp_path / "tiny.py"
  config.write_text(TINY_CONFIG.format(tests=str(ROOT / "tests")))
  workdir = tmp_path / "run"
  args = ["--workdir", str(workdir), "--config", str(config), "--snippet_tokens", "64",
          "--num_snippets", "2"]
  first = _run(args, cwd=ROOT)
  assert first.returncode == 0, first.stderr[-3000:]
  out = first.stdout
  assert "Training" in out and "=== snippet 1/2" in out and "=== snippet 2/2" in out
  assert "original:" in out and "50% hidden" in out and "90% hidden" in out
  assert "speed-up" in out and "assd_fused k=3" in out and "sequential" in out
  summary = json.loads((workdir / main_job.SUMMARY_FILE).read_text())
  assert summary["training"]["trained_now"] and summary["training"]["steps"] == 2
  assert len(summary["snippets"]) == 2 and summary["settings"]["rates"] == [0.5, 0.9]
  by_key = {(r["rate"], r["method"]): r for r in summary["infilling"]}
  assert set(by_key) == {(0.5, "sequential"), (0.5, "assd_fused"), (0.9, "sequential"),
                         (0.9, "assd_fused")}
  for (rate, method), result in by_key.items():
    stats = result["stats"]
    hidden = [max(1, int(rate * s["num_tokens"])) for s in summary["snippets"]]
    assert [row["hidden"] for row in result["snippets"]] == hidden
    assert stats["tokens"] == sum(hidden) and stats["rows"] == 2
    if method == "sequential":
      assert stats["nfe"] == stats["tokens"]
    else:
      assert stats["rounds"] <= stats["nfe"] <= stats["tokens"]
  for snippet, row in zip(summary["snippets"], by_key[(0.5, "assd_fused")]["snippets"]):
    assert len(row["completion"]) > 0 and "\u2591" in row["masked"]
    assert snippet["text"].count("\n") >= 3

  # A finished run is reused, not retrained.
  training = main_job.train(tiny_config(num_train_steps=2, seq_len=32), str(workdir))
  assert not training["trained_now"] and training["steps"] == 2
  assert "skipping training" in capsys.readouterr().out


def test_main_job_rejects_bad_rates_and_foreign_dirs(tmp_path):
  result = _run(["--workdir", str(tmp_path / "run"), "--rates", "0.5,1.5"], cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
      "error: flag --rates=['0.5', '1.5']: must lie in (0, 1)")
  (tmp_path / "afile").write_text("not a run")
  result = _run(["--workdir", str(tmp_path / "afile")], cwd=tmp_path)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a run directory")
  (tmp_path / "notarun").mkdir()
  (tmp_path / "notarun" / "precious.txt").write_text("keep me")
  with pytest.raises(ValueError, match="refusing to delete"):
    main_job.train(tiny_config(), str(tmp_path / "notarun"), retrain=True)
  assert (tmp_path / "notarun" / "precious.txt").exists()


def test_pick_snippets_and_hide():
  corpus = StdlibCorpus("validation")
  tokenizer = train_tokenizer([corpus[i] for i in range(20)], vocab_size=400)
  snippets = main_job.pick_snippets(corpus, tokenizer, count=3, max_tokens=60, names=corpus.files)
  assert len(snippets) == 3 and len({s["source"] for s in snippets}) == 3
  for snippet in snippets:
    assert snippet["text"].lstrip().startswith("def ")
    assert 30 <= len(snippet["tokens"]) <= 60 and snippet["tokens"] == tokenizer.encode(
        snippet["text"])
  hidden = main_job.hide(40, 0.5, seed=1)
  assert hidden.sum() == 20 and (hidden == main_job.hide(40, 0.5, seed=1)).all()
  assert main_job.hide(10, 0.99, seed=0).sum() == 9  # never all
  assert main_job.hide(10, 0.01, seed=0).sum() == 1  # never none
  assert not np.array_equal(hidden, main_job.hide(40, 0.5, seed=2))


def test_summary_table_says_why_when_assd_is_slower():
  def result(method, nfe, seconds):
    stats = report.SamplingStats(method=method, draft_len=5 if method == "assd" else 1, rows=1,
                                 tokens=20, nfe=nfe, rounds=nfe, seconds=seconds)
    return dict(rate=0.5, method=method, draft_len=stats.draft_len, stats=stats,
                snippets=[dict(token_matches=3)])

  slower, _ = main_job.summary_table([result("sequential", 20, 1.0), result("assd", 10, 2.0)])
  # 10 rounds of 0.2 s decided 2 tokens each; a sequential step took 0.05 s.
  assert ("50% hidden: assd k=5 is 0.50x sequential in wall-clock although it needs 2.00x fewer "
          "forwards: one of its rounds decided 2.00 tokens but cost 4.00x a sequential "
          "step") in slower
  faster, _ = main_job.summary_table([result("sequential", 20, 2.0), result("assd", 10, 1.0)])
  assert "although" not in faster
