"""Sampling benchmark: every exact sampler of `asarm_jax.sampling` vs sequential and vs HF-torch.

python -m benchmarks.sampling --workdir runs/default [--out benchmarks/results/sampling.json]
python -m benchmarks.sampling --random_model      # untrained model of configs/default.py's sizes
python -m benchmarks.sampling --quick             # tiny random model, N=32: a < 60 s smoke run
python -m benchmarks.sampling --quick --workdir DIR  # the quick plan on DIR's model

One run, one machine, one model, the same prompts for every method: chunks of N tokens of held-out
text (the stdlib corpus's validation split, cut with the model's tokenizer), with a random subset of
50% or 90% of the positions hidden and generated in the paper's infill order (prompt first, then the
hidden positions left to right), at temperature 1. Some blocks generate the hidden positions in a
random order instead (prompt first, then the hidden positions shuffled per row): there, consecutive
ranks are rarely neighbours, which is what ASSD's acceptance depends on.

What is measured per configuration (model, N, hidden fraction, batch, method, cache setting): NFE,
rounds and tokens per round (per row, averaged over the batch), the idle fraction (row-iterations
spent on rows already finished: `SampleOutput.idle_fraction`), compile time (separately, by
`sampling.timed_sample`), run time (median of `repeats` runs after one warm-up run; a configuration
whose first run exceeds `long_run_s` is timed by that run alone), tokens/s (all rows), and ratios to
sequential decoding with the same cache setting and batch, and to the HF-torch peer
(`benchmarks/hf_baseline.py`: transformers' XLNetLMHeadModel on the same weights, sequential, one
full forward per token). The issue's targets are evaluated from these numbers in `targets`.

Methods are rows of `METHOD_SPECS` (keyword arguments of `sampling.sample`); a combination the
sampler rejects (a ValueError) is listed under `skipped` with the reason, never approximated. The settings benchmarked are the blocks of `FULL_PLAN` / `QUICK_PLAN`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from asarm_jax import infilling, sampling
from asarm_jax.model import ModelConfig, init_params

SCHEMA_VERSION = 1
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
HF = "hf_torch"
OURS = "asarm_jax"

# ----------------------------------------------------------------------------------------------------
# What is benchmarked. Each method is one line; `options` are keyword arguments of sampling.sample.


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One sampler configuration."""
  name: str                              # row label
  options: tuple[tuple[str, Any], ...]   # keyword arguments of sampling.sample
  description: str
  exact: bool = True                     # draws from the sequential law (lossy options: False)

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(self.options)


def _spec(name: str, description: str, **options) -> MethodSpec:
  return MethodSpec(name, tuple(sorted(options.items())), description)


METHOD_SPECS = (
    _spec("sequential", "one forward per token", method="sequential"),
    _spec("assd_k2", "ASSD, 2 drafts per round", method="assd", draft_len=2),
    _spec("assd_k4", "ASSD, 4 drafts per round", method="assd", draft_len=4),
    _spec("assd_k5", "ASSD, 5 drafts per round (the paper's k)", method="assd", draft_len=5),
    _spec("assd_k8", "ASSD, 8 drafts per round", method="assd", draft_len=8),
    _spec("assd_fused_k2", "fused ASSD (one forward verifies and proposes), 2 proposals",
          method="assd_fused", draft_len=2),
    _spec("assd_fused_k3", "fused ASSD, 3 proposals (the library's default k)",
          method="assd_fused", draft_len=3),
    _spec("assd_fused_k5", "fused ASSD, 5 proposals", method="assd_fused", draft_len=5),
    _spec("assd_adaptive_k8", "ASSD, draft length adapted per row and round in [1, 8]",
          method="assd", draft_len=8, adaptive=True),
    _spec("assd_fused_adaptive_k8", "fused ASSD, draft length adapted in [1, 8]",
          method="assd_fused", draft_len=8, adaptive=True),
)
SPECS_BY_NAME = {spec.name: spec for spec in METHOD_SPECS}
# The spec whose cached / uncached run times define the cache target (the paper's k).
CACHE_TARGET_SPEC = "assd_k5"


