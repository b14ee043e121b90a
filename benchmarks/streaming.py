"""Continuous batching benchmark: a ragged workload as batches vs as one stream through the slots.

python -m benchmarks.streaming --workdir runs/default    # the trained default model
python -m benchmarks.streaming --random_model            # untrained, configs/default.py's sizes
python -m benchmarks.streaming --quick                   # tiny random model, N=32: a smoke run

The workload is what the evaluations fill: --num_problems held-out stdlib snippets (benchmarks/
sampling.py's text) of random lengths in [N/4, N] (N = 256) with a random 30-95% of each hidden,
filled left to right at temperature 1, posed at length N. Every problem samples with its own key
(`fold_in(key(seed), i)`), so both strategies produce the same tokens (checked). Per method
(sequential decoding, fused ASSD with k = --draft_len; cache on):
- batches: the problems sorted by hidden count, most first, cut into batches of --slots rows (the
  last topped up with copies of its first row), one sampler call each, one after the other: every
  batch loops until its slowest row is done;
- stream: one call with `num_slots=--slots` (`sampling.Sampler`, streaming.py): a slot whose problem
  is done takes the next one.
Each call is compiled first and timed as the median of 3 runs. Reported: run seconds, tokens/s,
the idle fraction (`evals.report.SamplingStats`: row-iterations spent on finished problems and
top-up rows) and the stream's speed-up. Writes benchmarks/results/streaming.{json,md} (or --out).
"""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

from asarm_jax import infilling, sampling
from asarm_jax.evals import report
from benchmarks import drafters
from benchmarks import sampling as sampling_benchmark

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
LENGTH, QUICK_LENGTH = 256, 32
HIDDEN_RANGE = (0.3, 0.95)
REPEATS = 3
METHODS = ("sequential", "assd_fused")


