"""Where a cached decoding step spends its time: a jax.profiler trace of the sampler, by op.

python -m benchmarks.profile_forward [--seq_lens 128,512] [--batches 1,32] [--method sequential]
    [--draft_len 5] [--model default|xlnet_base]

For each (N, batch) it compiles `sampling.sample` (90% of the positions hidden and generated in the
infill order, by benchmarks/sampling.py's `make_problem`; random weights, as the cost of a step does
not depend on them: `--model default` has configs/default.py's sizes, `--model xlnet_base` the
XLNet-base shape of benchmarks/real_size.py), runs it once to warm up, then once under
`jax.profiler.trace`. Every kernel event of the
trace is an HLO instruction of the compiled sampler; its `op_name` metadata (the einsum or Flax
module it came from) puts it in one of `CATEGORIES`. Reported per loop iteration (one forward for
sequential decoding): the wall-clock, the kernel time by category, the number of kernels run, and,
for the two products over the cached keys and values, the bytes they read and the rate achieved.
Writes benchmarks/results/profile_forward.json and .md.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from asarm_jax import sampling
from asarm_jax.model import ModelConfig, init_params
from benchmarks.sampling import make_problem

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
VOCAB_SIZE = 4096
HIDDEN_FRACTION = 0.9
# (category, substrings of op_name; the first category with a match wins). The einsum specs are
# those of model.RelativeAttention and ASARM._run.
CATEGORIES = (
    ("attention: scores over cached keys", ("bhrd,bhdn->bhrn",)),
    ("attention: values over cached values", ("bhrn,bhnd->bhrd",)),
    ("attention: relative-position scores", ("bhrd,htd->bhrt", "take_along_axis")),
    ("attention: projections", ("attention._project", "brk,mk->brm")),
    ("attention: mask, softmax, layer norm", ("/attention/",)),
    ("cache write", ("/scatter",)),
    ("feed-forward", ("/ff/",)),
    ("LM head", ("bqm,vm->bqv", "bqm,mv->bqv")),
    ("model: other", ("ASARM.",)),
)
SAMPLER = "sampler: processing, sampling, acceptance, loop"
UNATTRIBUTED = "no op_name: ops XLA inserted (copies, layout changes, some dots)"


def category(op_name: str) -> str:
  """The `CATEGORIES` entry of an HLO op_name; `SAMPLER` for everything else with an op_name."""
  if not op_name:
    return UNATTRIBUTED
  for name, needles in CATEGORIES:
    if any(needle in op_name for needle in needles):
      return name
  return SAMPLER


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata ('' without one), from compiled HLO text."""
  names = {}
  for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", hlo_text, re.M):
    op = re.search(r'op_name="([^"]*)"', match.group(2))
    names.setdefault(match.group(1), op.group(1) if op else "")
  return names


def kernel_events(trace_dir: str, instructions: dict[str, str]) -> list[tuple[str, float]]:
  """(instruction name, microseconds) of every trace event that is an HLO instruction."""
  files = sorted(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1], "rt") as handle:
    trace = json.load(handle)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return [(e["name"], float(e.get("dur", 0.0))) for e in events
          if e.get("ph") == "X" and e.get("name") in instructions]


def default_sized_config() -> ModelConfig:
  """configs/default.py's model with a 4096-token vocabulary."""
  from configs import default as default_config
  return ModelConfig(vocab_size=VOCAB_SIZE, mask_token_id=VOCAB_SIZE - 1,
                     **default_config.get_config().model.to_dict())


def model_config(name: str) -> ModelConfig:
  """The model of `--model`: "default" (`default_sized_config`) or "xlnet_base" (real_size's)."""
  from benchmarks import real_size  # pylint: disable=import-outside-toplevel (orbax: slow)
  configs = {"default": default_sized_config, "xlnet_base": lambda: real_size.XLNET_BASE}
  if name not in configs:
    raise ValueError(f"--model must be one of {sorted(configs)}; got {name!r}")
  return configs[name]()


def cache_bytes_read(cfg: ModelConfig, seq_len: int, batch: int) -> int:
  """Bytes the score and value products read from the float32 cache per forward (every layer)."""
  return 2 * cfg.n_layers * batch * cfg.n_heads * cfg.d_head * seq_len * 4


