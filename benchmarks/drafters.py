"""Drafter benchmark: the context n-gram drafter vs model drafts vs fused rounds; the r_atol curve.

python -m benchmarks.drafters --workdir runs/default     # the trained default model
python -m benchmarks.drafters --random_model             # untrained, configs/default.py's sizes
python -m benchmarks.drafters --quick                    # tiny random model, N=32: a smoke run
python -m benchmarks.drafters --quick --workdir DIR      # N=32 on DIR's model

1. Drafters (exact): held-out stdlib text (benchmarks/sampling.py's problems), 50% and 90% hidden,
   left-to-right order, batch 1, temperature 1: NFE, tokens per round and tokens/s of
   sequential decoding, ASSD with model drafts, ASSD with n-gram drafts and fused rounds (cache on,
   k = --draft_len), timed as the median of 3 runs after compilation, and NFE relative to
   sequential.
2. r_atol (LOSSY for r_atol > 0) at 0, 0.1, 0.3, 0.5, ASSD with model drafts:
   - on the enumerable tiny model of the exactness tests (asarm_jax/exact_laws.py): NFE per
     sample and TV between 20,000 samples per case and the exact sequential law, beside the TV
     noise bound of an exact sampler;
   - on the text problems: NFE and the NLL (nats per generated token) the model gives its own
     samples at temperature 1 (one density forward per sample).
Every r_atol > 0 row is labelled "lossy"; nothing lossy is compared with an exact target.
Writes benchmarks/results/drafters.{json,md} (or --out).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import exact_laws, processors, sampling
from asarm_jax.model import ASARM
from benchmarks import sampling as sampling_benchmark

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
HIDDEN_FRACTIONS = (0.5, 0.9)
R_ATOLS = (0.0, 0.1, 0.3, 0.5)
REPEATS = 3  # timed runs of every compiled sampler; the median counts
DRAFTER_SPECS = {  # label -> sampling.sample options (k is added)
    "sequential": dict(method="sequential"),
    "assd (model drafts)": dict(method="assd"),
    "assd (ngram drafts)": dict(method="assd", drafter="ngram"),
    "assd_fused (model drafts)": dict(method="assd_fused"),
}


def time_sampler(model, problem, options: dict[str, Any], seed: int
                 ) -> tuple[dict[str, Any], Any]:
  """Compiles, then times REPEATS runs (the median counts): (the figures, the SampleOutput)."""
  sampler = sampling.Sampler.create(model.cfg, batch_shape=problem.tokens.shape, **options)
  out, compile_s, run_s = sampler.timed(model.params, problem.tokens, problem.ranks,
                                        problem.num_prompt, jax.random.key(seed), repeats=REPEATS)
  generated = problem.tokens.shape[1] - problem.num_prompt
  nfe, rounds = float(np.mean(out.nfe)), float(np.mean(out.rounds))
  return {"nfe": nfe, "rounds": rounds, "tokens_per_round": generated / rounds,
          "tokens_per_s": problem.tokens.shape[0] * generated / run_s, "run_s": run_s,
          "compile_s": compile_s, "generated": generated, "sampler_name": sampler.name}, out


def _self_nll(model, problem, tokens: np.ndarray) -> float:
  """Nats per generated token the model gives the samples `tokens` [B, N] at temperature 1."""
  logits = ASARM(model.cfg).apply({"params": model.params}, jnp.asarray(tokens),
                                  jnp.asarray(problem.ranks), jnp.int32(problem.num_prompt))
  untempered = processors.SamplingConfig(temperature=1.0, banned_ids=(model.cfg.mask_token_id,))
  probs = processors.probabilities(logits, untempered)  # [B, N, V]
  picked = np.log(np.asarray(
      jnp.take_along_axis(probs, jnp.asarray(tokens)[..., None], axis=-1)[..., 0]))  # [B, N]
  hidden = problem.ranks >= problem.num_prompt
  return float(-picked[hidden].mean())


def text_rows(model, tokenizer, *, length: int, draft_len: int, seed: int
              ) -> list[dict[str, Any]]:
  """The drafter rows and the r_atol text rows, for every hidden fraction."""
  chunks = sampling_benchmark.text_chunks(tokenizer, length, 1)
  rows = []
  for fraction in HIDDEN_FRACTIONS:
    problem = sampling_benchmark.make_problem(chunks, fraction, 1, seed)
    where = {"hidden_fraction": fraction, "length": length, "batch": 1, "draft_len": draft_len}
    sequential_nfe = None
    for label, options in DRAFTER_SPECS.items():
      figures, _ = time_sampler(model, problem, {**options, "draft_len": draft_len}, seed)
      sequential_nfe = sequential_nfe or figures["nfe"]
      rows.append({"block": "drafters", "sampler": label, "exact": True, **where, **figures,
                   "nfe_vs_sequential": figures["nfe"] / sequential_nfe})
      print(json.dumps(rows[-1]), flush=True)
    for r_atol in R_ATOLS:
      figures, out = time_sampler(model, problem,
                                 dict(method="assd", draft_len=draft_len, r_atol=r_atol), seed)
      rows.append({"block": "r_atol_text", "sampler": "assd (model drafts)", "r_atol": r_atol,
                   "exact": r_atol == 0, "label": "exact" if r_atol == 0 else "lossy", **where,
                   **figures, "self_nll": _self_nll(model, problem, np.asarray(out.tokens))})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def enumerable_rows(draft_len: int, seed: int) -> list[dict[str, Any]]:
  """NFE and TV to the exact law on the exactness tests' tiny model (`asarm_jax.exact_laws`), per
  r_atol."""
  model = exact_laws.tiny_model()
  case_laws = exact_laws.case_laws(model, exact_laws.sampling_config("t1"))
  rows = []
  for r_atol in R_ATOLS:
    samples, out = exact_laws.draw(model, seed, method="assd", draft_len=draft_len,
                                   temperature=1.0, r_atol=r_atol)
    reports = exact_laws.check_all(samples, case_laws)
    rows.append({"block": "r_atol_enumerable", "sampler": "assd (model drafts)", "r_atol": r_atol,
                 "exact": r_atol == 0, "label": "exact" if r_atol == 0 else "lossy",
                 "draft_len": draft_len, "samples_per_case": exact_laws.PER_CASE,
                 "nfe": float(np.mean(out.nfe)),
                 "tv_per_case": {r.name: r.tv for r in reports},
                 "tv_noise_bound_per_case": {r.name: r.tv_bound for r in reports},
                 "mean_tv": float(np.mean([r.tv for r in reports])),
                 "mean_tv_noise_bound": float(np.mean([r.tv_bound for r in reports]))})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def markdown(results: dict[str, Any]) -> str:
  """The tables of the JSON results."""
  lines = [f"# Drafters and r_atol ({results['model']})", "", f"`{results['command']}`", "",
           "## Drafters (exact), batch 1, left-to-right order, T = 1", "",
           "| hidden | N | sampler | NFE | vs sequential | tokens/round | tokens/s |",
           "|---|---|---|---|---|---|---|"]
  for row in results["rows"]:
    if row["block"] == "drafters":
      lines.append(f"| {row['hidden_fraction']:.0%} | {row['length']} | {row['sampler']} | "
                   f"{row['nfe']:.0f} | {row['nfe_vs_sequential']:.2f} | "
                   f"{row['tokens_per_round']:.2f} | {row['tokens_per_s']:.0f} |")
  lines += ["", "## r_atol on text (ASSD, model drafts): NFE and the model's NLL of its samples",
            "", "| hidden | r_atol | label | NFE | tokens/s | self NLL (nats/token) |",
            "|---|---|---|---|---|---|"]
  for row in results["rows"]:
    if row["block"] == "r_atol_text":
      lines.append(f"| {row['hidden_fraction']:.0%} | {row['r_atol']} | {row['label']} | "
                   f"{row['nfe']:.0f} | {row['tokens_per_s']:.0f} | {row['self_nll']:.3f} |")
  lines += ["", "## r_atol on the enumerable tiny model: TV to the exact sequential law", "",
            "| r_atol | label | NFE per sample | mean TV | exact sampler's TV noise bound |",
            "|---|---|---|---|---|"]
  for row in results["rows"]:
    if row["block"] == "r_atol_enumerable":
      lines.append(f"| {row['r_atol']} | {row['label']} | {row['nfe']:.2f} | "
                   f"{row['mean_tv']:.4f} | {row['mean_tv_noise_bound']:.4f} |")
  return "\n".join(lines) + "\n"


def run_benchmark(*, workdir: str | None, random_model: bool, quick: bool, out: str | None,
                  draft_len: int, seed: int, command: str) -> dict[str, Any]:
  """Runs both parts and writes the JSON and Markdown reports."""
  start = time.perf_counter()
  model, tokenizer = sampling_benchmark.load_model(workdir=workdir, random_model=random_model,
                                                   seed=seed)
  length = min(32 if quick else 512, model.cfg.max_len)
  rows = text_rows(model, tokenizer, length=length, draft_len=draft_len, seed=seed)
  rows += enumerable_rows(draft_len, seed)
  results = {"command": command, "model": model.description, "rows": rows,
             "seconds": time.perf_counter() - start}
  write_report(results, pathlib.Path(out) if out else RESULTS_DIR / "drafters.json", markdown)
  return results


def write_report(results: dict[str, Any], path: pathlib.Path,
                 to_markdown: Callable[[dict[str, Any]], str]) -> None:
  """Writes `results` (with the machine's load average, which the timings depend on) to the JSON
  file `path` and its tables to the .md file beside it."""
  results["load_average_1_5_15_min"] = list(os.getloadavg())
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=1))
  path.with_suffix(".md").write_text(to_markdown(results))
  print(f"wrote {path} and {path.with_suffix('.md')} in {results['seconds']:.0f} s")


def define_common_flags(name: str, draft_len_help: str, *, several_draft_lens: bool = False
                        ) -> None:
  """--quick, --out, --draft_len and --seed of the drafters and orders benchmarks (`name`: the
  results file's stem). With `several_draft_lens`, --draft_len is a comma-separated list of k."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_bool("quick", False, "N=32: a smoke run, of a tiny random model unless a model "
                    "is named.")
  flags.DEFINE_string("out", None, f"JSON output (default benchmarks/results/{name}.json); the "
                      ".md table is written next to it.")
  if several_draft_lens:
    flags.DEFINE_list("draft_len", [str(sampling.DEFAULT_DRAFT_LEN)], draft_len_help)
    flags.register_validator(
        "draft_len", lambda ks: bool(ks) and all(k.strip().isdigit() and int(k) >= 1 for k in ks),
        "must be comma-separated integers >= 1")
  else:
    flags.DEFINE_integer("draft_len", sampling.DEFAULT_DRAFT_LEN, draft_len_help)
    flags.register_validator("draft_len", lambda k: k >= 1, "must be >= 1")
  flags.DEFINE_integer("seed", 0, "Seeds the hidden subsets, random models, orders and samplers.")


def main() -> None:
  """The command line."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  values = flags.FLAGS
  if values.workdir is None and not (values.random_model or values.quick):
    raise ValueError("name a model: --workdir DIR, --random_model or --quick")
  run_benchmark(workdir=values.workdir, random_model=values.random_model, quick=values.quick,
                out=values.out, draft_len=values.draft_len, seed=values.seed,
                command=" ".join(["python -m benchmarks.drafters", *sys.argv[1:]]))


if __name__ == "__main__":
  from absl import flags as _flags

  from asarm_jax.cli import common

  _flags.DEFINE_string("workdir", None, "Training run directory of the model under test.")
  _flags.DEFINE_bool("random_model", False, "An untrained model of configs/default.py's sizes.")
  define_common_flags("drafters", "k of every speculative row.")
  common.run(main, module_name=__name__, summary=__doc__)