def workload(tokenizer, *, num_problems: int, length: int, seed: int
             ) -> list[infilling.Example]:
  """`num_problems` snippets of held-out text, lengths in [length/4, length], 30-95% hidden."""
  chunks = sampling_benchmark.text_chunks(tokenizer, length, num_problems)
  rng = np.random.default_rng(seed)
  examples = []
  for chunk in chunks:
    size = int(rng.integers(length // 4, length + 1))
    hidden = np.zeros(size, bool)
    count = max(1, int(size * rng.uniform(*HIDDEN_RANGE)))
    hidden[rng.choice(size, count, replace=False)] = True
    examples.append(infilling.Example(tokens=chunk[:size], hidden=hidden))
  return examples


def _timed(sampler: sampling.Sampler, model, examples, indices: list[int], keys, length: int,
           num_slots: int | None, stats: report.SamplingStats, kept: int) -> np.ndarray:
  """One compiled call on the examples `indices` (its first `kept` rows counted), timed into
  `stats`; returns its tokens."""
  tokens, ranks, num_prompt, num_valid = infilling.pose_batch(
      [examples[i] for i in indices], length, indices=indices)
  out, compile_s, run_s = sampler.timed(model.params, tokens, ranks, num_prompt,
                                        keys[np.asarray(indices)], num_valid=num_valid,
                                        repeats=REPEATS, num_slots=num_slots)
  stats.add_call(out, num_valid - num_prompt, np.arange(len(indices)) < kept, run_s, compile_s)
  return np.asarray(out.tokens)[:kept]


def measure(model, examples: list[infilling.Example], *, length: int, slots: int, draft_len: int,
            seed: int) -> list[dict[str, Any]]:
  """The batches and stream rows of every method."""
  order = sorted(range(len(examples)), key=lambda i: (-int(examples[i].hidden.sum()), i))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      np.arange(len(examples)))
  rows = []
  for method in METHODS:
    k = draft_len if method == "assd_fused" else 1
    sampler = sampling.Sampler.create(model.cfg, method=method, draft_len=k)
    by_strategy, tokens = {}, {}
    for strategy in ("batches", "stream"):
      stats = report.SamplingStats(method, k)
      if strategy == "stream":
        filled = [_timed(sampler, model, examples, order, keys, length, slots, stats, len(order))]
      else:
        filled = []
        for start in range(0, len(order), slots):
          part = order[start:start + slots]
          rows_of_call = part + [part[0]] * (slots - len(part))
          filled.append(_timed(sampler, model, examples, rows_of_call, keys, length, None, stats,
                               len(part)))
      tokens[strategy] = np.concatenate(filled)
      by_strategy[strategy] = stats
    same = bool(np.array_equal(tokens["batches"], tokens["stream"]))
    for strategy, stats in by_strategy.items():
      rows.append({**stats.to_json(), "method": report.method_label(method, k),
                   "strategy": strategy, "slots": slots, "same_tokens_as_other": same,
                   "speedup_vs_batches": by_strategy["batches"].seconds / stats.seconds})
  return rows


def markdown(results: dict[str, Any]) -> str:
  """The table of the JSON results."""
  lines = ["# Continuous batching", "", f"`{results['command']}`", "",
           f"Model: {results['model']}. {results['num_problems']} held-out snippets of "
           f"{results['length'] // 4}-{results['length']} tokens, "
           f"{HIDDEN_RANGE[0]:.0%}-{HIDDEN_RANGE[1]:.0%} hidden, left to right, posed at length "
           f"{results['length']}, {results['slots']} rows at once; run seconds are the sums of "
           "each call's median of 3 runs, compilation excluded. idle: row-iterations spent on "
           "finished problems and top-up rows.", "",
           "| method | strategy | run s | tok/s | idle | tok/round | same tokens | × batches |",
           "|---|---|---|---|---|---|---|---|"]
  for row in results["rows"]:
    lines.append(f"| {row['method']} | {row['strategy']} | {row['seconds']:.2f} | "
                 f"{row['tokens_per_second']:.0f} | {row['idle_fraction']:.0%} | "
                 f"{row['tokens_per_round']:.2f} | "
                 f"{'yes' if row['same_tokens_as_other'] else 'NO'} | "
                 f"{row['speedup_vs_batches']:.2f} |")
  return "\n".join(lines) + "\n"


def run_benchmark(*, workdir: str | None, random_model: bool, quick: bool, out: str | None,
                  num_problems: int, slots: int, draft_len: int, seed: int,
                  command: str) -> dict[str, Any]:
  """Measures both strategies and writes the JSON and Markdown reports."""
  if not 1 <= slots < num_problems:
    raise ValueError(f"--slots must be in [1, --num_problems); got {slots} and {num_problems}")
  start = time.perf_counter()
  model, tokenizer = sampling_benchmark.load_model(workdir=workdir, random_model=random_model,
                                                   seed=seed)
  length = min(QUICK_LENGTH if quick else LENGTH, model.cfg.max_len)
  examples = workload(tokenizer, num_problems=num_problems, length=length, seed=seed)
  rows = measure(model, examples, length=length, slots=slots, draft_len=draft_len, seed=seed)
  results = {"command": command, "model": model.description, "num_problems": num_problems,
             "length": length, "slots": slots, "rows": rows, "jax": jax.__version__,
             "seconds": time.perf_counter() - start}
  drafters.write_report(results, pathlib.Path(out) if out else RESULTS_DIR / "streaming.json",
                        markdown)
  return results


def main() -> None:
  """The command line."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  from asarm_jax.cli import common  # pylint: disable=import-outside-toplevel

  common.quiet_library_logs()
  values = flags.FLAGS
  if values.workdir is None and not (values.random_model or values.quick):
    raise ValueError("name a model: --workdir DIR, --random_model or --quick")
  run_benchmark(workdir=values.workdir, random_model=values.random_model, quick=values.quick,
                out=values.out, num_problems=values.num_problems, slots=values.slots,
                draft_len=values.draft_len, seed=values.seed,
                command=" ".join(["python -m benchmarks.streaming", *sys.argv[1:]]))


if __name__ == "__main__":
  from absl import flags as _flags

  from asarm_jax.cli import common

  _flags.DEFINE_string("workdir", None, "Training run directory of the model under test.")
  _flags.DEFINE_bool("random_model", False, "An untrained model of configs/default.py's sizes.")
  _flags.DEFINE_integer("num_problems", 64, "Snippets in the workload.", lower_bound=2)
  _flags.DEFINE_integer("slots", 8, "Rows sampled at once (batch size, stream slots).",
                        lower_bound=1)
  drafters.define_common_flags("streaming", "k of the fused ASSD rows.")
  common.run(main, module_name=__name__, summary=__doc__)
