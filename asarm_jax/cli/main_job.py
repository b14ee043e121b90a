"""The main job (`bash scripts/main.sh`): train the default AS-ARM, then watch it infill code.

1. Trains configs/default.py on the embedded standard-library corpus into --workdir
   (`train_lib.train_and_evaluate`). A finished run already there is reused (--retrain starts
   over); an unfinished one is resumed from its last checkpoint.
2. Takes a few held-out snippets (functions from the validation split), hides 50% and 90% of their
   tokens at random positions, and fills them, one snippet per call, with sequential decoding and
   with fused ASSD: exact samplers of the same distribution. Prints each completion under its
   original, then a table of forward passes (NFE), tokens per second and the speed-up of ASSD.
3. Times the same two samplers on held-out chunks of the model's full length (512 tokens for the
   default model), where speculation pays most on a CPU, and prints the same table for them.
4. Writes everything to <workdir>/main_job.json.

python -m asarm_jax.cli.main_job [--workdir runs/default] [--config configs/default.py]
    [--steps N] [--retrain] [--num_snippets 4] [--rates 0.5,0.9] [--draft_len 3]
    [--order left_to_right|random|spread]
"""
from __future__ import annotations

import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from asarm_jax import checkpoint
from asarm_jax import data as data_lib
from asarm_jax import infilling
from asarm_jax import masks
from asarm_jax import metrics as metrics_lib
from asarm_jax import run_config
from asarm_jax import sampling
from asarm_jax import train_lib
from asarm_jax.cli import common
from asarm_jax.evals import report
from asarm_jax.evals import span_infill

DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "default.py")
SUMMARY_FILE = "main_job.json"
SPECULATIVE = "assd_fused"  # the speculative sampler shown: one forward per round
SPEED_CHUNKS = 2  # held-out chunks of the model's max_len tokens for the speed table
# Runs of every compiled sampler call; the median is timed (a single run right after compiling
# carries one-time costs that are not the sampler's).
TIMING_REPEATS = 3
HIDDEN_MARK = "\u2591"  # '░': one hidden token
DEFAULT_ORDER = "left_to_right"  # the order of the hidden positions shown (`masks.ORDERS`)


# ------------------------------------------------------------------------------------------------
# Training.


def finished_steps(workdir: str | os.PathLike) -> int | None:
  """The latest checkpoint step of the run in `workdir`, or None if there is no checkpoint."""

  if not (pathlib.Path(workdir) / checkpoint.RUN_FILE).exists():
    return None
  return checkpoint.latest_step(workdir)


def train(config, workdir: str, *, retrain: bool = False) -> dict[str, Any]:
  """Trains unless `workdir` holds a finished run of `config`; returns what happened."""

  run = run_config.parse(config)
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"{workdir} is a file, not a run directory")
  if retrain and path.exists():
    if not (path / checkpoint.RUN_FILE).exists():
      raise ValueError(f"--retrain: {workdir} exists but holds no run.json; refusing to delete "
                       "a directory that is not a training run")
    print(f"--retrain: deleting the run in {workdir}", flush=True)
    shutil.rmtree(path)
  checkpoint.check_compatible(path, run.identity())
  done = finished_steps(path)
  if done is not None and done >= run.num_train_steps:
    print(f"Found a finished run in {workdir} ({done} steps): skipping training "
          "(--retrain to train again).", flush=True)
    trained, seconds = False, 0.0
  else:
    start_from = done or 0
    print(f"Training {workdir}: {run.num_train_steps} steps of batch {run.batch_size} x "
          f"{run.seq_len} tokens on '{run.data.source}'"
          + (f", resuming at step {start_from}" if start_from else "") + " ...", flush=True)
    start = time.perf_counter()
    train_lib.train_and_evaluate(config, str(path))
    trained, seconds = True, time.perf_counter() - start
  records = metrics_lib.read_metrics(path) if (path / metrics_lib.METRICS_FILE).exists() else []
  evals = {}
  for record in records:
    evals.update({k: v for k, v in record.items() if k.startswith("eval/")})
  train_losses = [r["train/loss"] for r in records if "train/loss" in r]
  return dict(workdir=str(path), trained_now=trained, train_seconds=seconds,
              steps=finished_steps(path), final_train_loss=train_losses[-1] if train_losses
              else None, eval=evals)


# ------------------------------------------------------------------------------------------------
# Held-out snippets.


