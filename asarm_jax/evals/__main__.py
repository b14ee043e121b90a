"""Runs one evaluation of a trained run and prints a table; the results also go to a JSON file.

python -m asarm_jax.evals --workdir runs/default --task humaneval_infill \
    [--method sequential,assd] [--draft_len 5] [--limit 100] [--out results.json]
python -m asarm_jax.evals --workdir runs/default --task heldout_loss [--rates 0.15,0.5,0.9]
python -m asarm_jax.evals --workdir runs/default --task story_infill --dataset tfds:<name> \
    [--text_key text] [--split validation]

Methods: 'sequential', 'assd' and 'oracle' (the reference middle through the same pipeline: a
check of everything but the sampler). The results go to --out, by default
<workdir>/evals/<task>.json.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from asarm_jax.evals import TASKS

METHODS = ("sequential", "assd", "oracle")


def _methods(value: str) -> list[str]:
  methods = [m.strip() for m in value.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise argparse.ArgumentTypeError(
        f"unknown method(s) {unknown or value!r}; choose from {', '.join(METHODS)} "
        "(comma-separated)")
  return list(dict.fromkeys(methods))


def _rates(value: str) -> list[float]:
  try:
    rates = [float(r) for r in value.split(",") if r.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"rates must be comma-separated numbers; got {value!r}") from e
  if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
    raise argparse.ArgumentTypeError(f"rates must lie in [0, 1]; got {value!r}")
  return rates


def _positive(value: str) -> int:
  number = int(value)
  if number < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
  return number


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m asarm_jax.evals",
      description="Evaluate a trained AS-ARM run (see asarm_jax/evals/__main__.py).")
  parser.add_argument("--workdir", required=True, help="Training run directory.")
  parser.add_argument("--task", required=True, choices=TASKS, help="Which evaluation.")
  parser.add_argument("--method", type=_methods, default=["sequential", "assd"],
                      help="Comma-separated samplers: sequential, assd, oracle.")
  parser.add_argument("--draft_len", type=_positive, default=5, help="ASSD drafts per round (k).")
  parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
  parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus mass (1 = off).")
  parser.add_argument("--limit", type=_positive, default=None,
                      help="humaneval_infill: a seeded uniform sample of this many tasks (default "
                      "all 1033); story_infill: the first N usable stories (default 200).")
  parser.add_argument("--subset_seed", type=int, default=0, help="Seed of the --limit sample.")
  parser.add_argument("--seed", type=int, default=0, help="Sampling / masking seed.")
  parser.add_argument("--batch_size", type=_positive, default=16, help="Sampler rows per call.")
  parser.add_argument("--max_len", type=_positive, default=None,
                      help="Context budget in tokens (default: the run's training seq_len).")
  parser.add_argument("--out", default=None,
                      help="JSON results file (default <workdir>/evals/<task>.json).")
  parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default latest).")
  group = parser.add_argument_group("humaneval_infill")
  group.add_argument("--timeout", type=float, default=10.0, help="Seconds per program.")
  group.add_argument("--workers", type=_positive, default=2, help="Programs run at once.")
  group = parser.add_argument_group("heldout_loss")
  group.add_argument("--rates", type=_rates, default=[0.15, 0.5, 0.9],
                     help="Comma-separated fixed masking rates.")
  group.add_argument("--num_batches", type=_positive, default=8, help="Held-out batches.")
  group.add_argument("--num_samples", type=int, default=16,
                     help="Unconditional samples for the unigram-entropy check (0: none).")
  group = parser.add_argument_group("story_infill")
  group.add_argument("--dataset", default=None, help="'tfds:<name>' holding the texts.")
  group.add_argument("--split", default="validation", help="Split of --dataset.")
  group.add_argument("--text_key", default="text", help="Feature of --dataset with the text.")
  group.add_argument("--data_dir", default=None, help="TFDS data directory.")
  group.add_argument("--num_sentences", type=_positive, default=5,
                     help="Sentences per story; the middle one is hidden.")
  return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parses and checks the arguments; errors exit with status 2 and a message naming the flag."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if not os.path.isdir(args.workdir):
    parser.error(f"--workdir {args.workdir!r} does not exist")
  if not os.path.isfile(os.path.join(args.workdir, "run.json")):
    parser.error(f"--workdir {args.workdir!r} is not a training run directory (no run.json); "
                 "train one with `python train.py --config configs/default.py --workdir DIR`")
  if args.task == "story_infill" and not args.dataset:
    parser.error("--task story_infill needs --dataset tfds:<name> (and --text_key if the text "
                 "feature is not 'text')")
  if args.task != "heldout_loss" and args.temperature < 0:
    parser.error(f"--temperature must be >= 0; got {args.temperature}")
  return args


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Drops orbax's WARNING-level notes about read-only restores from the printout."""
  return "orbax" not in record.pathname or record.levelno >= logging.ERROR


