"""Real-size forwards against this machine's limits: the XLNet-base shape with random weights.

python -m benchmarks.real_size                 # batches 1, 8, 32; N = 512; G = 25 generated
python -m benchmarks.real_size --batches 1 --generated 50 --draft_len 5 --repeats 3
python -m benchmarks.real_size --quick         # a tiny shape: a smoke run of seconds

Model: `XLNET_BASE` (d_model 768, 12 layers, 12 heads of 64, d_inner 3072, vocabulary 32000, ~117M
parameters) with random weights (`init_params`; the time of a forward does not depend on them), or
a trained run's model (`Settings.workdir`, as benchmarks/device.py does when one is present), in
float32 and, through `asarm_jax.model.cast_for_inference`, in bfloat16. Every (dtype, method) of
`Settings.configurations` (default `CONFIGURATIONS`) runs at every batch, cached, at N = 512.

Problem: zero tokens (token ids do not change the time) with benchmarks/sampling.py's `make_problem`
hidden subsets and infill order, a prompt of `PROMPT_LEN` = 32 ranks and `num_valid` = 32 + G, so
that G tokens are generated and the ranks after them are padding. A forward's shapes are static
whatever the prompt length (each row attends over all N cached keys, masked), so it costs what it
costs with a prompt of N - G; the short prompt keeps the first forward's prefill (the prompt's
content rows, at least 32 per row) small.

Timing: `Sampler.compile` compiles (compile seconds, reported apart) and the program runs once
(warm-up); then `repeats` warm runs generating G tokens alternate with warm runs generating a
baseline of k (= draft_len) tokens, the same compilation (only `num_valid` differs). A loop
iteration is one forward for sequential decoding and fused ASSD, one round of two forwards (draft,
verify) for ASSD:
  ms per iteration = (median run s(G) - median run s(k)) / (max rounds(G) - max rounds(k)),
which leaves out what both runs share: the prefill forward, the set-up and the transfers. The
whole run's run s / max rounds is reported beside it (`ms_per_iteration_whole_run`). G must be a
multiple of k, at least 2k: with every proposal kept (near-uniform random-weight laws keep almost
all), no iteration is then left with a lone last rank, which fused ASSD keeps with no forward and
ASSD without a verify.

Floors, measured in the same run:
  read bandwidth BW: a jitted jnp.sum over a float32 array of `read_bytes` (~1 GB), median of runs;
  matmul rate R[dtype]: a jitted [4096, 768] x [768, 3072] matmul, in float32 and in bfloat16.
The floor of one forward computing S content rows and Q query rows for each of B batch rows, for a
model of L layers, H heads of D, width d, d_inner, vocabulary V, at N positions:
  bytes  = weight bytes + cache bytes, in the model's dtype:
             weight bytes = parameter count x dtype size,
             cache bytes  = 2 (keys, values) x L x B x H x D x N x dtype size
                            + L x H x (2N - 1) x D x dtype size (the cached relative-position keys);
  FLOPs  = 2 x B x [S x L x (4 d H D + 2 d d_inner)       (content rows: q, k, v, o, feed-forward)
                    + Q x L x (2 d H D + 2 d d_inner)     (query rows: q, o, feed-forward)
                    + Q x d x V]                          (LM head, query rows only)
           + 2 x B x (S + Q) x L x H x D x (N + N + 2N - 1)   (scores, values, relative product);
  floor  = bytes / BW + FLOPs_dtype / R[dtype] + FLOPs_float32 / R[float32],
where FLOPs_float32 are the LM head and, where the backend multiplies it in float32 (the CPU:
asarm_jax/backend.py), the relative-position product, and FLOPs_dtype the rest. Rows (S, Q) per
forward: sequential (1, 1); fused ASSD (k + 1, 2k); ASSD draft (1, k) then verify (k, k), and an
ASSD round's floor is the sum of both.

Memory per row: the compiled program's plan (`memory_analysis`: arguments + outputs + temporaries -
aliased bytes) and, where the device reports it (GPU, TPU; not the CPU), the device's peak bytes in
use after the row's runs (`memory_stats()["peak_bytes_in_use"]`, a high-water mark of the process).

Reported per row: NFE, rounds, compile s, run s, ms per iteration (steady and whole run), its
floor, measured / floor, tokens/s, and for fused ASSD and ASSD the iteration's ms / the sequential
forward's ms at the same batch and dtype. `targets` evaluates the issue's goals from these numbers.
Writes benchmarks/results/real_size.json and .md (`--out`); progress goes to stderr.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import backend
from asarm_jax import checkpoint
from asarm_jax import model as model_lib
from asarm_jax import sampling
from asarm_jax.model import ModelConfig, init_params
# The sampling benchmark's problem builder and report helpers.
from benchmarks.sampling import (  # pylint: disable=protected-access
    _figure_rows, _fmt, _git_state, _machine, _target, make_problem)

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
XLNET_BASE = ModelConfig(vocab_size=32000, mask_token_id=6, d_model=768, n_layers=12, n_heads=12,
                         d_head=64, d_inner=3072, ff_activation="gelu", max_len=512)
QUICK_MODEL = ModelConfig(vocab_size=512, mask_token_id=6, d_model=64, n_layers=2, n_heads=2,
                          d_head=32, d_inner=128, max_len=64)
PROMPT_LEN = 32  # ranks; the sampler's first forward computes at least 32 content rows anyway
# (dtype, method): sampled with the cache, draft_len k for the speculative methods.
CONFIGURATIONS = (("float32", "sequential"), ("float32", "assd_fused"), ("float32", "assd"),
                  ("bfloat16", "sequential"), ("bfloat16", "assd_fused"))
FLOAT32 = "float32"
DTYPES = (FLOAT32, "bfloat16")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that fixes one run."""
  name: str
  cfg: ModelConfig
  seq_len: int
  batches: tuple[int, ...]
  generated: int                        # G: tokens generated per row
  draft_len: int                        # k of the speculative methods, and the baseline's tokens
  repeats: int                          # warm runs of each length (medians reported)
  read_bytes: int                       # of the bandwidth probe's float32 array
  matmul_shape: tuple[int, int, int]    # (m, k, n) of the matmul-rate probe
  configurations: tuple[tuple[str, str], ...] = CONFIGURATIONS  # (dtype, method) pairs
  workdir: str | None = None            # a trained run's model instead of `cfg` (random weights)