@dataclasses.dataclass(frozen=True)
class Block:
  """A product of settings to benchmark."""
  seq_lens: tuple[int, ...]
  hidden_fractions: tuple[float, ...]
  batches: tuple[int, ...]
  methods: tuple[str, ...] | None    # names in METHOD_SPECS; None = all, () = none (HF only)
  use_cache: tuple[bool, ...]
  hf: bool = False                   # also time the HF-torch sequential peer on these settings
  order: str = "left_to_right"       # of the hidden positions: one of masks.ORDERS


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything that fixes one benchmark run besides the model."""
  name: str
  blocks: tuple[Block, ...]
  headline_seq_len: int     # the N at which the targets are evaluated
  repeats: int              # timed runs after the warm-up (median reported)
  long_run_s: float         # a first run longer than this is the only timed run
  hf_warmup_steps: int = 2  # HF forwards before timing (HF has nothing to compile)
  # The N of the supplementary batch-scaling figure (the model's training length); None: none.
  supplementary_seq_len: int | None = None


# The full plan (its size and measured time: benchmarks/README.md; compilation dominates). Cached
# compilations depend on the prompt length (`prefill_rows`), so every (N, hidden fraction, batch,
# method, cache) costs one. The uncached sampler and the HF peer recompute the whole sequence every
# forward: they run where they are needed.
_MAIN = ("sequential", "assd_k5", "assd_fused_k3")
FULL_PLAN = Plan(
    name="full",
    blocks=(
        # The headline setting (N = 512, 90% hidden, batch 1): every method cached, the main ones
        # uncached, the HF-torch peer. Then 50% hidden.
        Block((512,), (0.9,), (1,), None, (True,), hf=True),
        Block((512,), (0.9,), (1,), (*_MAIN, "assd_adaptive_k8"), (False,)),
        Block((512,), (0.5,), (1,), None, (True,)),
        # N = 256.
        Block((256,), (0.9, 0.5), (1,), (*_MAIN, "assd_fused_adaptive_k8"), (True,), hf=True),
        Block((256,), (0.9,), (1,), ("sequential", "assd_k5"), (False,)),
        # Batching, cached; N = 128 is the default model's training length.
        Block((512,), (0.9,), (8, 32), _MAIN, (True,)),
        Block((256,), (0.9,), (8, 32), ("sequential", "assd_fused_k3"), (True,)),
        Block((128,), (0.9,), (1, 8, 32), ("sequential", "assd_fused_k3"), (True,)),
        # The hidden positions in a random order (supplementary NFE figure).
        Block((512,), (0.9,), (1, 8), ("sequential", "assd_k5", "assd_k8", "assd_fused_k3"),
              (True,), order="random"),
    ),
    headline_seq_len=512, repeats=3, long_run_s=2.0, supplementary_seq_len=128)
QUICK_PLAN = Plan(
    name="quick",
    blocks=(
        Block((32,), (0.5, 0.9), (1,), ("sequential", "assd_k5"), (False,), hf=True),
        Block((32,), (0.9,), (1,), ("sequential", "assd_k5", "assd_fused_k5"), (True,)),
        Block((32,), (0.9,), (2,), ("sequential", "assd_fused_k5"), (True,)),
        Block((32,), (0.9,), (1,), ("sequential", "assd_k5"), (True,), order="random"),
    ),
    headline_seq_len=32, repeats=2, long_run_s=1.0, hf_warmup_steps=1)
# The quick plan's model: a tiny random AS-ARM.
QUICK_MODEL = dict(d_model=64, n_layers=2, n_heads=2, d_head=32, d_inner=128, max_len=64)
QUICK_VOCAB = 512


# ----------------------------------------------------------------------------------------------------
# Models and prompts.


@dataclasses.dataclass
class Model:
  """A model under test and (lazily) its Hugging Face export."""
  label: str
  cfg: ModelConfig
  params: Any
  description: str
  _hf: Any = None

  def hf(self):
    if self._hf is None:
      from asarm_jax.convert_hf import export_hf_xlnet  # torch + transformers: only when needed
      with tempfile.TemporaryDirectory() as directory:
        self._hf = export_hf_xlnet(self.cfg, self.params, directory)
    return self._hf


def _train_split_tokenizer(vocab_size: int, max_chars: int):
  from asarm_jax.data import load_texts, train_tokenizer
  return train_tokenizer(load_texts("stdlib", "train"), vocab_size=vocab_size,
                         max_chars=max_chars)


def _random_params(cfg: ModelConfig, seed: int):
  return init_params(cfg, jax.random.key(seed))


def load_model(*, workdir: str | None, random_model: bool, seed: int) -> tuple[Model, Any]:
  """The model under test and its tokenizer: `workdir`'s (a run or an HF XLNet directory), else
  with `random_model` an untrained one of configs/default.py's sizes, else the quick plan's tiny
  random model."""
  if workdir is None and random_model:
    from configs import default as default_config
    config = default_config.get_config()
    tokenizer = _train_split_tokenizer(config.data.vocab_size, 2_000_000)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id,
                      **config.model.to_dict())
    return Model("random_default_size", cfg, _random_params(cfg, seed),
                 "UNTRAINED model with configs/default.py's sizes (init_params): timings are "
                 "representative, NFE and acceptance rates are not"), tokenizer
  if workdir is None:
    tokenizer = _train_split_tokenizer(QUICK_VOCAB, 300_000)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id,
                      **QUICK_MODEL)
    return Model("tiny_random", cfg, _random_params(cfg, seed),
                 f"untrained tiny model {QUICK_MODEL} (quick mode; numbers are a smoke test)"
                 ), tokenizer
  from asarm_jax import checkpoint, loading  # orbax: slow to import, only needed here
  loaded = loading.load(workdir)
  description = (f"trained checkpoint {workdir} (step {checkpoint.latest_step(workdir)})"
                 if loaded.kind == loading.RUN else f"Hugging Face XLNet directory {workdir}")
  return Model("trained", loaded.config, loaded.params, description), loaded.tokenizer


def same_size_random(model: Model, max_len: int, seed: int) -> Model:
  """For N beyond the model's max_len: an untrained model of the same size that accepts N."""
  cfg = dataclasses.replace(model.cfg, max_len=max_len)
  return Model(f"random_same_size_len{max_len}", cfg, _random_params(cfg, seed),
               f"UNTRAINED model of the same size as {model.label!r} with max_len {max_len} "
               f"(the model under test has max_len {model.cfg.max_len})")


