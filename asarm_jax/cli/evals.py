r"""Runs one evaluation of a trained run and prints a table; the results also go to a JSON file.

python -m asarm_jax.evals --workdir runs/default --task humaneval_infill \
    [--method sequential,auto] [--draft_len 3] [--limit 100] [--out results.json]
python -m asarm_jax.evals --workdir runs/default --task heldout_loss [--rates 0.15,0.5,0.9]
python -m asarm_jax.evals --workdir runs/default --task story_infill --dataset tfds:<name> \
    [--text_key text] [--split validation]

--method takes comma-separated samplers: any of the library's (`sampling.METHODS`), and 'oracle'
(the reference middle through the same pipeline: a check of everything but the sampler);
heldout_loss samples with the first one. The results go to --out, by default
<workdir>/evals/<task>.json. --workdir may also be a Hugging Face XLNet directory (see
`asarm_jax.load`); it has no training config, so the defaults stand in for the run's settings
(seq_len = the model's max_len, seed 0, the stdlib held-out data). XLNet's tokenizer cannot keep
code's newlines and indentation: humaneval_infill refuses it unless --allow_lossy_tokenization (see
`asarm_jax.evals.humaneval_infill`).
"""
from __future__ import annotations

import os
import time

from absl import flags

from asarm_jax import checkpoint
from asarm_jax import loading
from asarm_jax import masks
from asarm_jax import sampling
from asarm_jax.cli import common
from asarm_jax.evals import TASKS
from asarm_jax.evals import heldout_loss
from asarm_jax.evals import humaneval_infill
from asarm_jax.evals import report
from asarm_jax.evals import span_infill
from asarm_jax.evals import story_infill

_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Training run directory or Hugging Face XLNet directory.")
_TASK = flags.DEFINE_enum("task", None, TASKS, "Which evaluation.")
_METHOD = flags.DEFINE_list("method", [sampling.DEFAULT_METHOD],
                            f"Comma-separated samplers: {', '.join(span_infill.METHODS)}.")
_DRAFT_LEN = flags.DEFINE_integer("draft_len", sampling.DEFAULT_DRAFT_LEN,
                                   "ASSD drafts per round (k).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1] (1 = off).")
_LIMIT = flags.DEFINE_integer(
    "limit", None, "humaneval_infill: a seeded uniform sample of this many tasks (default all "
    "1033); story_infill: the first N usable stories (default 200).")
_SUBSET_SEED = flags.DEFINE_integer("subset_seed", 0, "Seed of the --limit sample.")
_SEED = flags.DEFINE_integer("seed", None, "Sampling / masking seed (default: the run's seed).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Sampler rows per call (default 16); heldout_loss: sequences per batch "
    "(default: the run's eval_batch_size).")
_MAX_LEN = flags.DEFINE_integer(
    "max_len", None, "Context budget in tokens (default: the run's training seq_len).")
_OUT = flags.DEFINE_string("out", None, "JSON results file (default <workdir>/evals/<task>.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
_TIMEOUT = flags.DEFINE_float("timeout", 10.0, "humaneval_infill: seconds per program.")
_WORKERS = flags.DEFINE_integer("workers", 2, "humaneval_infill: programs run at once.")
_ALLOW_LOSSY = flags.DEFINE_bool(
    "allow_lossy_tokenization", False, "humaneval_infill: evaluate code the tokenizer cannot keep "
    "as it is (XLNet's folds newlines and indentation), instead of refusing; the results say so.")
_ORDER = flags.DEFINE_enum(
    "order", "left_to_right", list(masks.ORDERS),
    f"humaneval_infill, story_infill: order of the hidden positions ({masks.ORDER_HELP}).")
_ORDERS = flags.DEFINE_list(
    "orders", list(masks.ORDERS), "heldout_loss: comma-separated decoding orders to score the "
    f"hidden tokens in, of {', '.join(masks.ORDERS)}.")
_RATES = flags.DEFINE_list("rates", [str(r) for r in heldout_loss.DEFAULT_RATES],
                           "heldout_loss: comma-separated fixed masking rates in [0, 1].")
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", None, "heldout_loss: held-out batches (default: the run's num_eval_batches; "
    "with the default --batch_size and --seed, the sequences and hidden sets training evaluates).")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 16, "heldout_loss: unconditional samples for the unigram-entropy check (0: "
    "none).")
_DATASET = flags.DEFINE_string("dataset", None, "story_infill: 'tfds:<name>' holding the texts.")
_SPLIT = flags.DEFINE_string("split", "validation", "story_infill: split of --dataset.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "story_infill: feature with the text.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "story_infill: TFDS data directory.")
_NUM_SENTENCES = flags.DEFINE_integer(
    "num_sentences", 5, "story_infill: sentences per story; the middle one is hidden.")