FULL = Settings("full", XLNET_BASE, seq_len=512, batches=(1, 8, 32), generated=25, draft_len=5,
                repeats=3, read_bytes=1 << 30, matmul_shape=(4096, 768, 3072))
QUICK = Settings("quick", QUICK_MODEL, seq_len=64, batches=(1,), generated=6, draft_len=3,
                 repeats=2, read_bytes=1 << 24, matmul_shape=(512, 64, 256))


def validate(settings: Settings) -> None:
  """Raises ValueError naming the setting that cannot be run."""
  g, k = settings.generated, settings.draft_len
  if not settings.batches or min(settings.batches) < 1:
    raise ValueError(f"--batches must be positive integers; got {settings.batches}")
  if k < 1 or settings.repeats < 1:
    raise ValueError(f"--draft_len and --repeats must be >= 1; got {k} and {settings.repeats}")
  if g < 2 * k or g % k:
    raise ValueError(f"--generated {g} must be a multiple of --draft_len {k}, at least {2 * k} "
                     "(the baseline run generates k tokens; see the module docstring)")
  bad = [pair for pair in settings.configurations
         if pair[0] not in DTYPES or pair[1] not in sampling.METHODS]
  if bad or not settings.configurations:
    raise ValueError(f"configurations must be (dtype, method) pairs with dtype in {DTYPES} and "
                     f"method in {sampling.METHODS}; got {list(settings.configurations)}")
  if PROMPT_LEN + g > settings.seq_len:
    raise ValueError(f"--generated {g} leaves no room for the {PROMPT_LEN}-rank prompt at "
                     f"N = {settings.seq_len}: at most {settings.seq_len - PROMPT_LEN}")