def text_chunks(tokenizer, seq_len: int, count: int) -> np.ndarray:
  """`count` consecutive chunks int32 [count, seq_len] of validation-split text (eos-separated)."""
  from asarm_jax.data import load_texts
  needed, ids = seq_len * count, []
  for text in load_texts("stdlib", "validation"):
    ids.extend(tokenizer.encode(text))
    ids.append(tokenizer.eos_id)
    if len(ids) >= needed:
      return np.asarray(ids[:needed], np.int32).reshape(count, seq_len)
  raise ValueError(f"the validation split holds {len(ids)} tokens, fewer than {needed}")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One batch of prompts: the first `batch` chunks, each with its own hidden subset."""
  tokens: np.ndarray   # int32 [B, N]
  ranks: np.ndarray    # int32 [B, N]: the infill order, or prompt first and the rest shuffled
  num_prompt: int      # the same for every row: N - int(N * hidden_fraction)


def make_problem(chunks: np.ndarray, hidden_fraction: float, batch: int, seed: int,
                 order: str = "left_to_right") -> Problem:
  """Row b hides a random subset (seeded by (seed, N, fraction, b)) of chunk b, posed by the
  library's infill pipeline (`infilling.pose_batch`): the hidden positions are generated left to
  right (`order="left_to_right"`) or in a random order seeded by `seed` (`order="random"`); the hidden
  subsets are the same for both orders.
  """
  length = chunks.shape[1]
  num_hidden = int(length * hidden_fraction)
  examples = []
  for row in range(batch):
    rng = np.random.default_rng((seed, length, round(hidden_fraction * 1000), row))
    hidden = np.zeros(length, bool)
    hidden[rng.choice(length, num_hidden, replace=False)] = True
    examples.append(infilling.Example(tokens=chunks[row], hidden=hidden))
  tokens, ranks, _, _ = infilling.pose_batch(examples, length, order=order, order_seed=seed)
  return Problem(tokens, ranks, length - num_hidden)


# ----------------------------------------------------------------------------------------------------
# Timing.


def _median_runs(run: Callable[[], float], first: float, plan: Plan) -> tuple[list[float], bool]:
  """Run times: `plan.repeats` after `first` (the warm-up), or [first] if it was long."""
  if first > plan.long_run_s:
    return [first], False
  return [run() for _ in range(plan.repeats)], True


def time_ours(model: Model, problem: Problem, spec: MethodSpec, use_cache: bool, plan: Plan,
              sampling_options: dict[str, Any], seed: int) -> dict[str, Any]:
  """Times `sampling.sample`; raises ValueError if the sampler rejects the configuration."""
  kwargs = {**spec.kwargs, "use_cache": use_cache, **sampling_options}
  key = jax.random.key(seed)

  def call():
    return sampling.timed_sample(model.params, model.cfg, problem.tokens, problem.ranks,
                                 problem.num_prompt, key, **kwargs)

  out, compile_s, first = call()
  runs, warmed = _median_runs(lambda: call()[2], first, plan)
  nfe, rounds = np.asarray(out.nfe), np.asarray(out.rounds)
  return dict(implementation=OURS, method=spec.name, options=spec.kwargs, exact=spec.exact,
              use_cache=bool(use_cache), nfe_mean=float(nfe.mean()), nfe_max=int(nfe.max()),
              rounds_mean=float(rounds.mean()), rounds_max=int(rounds.max()),
              idle_fraction=out.idle_fraction,
              accepted_mean=float(np.asarray(out.accepted).mean()),
              drafted_mean=float(np.asarray(out.drafted).mean()),  # draft slots used
              compile_seconds=compile_s, run_seconds_all=runs, warmup=warmed)


def time_hf(model: Model, problem: Problem, plan: Plan, sampling_options: dict[str, Any],
            seed: int) -> dict[str, Any]:
  """Times the HF-torch sequential peer (eager: nothing to compile)."""
  from benchmarks import hf_baseline

  hf_model = model.hf()

  def call(num_steps=None):
    return hf_baseline.hf_sequential(hf_model, problem.tokens, problem.ranks, problem.num_prompt,
                                     mask_token_id=model.cfg.mask_token_id, seed=seed,
                                     num_steps=num_steps, **sampling_options)

  call(plan.hf_warmup_steps)
  out = call()
  runs = [out.seconds] if out.seconds > plan.long_run_s else [
      out.seconds, *(call().seconds for _ in range(plan.repeats - 1))]
  generated = problem.tokens.shape[1] - problem.num_prompt
  return dict(implementation=HF, method="sequential", options={"method": "sequential"},
              exact=True, use_cache=False, nfe_mean=float(out.nfe), nfe_max=out.nfe,
              rounds_mean=float(generated), rounds_max=generated, idle_fraction=0.0,
              accepted_mean=0.0,
              drafted_mean=0.0, compile_seconds=0.0, run_seconds_all=runs, warmup=True)


def hf_thread_calibration(model: Model, problem: Problem) -> dict[str, Any]:
  """Picks torch's thread count: every core, or 1 if one forward is faster with 1 (a loaded host).

  Returns {'threads': chosen, 'seconds_per_forward': {threads: seconds}}.
  """
  import torch

  from benchmarks import hf_baseline

  cores = os.cpu_count() or 1
  timings = {}
  for threads in sorted({cores, 1}, reverse=True):
    hf_baseline.set_threads(threads)
    hf_baseline.hf_sequential(model.hf(), problem.tokens, problem.ranks, problem.num_prompt,
                              mask_token_id=model.cfg.mask_token_id, num_steps=1)
    out = hf_baseline.hf_sequential(model.hf(), problem.tokens, problem.ranks,
                                    problem.num_prompt, mask_token_id=model.cfg.mask_token_id,
                                    num_steps=3)
    timings[threads] = out.seconds / 3
  chosen = min(timings, key=lambda t: (timings[t], -t))
  hf_baseline.set_threads(chosen)
  return dict(threads=chosen, cores=cores, torch=torch.__version__,
              seconds_per_forward={str(t): s for t, s in timings.items()})


# ----------------------------------------------------------------------------------------------------
# Derived numbers.


def _setting(row: dict[str, Any]) -> tuple:
  return (row["model"], row["seq_len"], row["hidden_fraction"], row["batch"], row["order"])


def finish_rows(rows: list[dict[str, Any]]) -> None:
  """Adds medians, per-token figures and the ratios to sequential and to HF, in place."""
  for row in rows:
    row["run_seconds"] = statistics.median(row["run_seconds_all"])
    row["tokens_generated"] = row["batch"] * row["generated_per_row"]
    row["tokens_per_second"] = row["tokens_generated"] / row["run_seconds"]
    row["tokens_per_round"] = row["generated_per_row"] / row["rounds_mean"]
    row["nfe_per_token"] = row["nfe_mean"] / row["generated_per_row"]
    # One loop iteration: a forward (sequential, fused ASSD, HF), a round of two for ASSD.
    row["ms_per_iteration"] = row["run_seconds"] / row["rounds_max"] * 1e3
  sequential = {(*_setting(r), r["use_cache"]): r for r in rows
                if r["implementation"] == OURS and r["method"] == "sequential"}
  hf = {_setting(r): r for r in rows if r["implementation"] == HF}
  for row in rows:
    base = sequential.get((*_setting(row), row["use_cache"]))
    ok = row["implementation"] == OURS and base is not None
    row["speedup_vs_sequential"] = base["run_seconds"] / row["run_seconds"] if ok else None
    row["nfe_ratio_vs_sequential"] = row["nfe_mean"] / base["nfe_mean"] if ok else None
    peer = hf.get(_setting(row))
    row["speedup_vs_hf"] = peer["run_seconds"] / row["run_seconds"] if peer else None


def _find(rows, **where) -> list[dict[str, Any]]:
  return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _target(description: str, value: float | None, target: float, higher_is_better: bool,
            where: dict[str, Any], detail: dict[str, Any] | None = None,
            missing: str = "") -> dict[str, Any]:
  met = value is not None and (value >= target if higher_is_better else value <= target)
  result = dict(description=description, measured=value,
                target=f"{'>=' if higher_is_better else '<='} {target:g}", target_value=target,
                met=bool(met), where=where)
  if detail:
    result["detail"] = detail
  if value is None:
    result["note"] = f"not measured: {missing}"
  return result


def _fewest_nfe(rows, where: dict[str, Any]) -> dict[str, Any]:
  """NFE of the exact method with the fewest NFE / sequential NFE at the setting `where`."""
  ours = _find(rows, implementation=OURS, exact=True, **where)
  fewest = min((r for r in ours if r["nfe_ratio_vs_sequential"] is not None),
               key=lambda r: r["nfe_ratio_vs_sequential"], default=None)
  return _target(
      "NFE of the exact method with the fewest NFE / NFE of sequential decoding"
      + ("" if where["order"] == "left_to_right" else " (hidden positions in a random order)"),
      fewest and fewest["nfe_ratio_vs_sequential"], 0.5, False, where,
      fewest and {"method": fewest["method"], "use_cache": fewest["use_cache"],
                  "nfe": fewest["nfe_mean"]},
      "needs sequential and another exact method at this setting")


def _batch_scaling(rows, where: dict[str, Any], large: int) -> dict[str, Any]:
  """tokens/s at batch `large` / at batch 1, same method and cache setting, for the method that is
  fastest at batch `large`; `where` fixes the other settings."""
  pairs = []
  for row in _find(rows, implementation=OURS, exact=True, batch=large, **where):
    single = _find(rows, implementation=OURS, exact=True, batch=1, method=row["method"],
                   use_cache=row["use_cache"], **where)
    if single:
      pairs.append((row["tokens_per_second"] / single[0]["tokens_per_second"], row))
  value, row = max(pairs, key=lambda p: p[1]["tokens_per_second"], default=(None, None))
  return _target(
      f"tokens/s at batch {large} / tokens/s at batch 1 (same method and cache setting; the method "
      f"fastest at batch {large})", value, 10, True, {**where, "batch": [1, large]},
      row and {"method": row["method"], "use_cache": row["use_cache"],
               "per_method": {f"{r['method']}{'' if r['use_cache'] else ' (no cache)'}": v
                              for v, r in pairs}},
      f"needs batch 1 and batch {large} rows of the same method")


def evaluate_targets(rows: list[dict[str, Any]], plan: Plan, model_label: str
                     ) -> dict[str, dict[str, Any]]:
  """The issue's four targets, each a ratio of numbers measured in this run, at the paper's
  protocol (N = headline, 90% hidden, infill order)."""
  head = dict(model=model_label, seq_len=plan.headline_seq_len, hidden_fraction=0.9, batch=1,
              order="left_to_right")
  ours = _find(rows, implementation=OURS, exact=True, **head)
  targets = {}

  # 1. Cache: uncached / cached run time of the same ASSD spec.
  cached = {r["method"]: r for r in ours if r["use_cache"] and r["method"].startswith("assd")}
  uncached = {r["method"]: r for r in ours
              if not r["use_cache"] and r["method"].startswith("assd")}
  per_spec = {name: uncached[name]["run_seconds"] / cached[name]["run_seconds"]
              for name in sorted(set(cached) & set(uncached))}
  targets["cache_speedup_assd"] = _target(
      f"{CACHE_TARGET_SPEC}: wall-clock without cache / with cache",
      per_spec.get(CACHE_TARGET_SPEC), 10, True, {**head, "method": CACHE_TARGET_SPEC},
      {"per_assd_spec": per_spec}, "needs cached and uncached runs of that spec")

  # 2. Best exact method (fastest row of ours) vs HF-torch sequential on the same prompts.
  peer = _find(rows, implementation=HF, **head)
  best = min(ours, key=lambda r: r["run_seconds"], default=None)
  value = (peer[0]["run_seconds"] / best["run_seconds"]) if peer and best else None
  targets["best_exact_vs_hf"] = _target(
      "HF-torch sequential wall-clock / wall-clock of our fastest exact method", value, 10, True,
      head, best and {"method": best["method"], "use_cache": best["use_cache"],
                      "tokens_per_second": best["tokens_per_second"],
                      "hf_tokens_per_second": peer[0]["tokens_per_second"] if peer else None},
      "needs an HF row and one of ours at this setting")

  # 3. NFE of the best exact method (fewest NFE) / sequential NFE, at 90% hidden.
  targets["nfe_best_vs_sequential_90"] = _fewest_nfe(rows, head)

  # 4. Batching at the largest batch of the plan.
  large = max(b for block in plan.blocks for b in block.batches)
  scaling = {k: v for k, v in head.items() if k != "batch"}
  targets[f"batch{large}_vs_batch1_tokens_per_s"] = _batch_scaling(rows, scaling, large)

  # 5. Speculation in wall-clock: the fastest exact speculative method / cached sequential.
  for fraction, batch, goal in ((0.9, 1, 1.5), (0.5, 1, 1.8), (0.9, large, 1.3)):
    where = {**head, "hidden_fraction": fraction, "batch": batch}
    targets[f"speculative_vs_sequential_{round(fraction * 100)}_batch{batch}"] = (
        _speculative_speedup(rows, where, goal))
  return targets


def _speculative_speedup(rows, where: dict[str, Any], goal: float) -> dict[str, Any]:
  """tokens/s of the fastest exact speculative method, cached, / cached sequential, at `where`."""
  cached = _find(rows, implementation=OURS, exact=True, use_cache=True, **where)
  sequential = [r for r in cached if r["method"] == "sequential"]
  best = max((r for r in cached if r["method"] != "sequential"),
             key=lambda r: r["tokens_per_second"], default=None)
  value = (best["tokens_per_second"] / sequential[0]["tokens_per_second"]
           if best and sequential else None)
  return _target(
      "tokens/s of the fastest exact speculative method / tokens/s of sequential decoding (both "
      "cached)", value, goal, True, where,
      best and {"method": best["method"], "ms_per_iteration": best["ms_per_iteration"]},
      "needs cached sequential and speculative rows at this setting")


def supplementary_figures(rows: list[dict[str, Any]], plan: Plan, model_label: str
                          ) -> dict[str, dict[str, Any]]:
  """Targets 3 and 4 at other settings: the NFE ratio with the hidden positions in a random order,
  and the batch scaling at `plan.supplementary_seq_len`. Not the issue's protocol: reported beside
  the targets, never instead of them."""
  figures = {}
  random_order = dict(model=model_label, seq_len=plan.headline_seq_len, hidden_fraction=0.9,
                      batch=1, order="random")
  if _find(rows, **random_order):
    figures["nfe_best_vs_sequential_90_random_order"] = _fewest_nfe(rows, random_order)
  n = plan.supplementary_seq_len
  if n is not None:
    large = max(b for block in plan.blocks for b in block.batches if n in block.seq_lens)
    figures[f"batch{large}_vs_batch1_tokens_per_s_N{n}"] = _batch_scaling(
        rows, dict(model=model_label, seq_len=n, hidden_fraction=0.9, order="left_to_right"), large)
  return figures


# ----------------------------------------------------------------------------------------------------
# Reports.


def _fmt(value, spec: str = ".2f", none: str = "–") -> str:
  return none if value is None else format(value, spec)


def _label(row: dict[str, Any]) -> str:
  if row["implementation"] == HF:
    return "HF-torch sequential"
  return row["method"]


def _cache(row: dict[str, Any]) -> str:
  if row["implementation"] == HF:
    return "n/a"
  return "yes" if row["use_cache"] else "no"


_COLUMNS = ("N", "hidden", "order", "batch", "method", "cache", "NFE", "rounds", "idle",
            "tok/round", "compile s", "run s", "ms/forward", "tok/s", "× seq", "NFE/seq", "× HF")
_MS_NOTE = ("idle: the share of row-iterations spent on rows already finished (a batch loops "
            "until its slowest row is done). ms/forward: run s / max rounds, the prefill "
            "included; for assd (†) a round of two forwards (draft + verify).")


def _two_forward_rounds(row: dict[str, Any]) -> bool:
  """Whether a loop iteration of `row` is an ASSD round (draft + verify forwards)."""
  return row["implementation"] == OURS and row["options"].get("method") == "assd"


def _table_row(row: dict[str, Any]) -> str:
  cells = (str(row["seq_len"]), f"{row['hidden_fraction']:.0%}", row["order"], str(row["batch"]),
           _label(row), _cache(row), _fmt(row["nfe_mean"], ".1f"), _fmt(row["rounds_mean"], ".1f"),
           _fmt(row["idle_fraction"], ".0%"), _fmt(row["tokens_per_round"]),
           _fmt(row["compile_seconds"], ".1f"), _fmt(row["run_seconds"], ".3f"),
           _fmt(row["ms_per_iteration"], ".1f") + (" †" if _two_forward_rounds(row) else ""),
           _fmt(row["tokens_per_second"], ".1f"),
           _fmt(row["speedup_vs_sequential"]), _fmt(row["nfe_ratio_vs_sequential"]),
           _fmt(row["speedup_vs_hf"], ".1f"))
  return "| " + " | ".join(cells) + " |"


def _sort_key(row):
  return (row["seq_len"], row["hidden_fraction"], row["order"], row["batch"],
          row["implementation"] == OURS, not row["use_cache"], _label(row))


def _figure_rows(figures: dict[str, dict[str, Any]]) -> list[str]:
  """Table rows of targets or supplementary figures: name and description, measured, goal, met."""
  return [f"| {name}: {figure['description']} | {_fmt(figure['measured'])} | "
          f"{figure['target']} | {'yes' if figure['met'] else 'no'} |"
          for name, figure in figures.items()]


def markdown(results: dict[str, Any], *, full: bool) -> str:
  """The targets and the headline table (N = headline, 90% hidden, batch 1); with `full`, every
  configuration as well."""
  rows = results["results"]
  head = results["plan"]["headline_seq_len"]
  machine = results["machine"]
  load = (f"load average {machine['load_average_start'][0]:.1f} at the start, "
          f"{machine['load_average_end'][0]:.1f} at the end")
  lines = [f"Model: {results['model']['description']}. Host: {machine['summary']}, {load}.",
           "", "| target | measured | goal | met |", "|---|---|---|---|"]
  lines += _figure_rows(results["targets"])
  if results.get("supplementary"):
    lines += ["", "The same ratios at other settings (not the targets' protocol):", "",
              "| figure | measured | goal | met |", "|---|---|---|---|",
              *_figure_rows(results["supplementary"])]
  header = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
  headline = [r for r in rows if r["seq_len"] == head and r["hidden_fraction"] == 0.9
              and r["batch"] == 1 and r["order"] == "left_to_right"
              and r["model"] == results["model"]["label"]]
  lines += ["", f"N = {head}, 90% hidden, left-to-right order, batch 1. {_MS_NOTE}", "", *header,
            *(_table_row(r) for r in sorted(headline, key=_sort_key))]
  if full:
    lines += ["", "All configurations:", "", *header,
              *(_table_row(r) for r in sorted(rows, key=_sort_key))]
  if results["skipped"]:
    lines += ["", "Skipped: " + "; ".join(
        f"{s['method']} (cache {'yes' if s['use_cache'] else 'no'}): {s['reason']}"
        for s in _unique_skips(results["skipped"]))]
  return "\n".join(lines) + "\n"


def _unique_skips(skipped: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  seen, unique = set(), []
  for s in skipped:
    key = (s["method"], s["use_cache"], s["reason"])
    if key not in seen:
      seen.add(key)
      unique.append(s)
  return unique


def _git_state() -> dict[str, Any]:
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "asarm_jax", "benchmarks/*.py"],
                           cwd=root, capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None}
  return {"commit": commit, "uncommitted_changes": [line[3:] for line in dirty.splitlines()]}


def _machine() -> dict[str, Any]:
  devices = jax.devices()
  cores = os.cpu_count()
  return dict(
      summary=f"{platform.machine()} {cores}-core {devices[0].platform.upper()} "
              f"({platform.processor() or platform.system()}), jax {jax.__version__}",
      platform=platform.platform(), python=platform.python_version(), cpu_count=cores,
      jax=jax.__version__, backend=jax.default_backend(),
      devices=[str(d) for d in devices])


# ----------------------------------------------------------------------------------------------------
# The run.


def _configs(plan: Plan) -> list[tuple[int, float, int, MethodSpec | None, bool, str]]:
  """Unique (N, hidden, batch, spec, use_cache, order) in plan order; spec None = the HF peer."""
  seen, configs = set(), []
  for block in plan.blocks:
    names = tuple(SPECS_BY_NAME) if block.methods is None else block.methods
    for n in block.seq_lens:
      for fraction in block.hidden_fractions:
        for batch in block.batches:
          items = [(SPECS_BY_NAME[name], cache) for name in names for cache in block.use_cache]
          if block.hf:
            items.insert(0, (None, False))
          for spec, cache in items:
            key = (n, fraction, batch, spec and spec.name, cache, block.order)
            if key not in seen:
              seen.add(key)
              configs.append((n, fraction, batch, spec, cache, block.order))
  return configs


def run_benchmark(*, workdir: str | None = None, random_model: bool = False, quick: bool = False,
                  out: str | os.PathLike | None = None, seed: int = 0,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  repeats: int | None = None, hf: bool = True, plot: bool = True,
                  command: str | None = None, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
  """Runs the benchmark; writes JSON (`out`), Markdown (.md) and a plot (.png) next to it.

  Args:
    workdir: a training run directory or a Hugging Face XLNet directory (`asarm_jax.load`).
    random_model: an untrained model with configs/default.py's sizes instead of `workdir`.
    quick: the quick plan (N=32, few configurations), of the tiny random model unless
      `workdir` or `random_model` names a model.
    out: the JSON path (default benchmarks/results/sampling.json, or sampling_quick.json).
    seed: seeds the hidden subsets, the random models and the samplers.
    temperature, top_k, top_p: the sampling settings of every method (the HF peer's too).
    repeats: timed runs per configuration (default: the plan's).
    hf: time the HF-torch peer (needs torch and transformers).
    plot: write the PNG.
    command: how the run was started, for the record (default: this call).
    log: progress lines.

  Returns:
    The results dict written to `out`.

  Raises:
    ValueError: no model named, or both.
  """
  if (random_model and workdir is not None) or not (quick or random_model or workdir):
    raise ValueError("name exactly one model: --workdir DIR or --random_model (or use --quick: "
                     "a tiny random model)")
  start = time.perf_counter()
  load_at_start = list(os.getloadavg())
  plan = QUICK_PLAN if quick else FULL_PLAN
  if repeats is not None:
    plan = dataclasses.replace(plan, repeats=repeats)
  out = pathlib.Path(out or RESULTS_DIR / f"sampling{'_quick' if quick else ''}.json")
  sampling_options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  model, tokenizer = load_model(workdir=workdir, random_model=random_model, seed=seed)
  log(f"model: {model.description}; {model.cfg}")
  models = {}  # N -> the model that runs it

  def model_for(n):
    if n not in models:
      models[n] = model if n <= model.cfg.max_len else same_size_random(model, n, seed)
    return models[n]

  configs = _configs(plan)
  max_batch = {n: max(c[2] for c in configs if c[0] == n) for n in {c[0] for c in configs}}
  chunks = {n: text_chunks(tokenizer, n, count) for n, count in max_batch.items()}
  rows, skipped, calibration = [], [], None
  for index, (n, fraction, batch, spec, use_cache, order) in enumerate(configs):
    name = spec.name if spec else HF
    if spec is None and not hf:
      continue
    setting = dict(model=model_for(n).label, seq_len=n, hidden_fraction=fraction, batch=batch,
                   order=order)
    problem = make_problem(chunks[n], fraction, batch, seed, order)
    try:
      if spec is None:
        if calibration is None:
          calibration = hf_thread_calibration(model_for(n), problem)
          log(f"torch threads: {calibration}")
        measured = time_hf(model_for(n), problem, plan, sampling_options, seed)
      else:
        measured = time_ours(model_for(n), problem, spec, use_cache, plan, sampling_options, seed)
    except ValueError as error:  # the sampler rejects this combination: record why, run the rest
      skipped.append(dict(method=name, use_cache=use_cache, reason=f"ValueError: {error}",
                          **setting))
      continue
    row = dict(**setting, num_prompt=problem.num_prompt, generated_per_row=n - problem.num_prompt,
               **measured)
    rows.append(row)
    log(f"[{index + 1}/{len(configs)} {time.perf_counter() - start:6.0f}s] N={n} "
        f"hidden={fraction:.0%} batch={batch} order={order} {name} cache={use_cache}: "
        f"nfe {row['nfe_mean']:.1f}, "
        f"compile {row['compile_seconds']:.1f}s, "
        f"run {statistics.median(row['run_seconds_all']):.3f}s")
  finish_rows(rows)
  results = dict(
      schema_version=SCHEMA_VERSION,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=command or (f"run_benchmark(workdir={workdir!r}, random_model={random_model}, "
                          f"quick={quick}, seed={seed}, repeats={repeats})"),
      mode=plan.name,
      machine={**_machine(), "load_average_start": load_at_start,
               "load_average_end": list(os.getloadavg())},
      git=_git_state(),
      model=dict(label=model.label, description=model.description, config=model.cfg.to_dict(),
                 num_params=int(sum(x.size for x in jax.tree.leaves(model.params))),
                 others={m.label: m.description for m in models.values() if m is not model}),
      data=dict(source="stdlib corpus, validation split (held out from training)",
                prompts="row b of every batch is chunk b of consecutive N-token chunks of the "
                        "eos-joined validation documents; it hides a random subset of "
                        "int(N * hidden_fraction) positions (seeded per row), generated in the "
                        "row's order: 'left_to_right' (prompt, then hidden positions left to right) or "
                        "'random' (prompt, then the hidden positions shuffled per row)"),
      sampling=dict(**sampling_options, seed=seed),
      plan=dict(**{k: v for k, v in dataclasses.asdict(plan).items() if k != "blocks"},
                blocks=[dataclasses.asdict(b) for b in plan.blocks]),
      timing=dict(compile="sampling.timed_sample: lower + compile, excluded from run times",
                  run=f"median of {plan.repeats} runs after one warm-up run; a configuration whose "
                      f"first run takes more than {plan.long_run_s:g} s is timed by that run "
                      "alone (warmup: false)",
                  hf="eager torch, torch.no_grad, eval mode; warm-up of "
                     f"{plan.hf_warmup_steps} forwards, then the same rule",
                  hf_threads=calibration),
      methods={spec.name: dict(options=spec.kwargs, description=spec.description,
                               exact=spec.exact) for spec in METHOD_SPECS},
      sampler=dict(methods=list(sampling.METHODS)),
      results=sorted(rows, key=_sort_key),
      skipped=skipped,
      targets=evaluate_targets(rows, plan, model.label),
      supplementary=supplementary_figures(rows, plan, model.label),
      total_seconds=time.perf_counter() - start,
  )
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  out.with_suffix(".md").write_text(markdown(results, full=True))
  if plot:
    from benchmarks import plot as plot_lib
    plot_lib.plot(results, out.with_suffix(".png"))
  log(markdown(results, full=False))
  log(f"wrote {out} (+ .md{', .png' if plot else ''}) in {results['total_seconds']:.0f} s")
  return results


def main() -> None:
  """The command line (the flags of `_define_flags`)."""
  from absl import flags

  values = flags.FLAGS
  run_benchmark(workdir=values.workdir, random_model=values.random_model, quick=values.quick,
                out=values.out, seed=values.seed, temperature=values.temperature,
                top_k=values.top_k, top_p=values.top_p, repeats=values.repeats,
                hf=values.hf, plot=values.plot,
                command=" ".join(["python -m benchmarks.sampling", *sys.argv[1:]]))


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("workdir", None, "Training run directory or Hugging Face XLNet directory of "
                      "the model under test.")
  flags.DEFINE_bool("random_model", False,
                    "Use an untrained model with configs/default.py's sizes instead.")
  flags.DEFINE_bool("quick", False, "The quick plan: N=32, few configurations (< 60 s), of a "
                    "tiny random model unless --workdir or --random_model names one.")
  flags.DEFINE_string("out", None, "JSON output (default benchmarks/results/sampling.json); the "
                      ".md table and .png plot are written next to it.")
  flags.DEFINE_integer("seed", 0, "Seeds hidden subsets, random models and samplers.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature of every method.")
  flags.DEFINE_integer("top_k", 0, "Top-k of every method (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Top-p of every method (1 = off).")
  flags.DEFINE_integer("repeats", None, "Timed runs per configuration (default: the plan's).")
  flags.DEFINE_bool("hf", True, "Time the HF-torch sequential peer.")
  flags.DEFINE_bool("plot", True, "Write the PNG plot.")


if __name__ == "__main__":
  from asarm_jax.cli import common

  _define_flags()
  common.run(main, module_name=__name__, summary=__doc__)