def profile_setting(cfg: ModelConfig, params, seq_len: int, batch: int, method: str,
                    draft_len: int) -> dict[str, Any]:
  """One traced run of the sampler at (N, batch): per-iteration times by category."""
  # The sampling benchmark's hidden subsets and infill order; token ids do not affect the time.
  problem = make_problem(np.zeros((batch, seq_len), np.int32), HIDDEN_FRACTION, batch, seed=0)
  tokens, ranks, num_prompt = problem.tokens, problem.ranks, problem.num_prompt
  options = dict(method=method, draft_len=draft_len)
  sampler = sampling.Sampler.create(cfg, **options)
  batch_args = sampler.batch(tokens, ranks, num_prompt, jax.random.key(0))
  compiled = sampler.compile(params, batch_args)
  instructions = op_names(compiled.as_text())
  out = jax.block_until_ready(compiled(params, batch_args))  # warm-up
  iterations = int(np.max(np.asarray(out.rounds)))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, batch_args))
      wall = time.perf_counter() - start
    events = kernel_events(trace_dir, instructions)
  by_category, by_op = collections.Counter(), collections.Counter()
  for name, micros in events:
    op = instructions[name].replace("jit(_run)/", "") or f"({name})"
    by_category[category(instructions[name])] += micros
    by_op[op] += micros
  per_iteration = lambda micros: micros / 1e3 / iterations  # noqa: E731  (ms)
  kernel_ms = per_iteration(sum(by_category.values()))
  cache_ms = sum(per_iteration(by_category[name]) for name, _ in CATEGORIES[:2])
  read = cache_bytes_read(cfg, seq_len, batch)
  return dict(
      seq_len=seq_len, batch=batch, method=method, options=options, iterations=iterations,
      wall_ms_per_iteration=wall * 1e3 / iterations,
      kernel_ms_per_iteration=kernel_ms,
      kernels_per_iteration=len(events) / iterations,
      tokens_per_second=batch * int(seq_len * HIDDEN_FRACTION) / wall,
      categories_ms_per_iteration={name: per_iteration(by_category[name])
                                   for name in [*(c for c, _ in CATEGORIES), SAMPLER,
                                                UNATTRIBUTED]},
      top_ops_ms_per_iteration={op: per_iteration(t) for op, t in by_op.most_common(15)},
      cache_products=dict(bytes_read_per_forward=read, ms_per_iteration=cache_ms,
                          gb_per_second=read / (cache_ms * 1e-3) / 1e9 if cache_ms else None))


def markdown(results: dict[str, Any]) -> str:
  """One table: per-iteration ms by category for every setting."""
  rows = results["settings"]
  header = ["category"] + [f"N={r['seq_len']} B={r['batch']}" for r in rows]
  lines = [f"Host: {results['machine']}; method {rows[0]['method'] if rows else '-'}; ms per loop "
           "iteration (kernel time; the two cores can overlap kernels).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name in rows[0]["categories_ms_per_iteration"] if rows else ():
    lines.append("| " + " | ".join([name] + [
        f"{r['categories_ms_per_iteration'][name]:.3f}" for r in rows]) + " |")
  for label, key, spec in (("kernels, total", "kernel_ms_per_iteration", ".3f"),
                           ("wall-clock", "wall_ms_per_iteration", ".3f"),
                           ("kernels run", "kernels_per_iteration", ".0f"),
                           ("tokens/s", "tokens_per_second", ".0f")):
    lines.append("| " + " | ".join([f"**{label}**"] + [format(r[key], spec) for r in rows]) + " |")
  lines.append("| **cache products: MB read, GB/s** | " + " | ".join(
      f"{r['cache_products']['bytes_read_per_forward'] / 1e6:.1f}, "
      f"{r['cache_products']['gb_per_second'] or 0:.1f}" for r in rows) + " |")
  return "\n".join(lines) + "\n"


def run(seq_lens: Sequence[int], batches: Sequence[int], method: str = "sequential",
        draft_len: int = 5, out: str | os.PathLike | None = None,
        cfg: ModelConfig | None = None, log=print) -> dict[str, Any]:
  """Profiles every (N, batch) with `cfg` (default: `default_sized_config()`); writes `out` (JSON)
  and its .md table."""
  cfg = cfg or default_sized_config()
  params = init_params(cfg, jax.random.key(0))
  settings = []
  for seq_len in seq_lens:
    if seq_len > cfg.max_len:
      raise ValueError(f"seq_len {seq_len} exceeds the model's max_len {cfg.max_len}")
    for batch in batches:
      settings.append(profile_setting(cfg, params, seq_len, batch, method, draft_len))
      log(f"N={seq_len} batch={batch}: {settings[-1]['wall_ms_per_iteration']:.3f} ms/iteration")
  results = dict(
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=" ".join(["python -m benchmarks.profile_forward", *sys.argv[1:]]),
      machine=f"{os.cpu_count()}-core {jax.default_backend().upper()}, jax {jax.__version__}, "
              f"load average {os.getloadavg()[0]:.1f}",
      model=dataclasses.asdict(cfg), settings=settings)
  out = pathlib.Path(out or RESULTS_DIR / "profile_forward.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  out.with_suffix(".md").write_text(markdown(results))
  log(markdown(results))
  return results


def main() -> None:
  """The command line (the flags below)."""
  from absl import flags

  from asarm_jax.cli import common

  values = flags.FLAGS
  common.quiet_library_logs()
  run(common.comma_integers(values.seq_lens, "seq_lens"),
      common.comma_integers(values.batches, "batches"), values.method, values.draft_len,
      values.out, model_config(values.model))


if __name__ == "__main__":
  from absl import flags

  from asarm_jax.cli import common

  flags.DEFINE_string("seq_lens", "128,512", "Comma-separated sequence lengths N.")
  flags.DEFINE_string("batches", "1,32", "Comma-separated batch sizes.")
  flags.DEFINE_enum("method", "sequential", list(sampling.METHODS), "The sampler to profile.")
  flags.DEFINE_integer("draft_len", 5, "k for ASSD methods.")
  flags.DEFINE_string("out", None, "JSON output (default benchmarks/results/profile_forward.json).")
  flags.DEFINE_enum("model", "default", ["default", "xlnet_base"],
                    "Random weights of configs/default.py's sizes, or of the XLNet-base shape.")
  common.run(main, module_name=__name__, summary=__doc__)
