"""The text API (`infilling.infill`) and the sample.py command."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from asarm_jax import infilling
from asarm_jax import sampling
from asarm_jax.cli import sample as sample_cli

TEXT = "def add(a, b):\n    return [MASK*3] + b\n# [MASK] done[MASK*2]"


@pytest.fixture(scope="module")
def model():
  return sample_cli.random_model(0)


@pytest.mark.parametrize("text, parts", [
    ("a [MASK] b [MASK*3]", ["a ", 1, " b ", 3]),
    ("[MASK*2]", [2]),
    ("[MASK][MASK*01]x", [1, 1, "x"]),
    ("x[MASK]y", ["x", 1, "y"]),
])
def test_parse(text, parts):
  assert infilling.parse_masked_text(text) == parts


@pytest.mark.parametrize("text, pattern", [
    ("a [MASK", "unclosed"),
    ("a [MASK*3 b", "unclosed"),
    ("a [MASK*] b", "malformed"),
    ("a [MASK*x] b", "malformed"),
    ("a [MASKED] b", "malformed"),
    ("a [MASK*2.5] b", "malformed"),
    ("a [MASK*0] b", "n must be >= 1"),
    ("a [MASK*-2] b", "n must be >= 1"),
    ("no spans here", "no \\[MASK\\]"),
])
def test_parse_errors(text, pattern):
  with pytest.raises(ValueError, match=pattern):
    infilling.parse_masked_text(text)


def _fails_if_compiled(monkeypatch):
  def must_not_compile(*args, **kwargs):
    raise AssertionError("compiled despite a bad argument")
  monkeypatch.setattr(sampling, "_run", must_not_compile)


@pytest.mark.parametrize("text, options, pattern", [
    ("x [MASK*300]", {}, "max_len"),
    ("x [MASK*3]", dict(order="reverse"), "order"),
    ("x [MASK*3]", dict(num_samples=0), "num_samples"),
    ("x [MASK*3]", dict(top_p=2.0), "top_p"),
    ("x [MASK*3]", dict(method="beam"), "method"),
    ("x [MASK*3]", dict(draft_len=0), "draft_len"),
])
def test_infill_errors_before_compiling(model, monkeypatch, text, options, pattern):
  cfg, params, tokenizer = model
  _fails_if_compiled(monkeypatch)
  with pytest.raises(ValueError, match=pattern):
    infilling.infill_many(params, cfg, tokenizer, text, jax.random.key(0), **options)


def test_infill_keeps_the_text_and_fills_the_spans(model):
  cfg, params, tokenizer = model
  results = infilling.infill_many(params, cfg, tokenizer, TEXT, jax.random.key(0), num_samples=3,
                                  draft_len=4, temperature=0.8)
  for result in results:
    assert len(result.fills) == 3
    fill = iter(result.fills)
    expected = "".join(next(fill) if isinstance(p, int) else p
                       for p in infilling.parse_masked_text(TEXT))
    assert result.text == expected
    assert result.text.startswith("def add(a, b):\n    return ")
    assert result.num_generated == 6
    assert 1 <= result.nfe <= result.num_generated
    assert cfg.mask_token_id not in result.tokens.tolist()
    json.dumps(result.to_json())


@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=1.0, top_k=50),
                                     dict(order="random", order_seed=3)],
                         ids=["greedy", "sampled", "random_order"])
def test_padding_does_not_change_the_result(model, options):
  """Bucketed length (64) and exact length give the same completion for the same key."""
  cfg, params, tokenizer = model
  key = jax.random.key(5)
  bucketed = infilling.infill_many(params, cfg, tokenizer, TEXT, key, num_samples=2, **options)
  exact = infilling.infill_many(params, cfg, tokenizer, TEXT, key, num_samples=2, length_bucket=1,
                                **options)
  assert [r.text for r in bucketed] == [r.text for r in exact]
  assert [r.nfe for r in bucketed] == [r.nfe for r in exact]


def test_a_group_larger_than_the_batch_streams_with_the_same_results(model):
  """5 examples with batch_size 2 run as one stream through 2 slots (continuous batching): the
  same tokens and NFE as one batch of 5, and less idle work. The last to start has a prompt of 41
  tokens: its slot computes 64 prefill rows, the others 32."""
  cfg, params, tokenizer = model
  key = jax.random.key(2)
  prefixes = ["def add(a, b):\n    return ", "x = ", "def f():\n    "]
  examples = [infilling.Example.from_span(tokenizer.encode(p), [5] * 4, []) for p in prefixes]
  examples += [infilling.Example.from_span([5], [6] * 9, [7]),
               infilling.Example.from_span([5] * 40, [6] * 3, [7])]
  stream, = infilling.fill_examples(params, cfg, examples, key, batch_size=2, method="sequential")
  batch, = infilling.fill_examples(params, cfg, examples, key, batch_size=5, method="sequential")
  assert stream.out.idle_iterations is not None and batch.out.idle_iterations is None
  assert stream.out.idle_fraction < batch.out.idle_fraction
  assert stream.indices == batch.indices and len(stream.indices) == 5
  np.testing.assert_array_equal(stream.out.tokens, batch.out.tokens)
  np.testing.assert_array_equal(stream.out.nfe, batch.out.nfe)


def test_greedy_is_the_same_for_both_methods(model):
  cfg, params, tokenizer = model
  sequential = infilling.infill(params, cfg, tokenizer, TEXT, jax.random.key(0),
                                method="sequential", temperature=0.0)
  assd = infilling.infill(params, cfg, tokenizer, TEXT, jax.random.key(1), method="assd",
                          draft_len=5, temperature=0.0)
  assert sequential.text == assd.text
  assert sequential.nfe == 6 and assd.nfe <= 6


def test_format_results_json_and_text(model):
  cfg, params, tokenizer = model
  results = infilling.infill_many(params, cfg, tokenizer, TEXT, jax.random.key(0), num_samples=2,
                                  draft_len=4)
  lines = sample_cli.format_results(results, as_json=True)
  assert len(lines) == 2
  for index, line in enumerate(lines):
    record = json.loads(line)
    assert record["sample"] == index and record["nfe"] <= record["num_generated"] == 6
    assert record["tokens_per_second"] > 0
  text_lines = sample_cli.format_results(results[:1], as_json=False)
  assert "nfe" in text_lines[0] and "tokens/s" in text_lines[0]


def test_sample_py_without_checkpoint_fails_clearly(tmp_path):
  pytest.importorskip("asarm_jax.checkpoint")
  script = pathlib.Path(__file__).resolve().parents[1] / "sample.py"
  done = subprocess.run([sys.executable, str(script), "--workdir", str(tmp_path), "--text",
                         "a [MASK]"], capture_output=True, text=True, timeout=300,
                        cwd=script.parent)
  assert done.returncode != 0
  assert "error:" in done.stderr and str(tmp_path) in done.stderr
  assert "Traceback" not in done.stderr