def pick_snippets(documents, tokenizer, *, count: int, max_tokens: int,
                  names: list[str] | None = None) -> list[dict[str, Any]]:
  """The first `count` documents' first function that fits: whole lines from a 'def' line on.

  Each snippet is the longest run of whole lines starting at the document's first 'def ' line with
  at most `max_tokens` tokens, and at least 3 lines and max_tokens // 2 tokens (else the document is
  skipped). Deterministic: documents are taken in split order.
  """
  snippets = []
  for index in range(len(documents)):
    lines = documents[index].splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), None)
    if start is None:
      continue
    text, tokens = "", []
    for line in lines[start:]:
      candidate = tokenizer.encode(text + line)
      if len(candidate) > max_tokens:
        break
      text, tokens = text + line, candidate
    if text.count("\n") < 3 or len(tokens) < max_tokens // 2:
      continue
    snippets.append(dict(source=names[index] if names else f"document {index}", text=text,
                         tokens=tokens))
    if len(snippets) == count:
      break
  return snippets


def hide(num_tokens: int, rate: float, seed: int) -> np.ndarray:
  """bool [num_tokens]: max(1, int(rate * n)) positions (never all), uniformly at random."""
  count = min(max(1, int(rate * num_tokens)), num_tokens - 1)
  hidden = np.zeros(num_tokens, bool)
  hidden[np.random.default_rng(seed).choice(num_tokens, size=count, replace=False)] = True
  return hidden


# ------------------------------------------------------------------------------------------------
# Infilling and the printout.


def infill_snippets(params, cfg, tokenizer, snippets: list[dict[str, Any]], *, rates,
                    draft_len: int, temperature: float, seed: int,
                    order: str = DEFAULT_ORDER) -> list[dict[str, Any]]:
  """Sequential decoding and fused ASSD at every rate, one snippet per sampler call (batch 1, the
  interactive case): one result dict per (rate, method). The hidden positions are generated in
  `order` (`masks.ORDERS`)."""
  results = []
  for rate in rates:
    examples = [infilling.Example(np.asarray(s["tokens"], np.int32),
                                    hide(len(s["tokens"]), rate, seed + 1000 * i))
                for i, s in enumerate(snippets)]
    for method in ("sequential", SPECULATIVE):
      filled = span_infill.infill_examples(
          params, cfg, examples, jax.random.key(seed), method=method, batch_size=1,
          length_bucket=16, draft_len=draft_len, temperature=temperature, order=order,
          order_seed=seed, timing_repeats=TIMING_REPEATS)
      rows = []
      for example, tokens, nfe in zip(examples, filled.tokens, filled.nfe):
        masked = np.where(example.hidden, tokenizer.mask_id, example.tokens)
        rows.append(dict(
            hidden=int(example.hidden.sum()), nfe=int(nfe),
            masked=tokenizer.decode(masked.tolist(), mask_text=HIDDEN_MARK),
            completion=tokenizer.decode(tokens.tolist()),
            token_matches=int(np.sum(tokens[example.hidden] == example.tokens[example.hidden]))))
      results.append(dict(rate=rate, method=method, draft_len=filled.stats.draft_len,
                          stats=filled.stats, snippets=rows))
  return results