def _names_validator(what: str, allowed: tuple[str, ...]):
  """A validator of a comma-separated list flag whose entries must be among `allowed`."""
  def check(names: list[str]) -> bool:
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
      raise flags.ValidationError(f"unknown {what}(s) {unknown}; choose from "
                                  f"{', '.join(allowed)} (comma-separated)")
    return True
  return check


# Checked while parsing the flags, before any model is loaded; the error names the flag.
flags.register_validator("method", _names_validator("method", span_infill.METHODS))
flags.register_validator("orders", _names_validator("order", masks.ORDERS))
common.register_fractions_validator("rates", closed=True)
flags.register_validator("temperature", lambda t: t >= 0, "must be >= 0 (0 is greedy)")
flags.register_validator("top_p", lambda p: 0 < p <= 1, "must be in (0, 1] (1 = off)")
flags.register_validator("timeout", lambda t: t > 0, "must be > 0")
flags.register_validator("num_samples", lambda n: n >= 0, "must be >= 0")
common.register_positive_validators("draft_len", "limit", "batch_size", "max_len", "workers",
                                    "num_batches", "num_sentences")


def _check_workdir(workdir: str) -> None:
  """Fails unless `workdir` is a training run directory or a Hugging Face XLNet directory."""
  if not os.path.isdir(workdir):
    common.fail(f"--workdir {workdir}: does not exist")
  if loading.kind(workdir) is None:
    common.fail(f"--workdir {workdir}: not a training run directory (no {checkpoint.RUN_FILE}) "
                f"nor a Hugging Face XLNet directory (no {loading.HF_CONFIG}); train one with "
                "`python train.py --config configs/default.py --workdir DIR`")


def main():
  """Loads the run, evaluates, prints the table and writes the JSON."""
  if _WORKDIR.value is None or _TASK.value is None:
    common.fail(f"evals needs --workdir DIR and --task NAME (one of {', '.join(TASKS)}), e.g. "
                "`python -m asarm_jax.evals --workdir runs/default --task heldout_loss` "
                "(see --help)")
  workdir, task, methods = _WORKDIR.value, _TASK.value, _METHOD.value
  _check_workdir(workdir)
  if task == "story_infill" and not _DATASET.value:
    common.fail("--task story_infill needs --dataset tfds:<name> (and --text_key if the text "
                "feature is not 'text')")
  common.quiet_library_logs()
  start = time.perf_counter()
  model = loading.load(workdir, step=_STEP.value)
  cfg, params, tokenizer = model.config, model.params, model.tokenizer
  config = checkpoint.read_run(workdir).get("config", {}) if model.kind == loading.RUN else {}
  run = heldout_loss.run_settings(config, cfg.max_len)
  max_len = min(_MAX_LEN.value or run["seq_len"], cfg.max_len)
  seed = int(config.get("seed", 0)) if _SEED.value is None else _SEED.value
  default_batch = run["batch_size"] if task == "heldout_loss" else 16
  sampler = dict(draft_len=_DRAFT_LEN.value, batch_size=_BATCH_SIZE.value or default_batch,
                 seed=seed)
  if task == "humaneval_infill":
    module = humaneval_infill
    results = humaneval_infill.evaluate(
        params, cfg, tokenizer, methods=methods, limit=_LIMIT.value,
        subset_seed=_SUBSET_SEED.value, max_len=max_len, temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value, timeout_s=_TIMEOUT.value, workers=_WORKERS.value,
        order=_ORDER.value, allow_lossy_tokenization=_ALLOW_LOSSY.value, **sampler)
  elif task == "heldout_loss":
    module = heldout_loss
    run.update(num_batches=_NUM_BATCHES.value or run["num_batches"], **sampler)
    results = heldout_loss.evaluate(
        params, cfg, tokenizer, rates=[float(r) for r in _RATES.value], orders=_ORDERS.value,
        num_samples=0 if methods[0] == "oracle" else _NUM_SAMPLES.value,
        sample_method=methods[0], **run)
  else:
    module = story_infill
    results = story_infill.evaluate(
        params, cfg, tokenizer, dataset=_DATASET.value, split=_SPLIT.value,
        text_key=_TEXT_KEY.value, data_dir=_DATA_DIR.value, methods=methods,
        limit=200 if _LIMIT.value is None else _LIMIT.value,
        num_sentences=_NUM_SENTENCES.value, max_len=max_len, temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value, order=_ORDER.value, **sampler)
  results["workdir"] = os.path.abspath(workdir)
  results["seconds"] = time.perf_counter() - start
  out = _OUT.value or os.path.join(workdir, "evals", f"{task}.json")
  report.write_json(out, results)
  print(module.table(results))
  print(f"\n{task} took {results['seconds']:.1f} s; results written to {out}")


def run():
  """The `python -m asarm_jax.evals` entry point."""
  common.run(main, module_name=__name__, summary=__doc__)