# ----------------------------------------------------------------------------------------------------
# The machine's limits.


def _seconds(fn: Callable, args: tuple, repeats: int) -> list[float]:
  """Wall-clock of `repeats` calls of jitted `fn(*args)` after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def measure_read_bandwidth(num_bytes: int, repeats: int = 5) -> dict[str, Any]:
  """GB/s of a jitted jnp.sum over a float32 array of `num_bytes` (median of `repeats`)."""
  array = jnp.ones((num_bytes // 4,), jnp.float32)
  times = _seconds(jax.jit(jnp.sum), (array,), repeats)
  seconds = statistics.median(times)
  return dict(probe=f"jit(jnp.sum) over float32 [{num_bytes // 4}]", bytes=array.nbytes,
              seconds_all=times, seconds=seconds, gb_per_second=array.nbytes / seconds / 1e9)


def measure_matmul_rate(shape: tuple[int, int, int], dtype: str, repeats: int = 5
                        ) -> dict[str, Any]:
  """GFLOP/s of a jitted [m, k] x [k, n] matmul in `dtype` (median of `repeats`)."""
  m, k, n = shape
  a = jnp.ones((m, k), dtype)  # [m, k]
  b = jnp.ones((k, n), dtype)  # [k, n]
  times = _seconds(jax.jit(jnp.matmul), (a, b), repeats)
  seconds = statistics.median(times)
  flops = 2 * m * k * n
  return dict(probe=f"jit(jnp.matmul) {dtype} [{m}, {k}] x [{k}, {n}]", flops=flops,
              seconds_all=times, seconds=seconds, gflop_per_second=flops / seconds / 1e9)


def iteration_rows(method: str, draft_len: int) -> tuple[tuple[int, int], ...]:
  """(content rows, query rows) per batch row of each forward of one loop iteration."""
  k = draft_len
  return {"sequential": ((1, 1),), "assd_fused": ((k + 1, 2 * k),),
          "assd": ((1, k), (k, k))}[method]


def forward_floor(cfg: ModelConfig, weight_bytes: int, seq_len: int, batch: int, content: int,
                  query: int, floors: dict[str, Any]) -> dict[str, float]:
  """The floor of one forward (the module docstring's formula) from the measured `floors`."""
  size = jnp.dtype(cfg.compute_dtype).itemsize
  layers, heads, d_head, width = cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model
  n = seq_len
  cache_bytes = (2 * layers * batch * heads * d_head * n + layers * heads * (2 * n - 1) * d_head
                 ) * size
  projection = width * heads * d_head  # one of q, k, v, o
  feed_forward = 2 * width * cfg.d_inner
  row_heads = batch * (content + query) * layers * heads * d_head
  flops_dtype = (2 * batch * layers * (content * (4 * projection + feed_forward)
                                       + query * (2 * projection + feed_forward))
                 + 2 * row_heads * 2 * n)  # + scores and values
  relative_product = 2 * row_heads * (2 * n - 1)
  float32_relative = backend.current().float32_relative_product
  flops_float32 = 2 * batch * query * width * cfg.vocab_size
  if float32_relative:
    flops_float32 += relative_product
  else:
    flops_dtype += relative_product
  rates = {dtype: floors["matmul"][dtype]["gflop_per_second"] * 1e9 for dtype in floors["matmul"]}
  memory_s = (weight_bytes + cache_bytes) / (floors["read_bandwidth"]["gb_per_second"] * 1e9)
  compute_s = flops_dtype / rates[cfg.dtype] + flops_float32 / rates[FLOAT32]
  return dict(weight_bytes=weight_bytes, cache_bytes=cache_bytes, flops=flops_dtype + flops_float32,
              flops_float32=flops_float32, ms_memory=memory_s * 1e3, ms_compute=compute_s * 1e3,
              ms=(memory_s + compute_s) * 1e3)


def iteration_floor(cfg: ModelConfig, weight_bytes: int, seq_len: int, batch: int, method: str,
                    draft_len: int, floors: dict[str, Any]) -> dict[str, float]:
  """The floor of one loop iteration: the sum of its forwards' floors."""
  parts = [forward_floor(cfg, weight_bytes, seq_len, batch, content, query, floors)
           for content, query in iteration_rows(method, draft_len)]
  return {key: sum(part[key] for part in parts) for key in parts[0]}


# ----------------------------------------------------------------------------------------------------
# The sampler.


def model_under_test(settings: Settings, seed: int) -> tuple[ModelConfig, Any, str]:
  """(float32 config, params, description): the trained run `settings.workdir`, else `settings.cfg`
  with random weights seeded by `seed`.

  Raises:
    ValueError: the run's model is shorter than `settings.seq_len`.
  """
  if settings.workdir is None:
    return settings.cfg, init_params(settings.cfg, jax.random.key(seed)), (
        f"random weights (init_params, seed {seed})")
  cfg, params, _ = checkpoint.load_for_inference(settings.workdir)
  if cfg.max_len < settings.seq_len:
    raise ValueError(f"the model of {settings.workdir} has max_len {cfg.max_len} < N = "
                     f"{settings.seq_len}")
  return cfg, params, (f"trained run {settings.workdir} "
                       f"(step {checkpoint.latest_step(settings.workdir)})")


def program_memory(compiled) -> dict[str, Any]:
  """The compiled program's memory plan and the device's peak bytes in use (None where the device
  does not report it, as on the CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  memory = dict(planned_bytes=None, temp_bytes=None, argument_bytes=None,
                device_peak_bytes=stats.get("peak_bytes_in_use"))
  analysis = compiled.memory_analysis()
  if analysis is not None:
    memory.update(planned_bytes=analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                  + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes,
                  temp_bytes=analysis.temp_size_in_bytes,
                  argument_bytes=analysis.argument_size_in_bytes)
  return memory


def time_configuration(cfg: ModelConfig, params, settings: Settings, batch: int, method: str,
                       seed: int) -> dict[str, Any]:
  """Compiles and times one (dtype, method, batch); the measured fields of a row."""
  n, k = settings.seq_len, settings.draft_len
  # Zero tokens, the first PROMPT_LEN ranks the prompt, then the hidden positions left to right.
  problem = make_problem(np.zeros((batch, n), np.int32), 1 - PROMPT_LEN / n, batch, seed)
  options = dict(method=method, draft_len=k, use_cache=True)
  sampler = sampling.Sampler.create(cfg, **options)
  key = jax.random.key(seed)

  def posed(count: int) -> sampling.Batch:
    return sampler.batch(problem.tokens, problem.ranks, problem.num_prompt, key,
                         num_valid=problem.num_prompt + count)

  long_batch, short_batch = posed(settings.generated), posed(k)  # the same shapes
  start = time.perf_counter()
  compiled = sampler.compile(params, long_batch)
  compile_s = time.perf_counter() - start

  def call(batch: sampling.Batch) -> tuple[sampling.SampleOutput, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(params, batch))
    return out, time.perf_counter() - start

  out, _ = call(long_batch)  # the warm-up
  baseline, _ = call(short_batch)
  runs, baseline_runs = [], []
  for _ in range(settings.repeats):
    runs.append(call(long_batch)[1])
    baseline_runs.append(call(short_batch)[1])
  run_s, baseline_s = statistics.median(runs), statistics.median(baseline_runs)
  rounds, baseline_rounds = int(np.max(out.rounds)), int(np.max(baseline.rounds))
  if rounds <= baseline_rounds:
    raise ValueError(f"{method}: {settings.generated} tokens took {rounds} iterations, no more "
                     f"than the baseline's {baseline_rounds}; raise --generated")
  nfe = np.asarray(out.nfe)
  return dict(
      options=options, num_prompt=problem.num_prompt, generated_per_row=settings.generated,
      baseline_generated=k, nfe_mean=float(nfe.mean()), nfe_max=int(nfe.max()),
      rounds_max=rounds, baseline_rounds_max=baseline_rounds, compile_seconds=compile_s,
      run_seconds_all=runs, run_seconds=run_s, baseline_run_seconds_all=baseline_runs,
      baseline_run_seconds=baseline_s,
      ms_per_iteration=(run_s - baseline_s) / (rounds - baseline_rounds) * 1e3,
      ms_per_iteration_whole_run=run_s / rounds * 1e3,
      tokens_per_second=batch * settings.generated / run_s, memory=program_memory(compiled))


def finish_rows(rows: list[dict[str, Any]]) -> None:
  """Adds measured / floor and the ratio to the sequential forward (same batch, dtype), in place."""
  sequential = {(r["dtype"], r["batch"]): r for r in rows if r["method"] == "sequential"}
  for row in rows:
    row["vs_floor"] = row["ms_per_iteration"] / row["floor"]["ms"]
    base = sequential.get((row["dtype"], row["batch"]))
    row["vs_sequential_forward"] = (row["ms_per_iteration"] / base["ms_per_iteration"]
                                    if base and row is not base else None)


# ----------------------------------------------------------------------------------------------------
# Targets and reports.

# (name, method, batch, goal): ms per forward / floor.
FLOOR_TARGETS = (("sequential_b1_vs_floor", "sequential", 1, 1.3),
                 ("sequential_b8_vs_floor", "sequential", 8, 1.5),
                 ("sequential_b32_vs_floor", "sequential", 32, 1.5),
                 ("assd_fused_b8_vs_floor", "assd_fused", 8, 1.5),
                 ("assd_fused_b32_vs_floor", "assd_fused", 32, 1.5))
FUSED_ROUND_GOAL = 1.3  # a fused round / a sequential forward at batch 1


def evaluate_targets(rows: list[dict[str, Any]], dtypes: Sequence[str]
                     ) -> dict[str, dict[str, Any]]:
  """The issue's goals per dtype, each a ratio of numbers measured in this run."""
  targets = {}
  for dtype in dtypes:
    for name, method, batch, goal in FLOOR_TARGETS:
      found = [r for r in rows if (r["dtype"], r["method"], r["batch"]) == (dtype, method, batch)]
      targets[f"{name}_{dtype}"] = _target(
          f"{method}, batch {batch}, {dtype}: ms per forward / its floor",
          found[0]["vs_floor"] if found else None, goal, False,
          dict(dtype=dtype, method=method, batch=batch),
          found and {"ms_per_forward": found[0]["ms_per_iteration"],
                     "floor_ms": found[0]["floor"]["ms"]},
          f"no {method} row at batch {batch} in {dtype}")
    fused = [r for r in rows if (r["dtype"], r["method"], r["batch"]) == (dtype, "assd_fused", 1)]
    value = fused[0]["vs_sequential_forward"] if fused else None
    targets[f"fused_round_vs_sequential_forward_b1_{dtype}"] = _target(
        f"fused ASSD, batch 1, {dtype}: ms per round / ms per sequential forward", value,
        FUSED_ROUND_GOAL, False, dict(dtype=dtype, method="assd_fused", batch=1),
        missing="needs fused and sequential rows at batch 1")
  return targets


_COLUMNS = ("dtype", "batch", "method", "NFE", "rounds", "compile s", "run s", "ms/iter",
            "ms/iter whole run", "floor ms (memory + compute)", "× floor", "× seq fwd", "tok/s",
            "planned MB", "device peak MB")


def megabytes(num_bytes: int | None) -> str:
  """`num_bytes` in MB for a table cell ("–" when unknown)."""
  if num_bytes is None:
    return "–"
  return f"{num_bytes / 1e6:,.0f}" if num_bytes >= 1e7 else f"{num_bytes / 1e6:.2f}"


def _table_row(row: dict[str, Any]) -> str:
  floor = row["floor"]
  cells = (row["dtype"], str(row["batch"]),
           row["method"] + (" (round: 2 fwd)" if row["method"] == "assd" else ""),
           _fmt(row["nfe_mean"], ".1f"), str(row["rounds_max"]),
           _fmt(row["compile_seconds"], ".1f"),
           _fmt(row["run_seconds"], ".3f"), _fmt(row["ms_per_iteration"], ".1f"),
           _fmt(row["ms_per_iteration_whole_run"], ".1f"),
           f"{floor['ms']:.1f} ({floor['ms_memory']:.1f} + {floor['ms_compute']:.1f})",
           _fmt(row["vs_floor"]), _fmt(row["vs_sequential_forward"]),
           _fmt(row["tokens_per_second"], ".1f"), megabytes(row["memory"]["planned_bytes"]),
           megabytes(row["memory"]["device_peak_bytes"]))
  return "| " + " | ".join(cells) + " |"


def markdown(results: dict[str, Any]) -> str:
  """The floors, the targets and every row."""
  machine, floors = results["machine"], results["floors"]
  lines = [f"Model: {results['model']['description']}. N = {results['settings']['seq_len']}, "
           f"prompt {PROMPT_LEN}, {results['settings']['generated']} generated per row, "
           f"k = {results['settings']['draft_len']}. Host: {machine['summary']}, load average "
           f"{machine['load_average_start'][0]:.1f} at the start, "
           f"{machine['load_average_end'][0]:.1f} at the end.", "",
           "| floor probe | measured |", "|---|---|",
           f"| {floors['read_bandwidth']['probe']} | "
           f"{floors['read_bandwidth']['gb_per_second']:.1f} GB/s |",
           *(f"| {m['probe']} | {m['gflop_per_second']:.1f} GFLOP/s |"
             for m in floors["matmul"].values()),
           "", "| target | measured | goal | met |", "|---|---|---|---|",
           *_figure_rows(results["targets"]),
           "", "ms/iter: one loop iteration, prefill excluded (one forward for sequential and "
           "assd_fused, one round of two forwards for assd); × seq fwd: ms/iter / the sequential "
           "forward's at the same batch and dtype.", "",
           "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS),
           *(_table_row(r) for r in results["results"])]
  return "\n".join(lines) + "\n"


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def run_benchmark(settings: Settings, *, out: str | os.PathLike | None = None, seed: int = 0,
                  command: str | None = None, log: Callable[[str], None] = _stderr
                  ) -> dict[str, Any]:
  """Measures the floors and every configuration; writes `out` (JSON) and its .md table.

  Args:
    settings: FULL, QUICK, or either with other batches, G, k or repeats.
    out: the JSON path (default benchmarks/results/real_size.json, or real_size_quick.json).
    seed: seeds the random weights, the hidden subsets and the samplers.
    command: how the run was started, for the record.
    log: progress lines (one per configuration).

  Returns:
    The results dict written to `out`.

  Raises:
    ValueError: settings that cannot be run (`validate`).
  """
  validate(settings)
  start = time.perf_counter()
  load_at_start = list(os.getloadavg())
  out = pathlib.Path(out or RESULTS_DIR / f"real_size{'_quick' if settings.name == 'quick' else ''}"
                     ".json")
  floors = dict(read_bandwidth=measure_read_bandwidth(settings.read_bytes),
                matmul={dtype: measure_matmul_rate(settings.matmul_shape, dtype)
                        for dtype in DTYPES})
  log(f"floors: {floors['read_bandwidth']['gb_per_second']:.1f} GB/s read, "
      + ", ".join(f"{dtype} {m['gflop_per_second']:.1f} GFLOP/s"
                  for dtype, m in floors["matmul"].items()))
  base_cfg, base_params, description = model_under_test(settings, seed)
  num_params = int(sum(x.size for x in jax.tree.leaves(base_params)))
  configs = [(dtype, method, batch) for dtype, method in settings.configurations
             for batch in settings.batches]
  variants, rows = {}, []
  for index, (dtype, method, batch) in enumerate(configs):
    if dtype not in variants:
      variants[dtype] = model_lib.cast_for_inference(base_cfg, base_params, dtype)
    cfg, params = variants[dtype]
    weight_bytes = int(sum(x.nbytes for x in jax.tree.leaves(params)))
    row = dict(dtype=dtype, method=method, batch=batch, seq_len=settings.seq_len,
               forwards_per_iteration=len(iteration_rows(method, settings.draft_len)),
               **time_configuration(cfg, params, settings, batch, method, seed),
               floor=iteration_floor(cfg, weight_bytes, settings.seq_len, batch, method,
                                     settings.draft_len, floors))
    rows.append(row)
    log(f"[{index + 1}/{len(configs)} {time.perf_counter() - start:5.0f}s] {dtype} {method} "
        f"batch {batch}: compile {row['compile_seconds']:.1f}s, run {row['run_seconds']:.3f}s, "
        f"{row['ms_per_iteration']:.1f} ms/iteration (floor {row['floor']['ms']:.1f})")
  finish_rows(rows)
  results = dict(
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=command or f"run_benchmark({settings.name!r}, seed={seed})",
      mode=settings.name,
      machine={**_machine(), "load_average_start": load_at_start,
               "load_average_end": list(os.getloadavg())},
      git=_git_state(),
      model=dict(description=f"{description}, {num_params / 1e6:.1f}M parameters",
                 config=base_cfg.to_dict(), num_params=num_params),
      settings={**{k: v for k, v in dataclasses.asdict(settings).items() if k != "cfg"},
                "prompt_len": PROMPT_LEN},
      timing=dict(compile="Sampler.compile: lower + compile, excluded from run times",
                  run=f"median of {settings.repeats} warm runs of G tokens and of k tokens "
                      "(alternating, after one warm-up)",
                  ms_per_iteration="(run s(G) - run s(k)) / (max rounds(G) - max rounds(k))"),
      floors=floors,
      floor_formula=__doc__[__doc__.index("The floor of one forward"):
                            __doc__.index("Reported per row")].strip(),
      results=rows,
      targets=evaluate_targets(rows, list(dict.fromkeys(d for d, _ in settings.configurations))),
      total_seconds=time.perf_counter() - start)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  out.with_suffix(".md").write_text(markdown(results))
  log(f"wrote {out} (+ .md) in {results['total_seconds']:.0f} s")
  return results


def main() -> None:
  """The command line: the flags of `_define_flags` over FULL or QUICK."""
  from absl import flags

  from asarm_jax.cli import common

  values = flags.FLAGS
  settings = QUICK if values.quick else FULL
  overrides = dict(generated=values.generated, draft_len=values.draft_len, repeats=values.repeats)
  settings = dataclasses.replace(
      settings, **{k: v for k, v in overrides.items() if v is not None},
      **({"batches": common.comma_integers(values.batches, "batches")}
         if values.batches is not None else {}))
  print(markdown(run_benchmark(settings, out=values.out, seed=values.seed,
                               command=" ".join(["python -m benchmarks.real_size",
                                                 *sys.argv[1:]]))))


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_bool("quick", False, "Tiny shape (d_model 64, 2 layers, N 64, batch 1, G 6, k 3): "
                    "a smoke run of seconds.")
  flags.DEFINE_string("batches", None, "Comma-separated batch sizes (default 1,8,32; quick 1).")
  flags.DEFINE_integer("generated", None, "Tokens generated per row, G (default 25; quick 6); a "
                       "multiple of --draft_len, at least twice it.")
  flags.DEFINE_integer("draft_len", None, "k of assd and assd_fused (default 5; quick 3).")
  flags.DEFINE_integer("repeats", None, "Warm runs of each length (default 3; quick 2).")
  flags.DEFINE_integer("seed", 0, "Seeds the random weights, hidden subsets and samplers.")
  flags.DEFINE_string("out", None, "JSON output (default benchmarks/results/real_size.json); the "
                      ".md table is written next to it.")


if __name__ == "__main__":
  from asarm_jax.cli import common

  _define_flags()
  common.run(main, module_name=__name__, summary=__doc__)