def run(args: argparse.Namespace) -> dict:
  """Loads the run, evaluates, prints the table, writes the JSON; returns the results."""
  # Heavy imports only once the arguments are known to be good.
  from asarm_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from asarm_jax import objective  # pylint: disable=g-import-not-at-top
  from asarm_jax.evals import report  # pylint: disable=g-import-not-at-top

  logging.getLogger("absl").addFilter(_quiet_orbax)  # added once: the same function
  start = time.perf_counter()
  cfg, params, tokenizer = checkpoint.load_for_inference(args.workdir, args.step)
  config = checkpoint.read_run(args.workdir).get("config", {})
  seq_len = int(config.get("seq_len", cfg.max_len))
  max_len = min(args.max_len or seq_len, cfg.max_len)
  if args.task == "humaneval_infill":
    from asarm_jax.evals import humaneval_infill as task  # pylint: disable=g-import-not-at-top
    results = task.evaluate(
        params, cfg, tokenizer, methods=args.method, limit=args.limit,
        subset_seed=args.subset_seed, max_len=max_len, draft_len=args.draft_len,
        temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
        seed=args.seed, timeout_s=args.timeout, workers=args.workers)
  elif args.task == "heldout_loss":
    from asarm_jax.evals import heldout_loss as task  # pylint: disable=g-import-not-at-top
    data = config.get("data", {})
    masking = objective.MaskingConfig.from_dict(config["objective"]) if "objective" in config \
        else objective.MaskingConfig()
    method = "assd" if "assd" in args.method else args.method[0]
    results = task.evaluate(
        params, cfg, tokenizer, source=data.get("source", "stdlib"),
        split=data.get("eval_split", "validation"), text_key=data.get("text_key", "text"),
        data_dir=data.get("data_dir"), seq_len=seq_len, masking=masking, rates=args.rates,
        num_batches=args.num_batches, batch_size=args.batch_size, seed=args.seed,
        num_samples=0 if method == "oracle" else args.num_samples, sample_method=method,
        draft_len=args.draft_len)
  else:
    from asarm_jax.evals import story_infill as task  # pylint: disable=g-import-not-at-top
    results = task.evaluate(
        params, cfg, tokenizer, dataset=args.dataset, split=args.split, text_key=args.text_key,
        data_dir=args.data_dir, methods=args.method,
        limit=200 if args.limit is None else args.limit, num_sentences=args.num_sentences,
        max_len=max_len, draft_len=args.draft_len, temperature=args.temperature,
        top_p=args.top_p, batch_size=args.batch_size, seed=args.seed)
  results["workdir"] = os.path.abspath(args.workdir)
  results["seconds"] = time.perf_counter() - start
  out = args.out or os.path.join(args.workdir, "evals", f"{args.task}.json")
  report.write_json(out, results)
  print(task.table(results))
  print(f"\n{args.task} took {results['seconds']:.1f} s; results written to {out}")
  return results


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
