"""Order benchmark: what each decoding order costs in quality and gains in speed, per training order.

python -m benchmarks.orders --run left_to_right=runs/default --run random=runs/order_random \
    --run mixture=runs/order_mixture --draft_len 3,5,8
python -m benchmarks.orders --quick     # one tiny random model, N=32: a smoke run
python -m benchmarks.orders --quick --run left_to_right=runs/default   # N=32 on those runs

For every trained run (labelled by the order it was trained with) and every decoding order of
`masks.ORDERS`:
1. quality: the held-out NLL of the hidden tokens under that order (nats per hidden token, the
   exact negative log-likelihood as the product of the model's conditionals in that order) at 50%
   and 90% hidden, on the run's own evaluation set (`heldout_loss.masked_loss`, the same hidden
   sets for every order);
2. speed: fused ASSD at every k of --draft_len (comma-separated; the best k depends on the order:
   a left-to-right order keeps few drafts after the first of a round, a random or spread order
   nearly all) on held-out text at N = 512, 90% hidden, batch 1, cache on: NFE, tokens per round
   and tokens/s (median of 3 runs after compilation), against cached sequential decoding in the
   left-to-right order on the same problem (a sequential step's cost does not depend on the
   order); and ASSD (the first k) with the adaptive order (lowest entropy first, `adaptive_order`:
   not the law of any fixed order, so it has no NLL row and is never chosen).
Then per run the choice the library acts on: the fastest (decoding order, k) whose order's NLL at
90% hidden is within 3% of the run's best order; and what bounds the speed-up on this machine: a
least-squares fit of the measured ms per fused round against k (ms = a + b k, every order's rows:
the shapes, and so the cost, do not depend on the order), against the ms per sequential step s.
A round that kept all k drafts would run k s / (a + b k) times faster than sequential decoding;
as k grows that tends to s / b, the most any order can give. Writes
benchmarks/results/orders.{json,md} (or --out).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

from asarm_jax import masks
from asarm_jax.evals import heldout_loss
from benchmarks import drafters
from benchmarks import sampling as sampling_benchmark

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
NLL_RATES = (0.5, 0.9)
SPEED_FRACTION = 0.9
NLL_TOLERANCE = 0.03  # an order is acceptable when its NLL is within 3% of the run's best
ADAPTIVE = "adaptive (lowest entropy first)"


def quality_rows(model, tokenizer, settings: dict[str, Any], seed: int) -> list[dict[str, Any]]:
  """Held-out NLL under every decoding order at every rate of NLL_RATES."""
  batches = heldout_loss.load_batches(
      tokenizer, **{k: v for k, v in settings.items() if k != "masking"})
  rows = []
  for order in masks.ORDERS:
    masking = dataclasses.replace(settings["masking"], hidden_order=order)
    for rate in NLL_RATES:
      loss = heldout_loss.masked_loss(model.params, model.cfg, batches, rate, masking=masking,
                                      seed=seed)
      rows.append({"decoding_order": order, "rate": rate, "nll": loss["loss_nats"],
                   "hidden_tokens": loss["hidden_tokens"], "seq_len": settings["seq_len"]})
  return rows


def speed_rows(model, tokenizer, *, length: int, draft_lens: tuple[int, ...], seed: int
               ) -> list[dict[str, Any]]:
  """Cached sequential (left to right), fused ASSD in every decoding order at every k of
  `draft_lens`, and ASSD (the first k) with the adaptive order (`adaptive_order`, not a fixed
  order's law), batch 1."""
  chunks = sampling_benchmark.text_chunks(tokenizer, length, 1)
  problems = {order: sampling_benchmark.make_problem(chunks, SPEED_FRACTION, 1, seed, order=order)
              for order in masks.ORDERS}
  baseline, _ = drafters.time_sampler(model, problems["left_to_right"],
                                      dict(method="sequential"), seed)
  rows = [{"decoding_order": "left_to_right", "method": "sequential", **baseline,
           "speedup_vs_sequential": 1.0}]
  runs = [(order, problem, "assd_fused", dict(draft_len=k))
          for order, problem in problems.items() for k in draft_lens]
  # The adaptive order re-ranks the hidden positions itself (not a fixed order's law).
  runs.append((ADAPTIVE, problems["left_to_right"], "assd",
               dict(draft_len=draft_lens[0], adaptive_order=True)))
  for order, problem, method, options in runs:
    figures, _ = drafters.time_sampler(model, problem, dict(method=method, **options), seed)
    rows.append({"decoding_order": order, "method": method, "draft_len": options["draft_len"],
                 **figures,
                 "speedup_vs_sequential": figures["tokens_per_s"] / baseline["tokens_per_s"]})
  for row in rows:
    row.update(length=length, hidden_fraction=SPEED_FRACTION, batch=1)
  return rows


def choose_order(quality: list[dict[str, Any]], speed: list[dict[str, Any]],
                 rate: float = SPEED_FRACTION) -> dict[str, Any]:
  """The fastest (decoding order, k) of the fused ASSD rows (tokens/s) whose order's NLL at `rate`
  is within NLL_TOLERANCE of the best order's."""
  nll = {r["decoding_order"]: r["nll"] for r in quality if r["rate"] == rate}
  best = min(nll.values())
  acceptable = [o for o, value in nll.items() if value <= best * (1 + NLL_TOLERANCE)]
  fastest = max((r for r in speed if r["method"] == "assd_fused"
                 and r["decoding_order"] in acceptable), key=lambda r: r["tokens_per_s"])
  chosen = fastest["decoding_order"]
  return {"order": chosen, "draft_len": fastest["draft_len"], "nll": nll[chosen],
          "best_nll": best, "nll_vs_best": nll[chosen] / best, "acceptable": acceptable,
          "speedup_vs_sequential": fastest["speedup_vs_sequential"]}


def round_cost_fit(speed: list[dict[str, Any]]) -> dict[str, Any] | None:
  """ms per fused round = a + b k, fitted to the fused rows of `speed` (None with fewer than two
  k); with the sequential step's ms s: the speed-up of a round that keeps every draft at the
  largest k measured, and its limit s / b as k grows (module docstring)."""
  fused = [r for r in speed if r["method"] == "assd_fused"]
  draft_lens = sorted({r["draft_len"] for r in fused})
  if len(draft_lens) < 2:
    return None
  sequential = next(r for r in speed if r["method"] == "sequential")
  step_ms = sequential["run_s"] / sequential["rounds"] * 1e3
  ks = np.array([r["draft_len"] for r in fused], float)
  ms = np.array([r["run_s"] / r["rounds"] * 1e3 for r in fused])
  per_k, fixed = np.polyfit(ks, ms, 1)
  largest = draft_lens[-1]
  return {"step_ms": step_ms, "round_fixed_ms": float(fixed), "round_ms_per_k": float(per_k),
          "largest_k": largest,
          "all_kept_speedup_at_largest_k": largest * step_ms / (fixed + per_k * largest),
          "speedup_limit": step_ms / per_k if per_k > 0 else float("inf")}


def measure_run(label: str, workdir: str | None, *, quick: bool, draft_lens: tuple[int, ...],
                seed: int) -> dict[str, Any]:
  """Quality and speed rows of one run, and its chosen order."""
  model, tokenizer = sampling_benchmark.load_model(workdir=workdir, random_model=False, seed=seed)
  if quick:
    settings = heldout_loss.run_settings({"seq_len": 32, "eval_batch_size": 4,
                                          "num_eval_batches": 2}, model.cfg.max_len)
  else:
    from asarm_jax import checkpoint  # pylint: disable=import-outside-toplevel (orbax: slow)
    settings = heldout_loss.run_settings(checkpoint.read_run(workdir).get("config", {}),
                                         model.cfg.max_len)
  quality = quality_rows(model, tokenizer, settings, seed)
  speed = speed_rows(model, tokenizer, length=min(32 if quick else 512, model.cfg.max_len),
                     draft_lens=draft_lens, seed=seed)
  for row in quality + speed:
    row["training_order"] = label
    print(json.dumps(row), flush=True)
  return {"training_order": label, "model": model.description,
          "trained_with": settings["masking"].hidden_order, "quality": quality, "speed": speed,
          "choice": choose_order(quality, speed), "round_cost": round_cost_fit(speed)}


def markdown(results: dict[str, Any]) -> str:
  """The tables of the JSON results."""
  rates = " | ".join(f"NLL @{rate:.0%}" for rate in NLL_RATES)
  lines = ["# Decoding orders x training orders", "", f"`{results['command']}`", "",
           f"Quality: held-out NLL of the hidden tokens (nats/token) under each decoding order. "
           f"Speed: fused ASSD (k = {', '.join(map(str, results['draft_lens']))}), "
           f"N = {results['length']}, "
           f"{SPEED_FRACTION:.0%} hidden, batch 1, cache on, against cached sequential decoding "
           "(left to right) on the same text; the adaptive order's row is ASSD (not a fixed "
           "order's law: no NLL, never chosen).", "",
           f"| trained with | decoding order | {rates} | NFE | tokens/round | tokens/s | "
           "x sequential |", "|---|---|" + "---|" * len(NLL_RATES) + "---|---|---|---|"]
  for run in results["runs"]:
    sequential = next(r for r in run["speed"] if r["method"] == "sequential")
    lines.append(f"| {run['training_order']} | (sequential, left_to_right) | "
                 + " | ".join("" for _ in NLL_RATES)
                 + f" | {sequential['nfe']:.0f} | 1.00 | {sequential['tokens_per_s']:.0f} | "
                 "1.00 |")
    for row in run["speed"]:
      if row["method"] == "sequential":
        continue
      order = row["decoding_order"]
      nll = [next((r["nll"] for r in run["quality"]
                   if r["decoding_order"] == order and r["rate"] == rate), None)
             for rate in NLL_RATES]
      lines.append(f"| {run['training_order']} | {order} ({row['method']} "
                   f"k={row['draft_len']}) | "
                   + " | ".join("n/a" if v is None else f"{v:.4f}" for v in nll)
                   + f" | {row['nfe']:.0f} | {row['tokens_per_round']:.2f} | "
                   f"{row['tokens_per_s']:.0f} | {row['speedup_vs_sequential']:.2f} |")
  lines += ["", f"Choice per run: the fastest decoding order and k whose order's NLL at "
            f"{SPEED_FRACTION:.0%} hidden is within {NLL_TOLERANCE:.0%} of the run's best order.",
            "", "| trained with | chosen order | k | its NLL / best | acceptable orders | "
            "x sequential |", "|---|---|---|---|---|---|"]
  for run in results["runs"]:
    choice = run["choice"]
    lines.append(f"| {run['training_order']} | {choice['order']} | {choice['draft_len']} | "
                 f"{choice['nll_vs_best']:.4f} | {', '.join(choice['acceptable'])} | "
                 f"{choice['speedup_vs_sequential']:.2f} |")
  fits = [(run["training_order"], run["round_cost"]) for run in results["runs"]
          if run.get("round_cost")]
  if fits:
    lines += ["", "What bounds the speed-up on this machine: ms per fused round = a + b k (least "
              "squares over every order's rows), s = ms per sequential step; a round that keeps "
              "all k drafts runs k s / (a + b k) times faster than sequential decoding, at most "
              "s / b as k grows.", "",
              "| trained with | s (ms) | a (ms) | b (ms per k) | all kept, largest k "
              "| limit s / b |",
              "|---|---|---|---|---|---|"]
    for label, fit in fits:
      lines.append(f"| {label} | {fit['step_ms']:.3f} | {fit['round_fixed_ms']:.3f} | "
                   f"{fit['round_ms_per_k']:.3f} | {fit['all_kept_speedup_at_largest_k']:.2f} "
                   f"(k={fit['largest_k']}) | {fit['speedup_limit']:.2f} |")
  return "\n".join(lines) + "\n"


def run_benchmark(runs: list[tuple[str, str | None]], *, quick: bool, out: str | None,
                  draft_lens: tuple[int, ...], seed: int, command: str) -> dict[str, Any]:
  """Measures every run and writes the JSON and Markdown reports."""
  start = time.perf_counter()
  measured = [measure_run(label, workdir, quick=quick, draft_lens=draft_lens, seed=seed)
              for label, workdir in runs]
  results = {"command": command, "draft_lens": list(draft_lens),
             "length": measured[0]["speed"][0]["length"], "runs": measured,
             "seconds": time.perf_counter() - start, "jax": jax.__version__}
  drafters.write_report(results, pathlib.Path(out) if out else RESULTS_DIR / "orders.json",
                        markdown)
  return results


def parse_runs(specs: list[str]) -> list[tuple[str, str]]:
  """`LABEL=DIR` pairs of --run; ValueError naming a malformed one or a directory without a
  checkpoint."""
  from asarm_jax import checkpoint  # pylint: disable=import-outside-toplevel (orbax: slow)
  runs = []
  for spec in specs:
    label, sep, workdir = spec.partition("=")
    if not sep or not label or not workdir:
      raise ValueError(f"--run {spec!r}: expected LABEL=DIR, e.g. left_to_right=runs/default")
    if not (pathlib.Path(workdir) / checkpoint.RUN_FILE).is_file():
      raise ValueError(f"--run {spec!r}: {workdir} is not a training run directory (no "
                       f"{checkpoint.RUN_FILE})")
    if checkpoint.latest_step(workdir) is None:
      raise ValueError(f"--run {spec!r}: {workdir} holds no checkpoint")
    runs.append((label, workdir))
  return runs


def main() -> None:
  """The command line."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  values = flags.FLAGS
  if not values.run and not values.quick:
    raise ValueError("name the runs: --run LABEL=DIR (repeatable), or --quick")
  runs = parse_runs(values.run) if values.run else [("tiny_random", None)]
  run_benchmark(runs, quick=values.quick, out=values.out,
                draft_lens=tuple(int(k) for k in values.draft_len),
                seed=values.seed, command=" ".join(["python -m benchmarks.orders", *sys.argv[1:]]))


if __name__ == "__main__":
  from absl import flags as _flags

  from asarm_jax.cli import common

  _flags.DEFINE_multi_string("run", [], "LABEL=DIR: a trained run and the training order it is "
                             "labelled with (repeatable).")
  drafters.define_common_flags("orders", "Comma-separated k of the fused ASSD rows (each order "
                               "at every k; the adaptive order's ASSD at the first).",
                               several_draft_lens=True)
  common.run(main, module_name=__name__, summary=__doc__)