def speed_chunks(documents, tokenizer, *, count: int, length: int) -> list[dict[str, Any]]:
  """The first `count` runs of `length` tokens of the held-out documents, joined end to end."""
  tokens = []
  for index in range(len(documents)):
    tokens += tokenizer.encode(documents[index])
    if len(tokens) >= count * length:
      break
  return [dict(source=f"held-out tokens {i * length}..{(i + 1) * length - 1}",
               tokens=tokens[i * length:(i + 1) * length]) for i in range(len(tokens) // length)][
                   :count]


def _indent(text: str, prefix: str = "    ") -> str:
  return "\n".join(prefix + line for line in text.rstrip("\n").split("\n"))


def format_completions(snippets: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
  """Each snippet: the original, then per rate the input and both completions."""

  blocks = []
  for i, snippet in enumerate(snippets):
    lines = [f"=== snippet {i + 1}/{len(snippets)}: {snippet['source']} "
             f"({len(snippet['tokens'])} tokens)",
             "original:", _indent(snippet["text"])]
    for result in results:
      row = result["snippets"][i]
      label = report.method_label(result["method"], result["draft_len"])
      if result["method"] == "sequential":
        lines += [f"--- {100 * result['rate']:.0f}% hidden ({row['hidden']} tokens, each "
                  f"{HIDDEN_MARK} is one):", _indent(row["masked"])]
      lines += [f"  {label}: {row['nfe']} NFE, {row['token_matches']}/{row['hidden']} hidden "
                "tokens as in the original", _indent(row["completion"])]
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def summary_table(results: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
  """NFE, tokens/s and the ASSD speed-up per rate; also returns the rows."""

  rows = []
  for result in results:
    stats = result["stats"]
    matches = sum(r["token_matches"] for r in result["snippets"])
    rows.append(dict(hidden=f"{100 * result['rate']:.0f}%",
                     method=report.method_label(result["method"], result["draft_len"]),
                     tokens=stats.tokens, nfe=stats.nfe, tokens_per_nfe=stats.tokens_per_nfe,
                     tokens_per_round=stats.tokens_per_round, seconds=stats.seconds,
                     tokens_per_second=stats.tokens_per_second,
                     match=matches / stats.tokens if stats.tokens else float("nan")))
  for (sequential, assd), result in zip(zip(rows[::2], rows[1::2]), results[1::2]):
    assd["speedup"] = sequential["seconds"] / assd["seconds"] if assd["seconds"] else float("nan")
    assd["nfe_saving"] = sequential["nfe"] / assd["nfe"] if assd["nfe"] else float("nan")
    # One loop iteration of each (a sequential step; a speculative round), in wall-clock.
    step = sequential["seconds"] / max(sequential["nfe"], 1)
    assd["round_vs_step"] = assd["seconds"] / max(result["stats"].rounds, 1) / step
  columns = (("hidden", "hidden", "s"), ("method", "method", "s"), ("tokens", "tokens", "d"),
             ("nfe", "NFE", "d"), ("tokens_per_nfe", "tok/NFE", ".2f"),
             ("tokens_per_second", "tok/s", ".1f"), ("seconds", "wall s", ".3f"),
             ("speedup", "speed-up", lambda v: f"{v:.2f}x"),
             ("nfe_saving", "NFE saved", lambda v: f"{v:.2f}x"),
             ("match", "same as orig.", lambda v: f"{100 * v:.0f}%"))
  title = ("Summary (a row: every snippet, one sampler call each; wall-clock excludes "
           "compilation).\nBoth samplers draw from the same distribution; ASSD needs fewer forward "
           "passes (NFE).")
  table = report.format_table(rows, columns, title)
  for row in rows:
    if row.get("speedup", 1.0) < 1.0:
      table += (f"\n{row['hidden']} hidden: {row['method']} is {row['speedup']:.2f}x sequential "
                f"in wall-clock although it needs {row['nfe_saving']:.2f}x fewer forwards: one "
                f"of its rounds decided {row['tokens_per_round']:.2f} tokens but cost "
                f"{row['round_vs_step']:.2f}x a sequential step (on a CPU the extra rows a round "
                "computes are matmul work, not free).")
  return table, rows


def run(config, workdir: str, *, retrain: bool = False, num_snippets: int = 4,
        snippet_tokens: int = 48, rates=(0.5, 0.9), draft_len: int = sampling.DEFAULT_DRAFT_LEN,
        temperature: float = 1.0, seed: int = 0, order: str = DEFAULT_ORDER) -> dict[str, Any]:
  """The whole job (see the module docstring); returns the JSON summary it writes."""
  masks.check_order_name(order)

  job_start = time.perf_counter()
  training = train(config, workdir, retrain=retrain)
  run_cfg = run_config.parse(config)
  cfg, params, tokenizer = checkpoint.load_for_inference(workdir)
  documents = data_lib.open_source(run_cfg.data.source, run_cfg.data.eval_split,
                                   **run_cfg.data.source_options())
  max_tokens = min(snippet_tokens, cfg.max_len)
  snippets = pick_snippets(documents, tokenizer, count=num_snippets, max_tokens=max_tokens,
                           names=getattr(documents, "files", None))
  if not snippets:
    raise ValueError(f"no snippet of at most {max_tokens} tokens found in "
                     f"{run_cfg.data.source}/{run_cfg.data.eval_split}")
  print(f"\nInfilling {len(snippets)} held-out snippets ({run_cfg.data.source}/"
        f"{run_cfg.data.eval_split}) with {', '.join(f'{100 * r:.0f}%' for r in rates)} of their "
        f"tokens hidden, generated in the {order} order; sequential vs {SPECULATIVE} "
        f"(k={draft_len}), temperature {temperature:g} "
        "(compiling the samplers first) ...\n", flush=True)
  results = infill_snippets(params, cfg, tokenizer, snippets, rates=rates, draft_len=draft_len,
                            temperature=temperature, seed=seed, order=order)
  print(format_completions(snippets, results))
  table, rows = summary_table(results)
  print("\n" + table)
  chunks = speed_chunks(documents, tokenizer, count=SPEED_CHUNKS, length=cfg.max_len)
  print(f"\nSpeed at the model's full length ({len(chunks)} held-out chunks of {cfg.max_len} "
        "tokens, one per call, the same rates; speculation pays most on long sequences) ...",
        flush=True)
  speed_results = infill_snippets(params, cfg, tokenizer, chunks, rates=rates,
                                  draft_len=draft_len, temperature=temperature, seed=seed,
                                  order=order)
  speed_table, speed_rows = summary_table(speed_results)
  print("\n" + speed_table.replace("every snippet, one sampler call each",
                                     f"every {cfg.max_len}-token chunk, one sampler call each"))
  if training["eval"]:
    losses = ", ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in training["eval"].items()
                       if k.startswith("eval/loss"))
    print(f"\nHeld-out any-order loss of the trained model (nats/token): {losses}")
  summary = dict(training=training, model=cfg.to_dict(),
                 settings=dict(num_snippets=len(snippets), snippet_tokens=max_tokens,
                               rates=list(rates), draft_len=draft_len, temperature=temperature,
                               seed=seed, order=order),
                 snippets=[dict(source=s["source"], text=s["text"], num_tokens=len(s["tokens"]))
                           for s in snippets],
                 infilling=results, table=rows,
                 speed=dict(chunks=len(chunks), length=cfg.max_len, infilling=[
                     {k: v for k, v in r.items() if k != "snippets"} for r in speed_results],
                     table=speed_rows),
                 seconds=time.perf_counter() - job_start)
  path = os.path.join(workdir, SUMMARY_FILE)
  report.write_json(path, summary)
  print(f"\nDone in {summary['seconds']:.0f} s. Summary: {path}. Next: "
        f"`python -m asarm_jax.evals --workdir {workdir} --task humaneval_infill --limit 100`")
  return summary


# ------------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  """Defines the job's flags. Only the entry point calls this, so that tests and the notebook can
  import the module next to the other applications, whose flag names it shares."""
  flags.DEFINE_string("workdir", "runs/default", "Run directory (reused when finished).")
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training config file.")
  flags.DEFINE_integer("steps", None, "Override config.num_train_steps.")
  flags.DEFINE_bool("retrain", False, "Delete the run in --workdir and train from scratch.")
  flags.DEFINE_integer("num_snippets", 4, "Held-out snippets to infill.")
  flags.DEFINE_integer("snippet_tokens", 48, "Longest snippet, in tokens.")
  flags.DEFINE_list("rates", ["0.5", "0.9"], "Fractions of each snippet's tokens to hide.")
  flags.DEFINE_integer("draft_len", sampling.DEFAULT_DRAFT_LEN, "ASSD drafts per round (k).")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
  flags.DEFINE_integer("seed", 0, "Seed of the hidden positions, of sampling and of the random "
                       "order.")
  flags.DEFINE_enum("order", DEFAULT_ORDER, list(masks.ORDERS),
                    f"Order of the hidden positions: {masks.ORDER_HELP}.")
  common.register_fractions_validator("rates", closed=False)
  flags.register_validator("temperature", lambda t: t >= 0, "must be >= 0 (0 is greedy)")
  common.register_positive_validators("steps", "num_snippets", "snippet_tokens", "draft_len")


def main():
  """Runs the job with the flags' settings; a bad --workdir is named in the error."""
  values = flags.FLAGS
  config = common.config_value(values["config"])
  common.quiet_library_logs()
  if values.steps is not None:
    config.num_train_steps = values.steps
  try:
    run(config, values.workdir, retrain=values.retrain, num_snippets=values.num_snippets,
        snippet_tokens=values.snippet_tokens, rates=tuple(float(r) for r in values.rates),
        draft_len=values.draft_len, temperature=values.temperature, seed=values.seed,
        order=values.order)
  except common.USER_ERRORS as error:
    common.fail(f"--workdir {values.workdir}: {error}" if isinstance(error, OSError) else error)


if __name__ == "__main__":
  _define_flags()
  common.run(main, module_name=__name__, summary=__doc__)
