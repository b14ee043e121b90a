"""HumanEval single-line infilling: pass@1 with one sample per task and the oracle middle length.

For every task (see `humaneval_tasks`: 1033 hidden lines) the prefix, the middle line and the suffix
are tokenized separately with the run's tokenizer; the middle's tokens are hidden and generated in
the paper's infill order (context first, then the hole left to right) by each method. The decoded
middle is put between the task's full prefix and suffix, followed by the problem's tests, and the
program is run in the sandbox (`sandbox.run_many`) under a wall-clock limit: a task passes when the
tests run to the end.

Context that does not fit: the model sees at most `max_len` tokens (by default the run's training
sequence length, capped at the model's max_len). When prefix + middle + suffix is longer, the
prefix is cut from the left and the suffix from the right (`span_infill.fit_context`); the program
that is run always has the full prefix and suffix. A task whose middle alone does not fit is
counted as failed ('skipped' in the per-task records); nothing crashes.

`limit` evaluates a seeded uniform sample of the tasks (without replacement, numpy
`default_rng(subset_seed)`), in task order; None evaluates all of them.

Tokenizers that cannot keep code as it is: XLNet's (an HF XLNet directory, or a run fine-tuned from
one) folds newlines and indentation into single spaces, so the model would see and write code
without its layout, and even the reference line would come back unindented and fail. Like
`infilling.infill`, the evaluation refuses such tasks, naming the first loss (`lossy_tasks`), unless
`allow_lossy_tokenization=True`; then it runs, and its settings (`lossy_tasks`) and table say how
many tasks' code the tokenizer changed.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from asarm_jax import infilling
from asarm_jax import sampling
from asarm_jax.evals import humaneval_tasks
from asarm_jax.evals import report
from asarm_jax.evals import sandbox
from asarm_jax.evals import span_infill
from asarm_jax.evals.humaneval_tasks import InfillTask


def select_tasks(tasks: Sequence[InfillTask], limit: int | None,
                 subset_seed: int = 0) -> list[InfillTask]:
  """All tasks, or a seeded uniform sample of `limit` of them in their original order."""
  if limit is None or limit >= len(tasks):
    return list(tasks)
  if limit < 1:
    raise ValueError(f"limit must be >= 1; got {limit}")
  chosen = np.random.default_rng(subset_seed).choice(len(tasks), size=limit, replace=False)
  return [tasks[i] for i in sorted(chosen.tolist())]


def lossy_tasks(tasks: Sequence[InfillTask], tokenizer) -> list[tuple[str, str]]:
  """(task id, what is lost) of each task whose prefix, hidden line or suffix `tokenizer` cannot
  round-trip (`lossy_reason`; characters counted in that part)."""
  found = []
  for task in tasks:
    for part, text in (("prefix", task.prefix), ("hidden line", task.middle),
                       ("suffix", task.suffix)):
      reason = tokenizer.lossy_reason(text)
      if reason is not None:
        found.append((task.task_id, f"in its {part}, {reason}"))
        break
  return found


def pose(task: InfillTask, tokenizer, max_len: int) -> infilling.Example | None:
  """The task as an infilling example of at most `max_len` tokens (None if it cannot fit)."""
  prefix, middle, suffix = (tokenizer.encode(task.prefix), tokenizer.encode(task.middle),
                            tokenizer.encode(task.suffix))
  fitted = span_infill.fit_context(prefix, len(middle), suffix, max_len)
  if fitted is None:
    return None
  return infilling.Example.from_span(fitted[0], middle, fitted[1])


def evaluate(params, cfg, tokenizer, *, methods: Sequence[str] = ("sequential", "assd"),
             limit: int | None = None, subset_seed: int = 0, max_len: int | None = None,
             draft_len: int = sampling.DEFAULT_DRAFT_LEN, temperature: float = 1.0,
             top_p: float = 1.0, order: str = "left_to_right",
             batch_size: int = 16, seed: int = 0, timeout_s: float = 10.0, workers: int = 2,
             tasks: Sequence[InfillTask] | None = None,
             allow_lossy_tokenization: bool = False) -> dict[str, Any]:
  """pass@1 of every method on the (selected) HumanEval single-line infilling tasks.

  Args:
    params, cfg, tokenizer: the model (see `checkpoint.load_for_inference`).
    methods: any of `span_infill.METHODS`; 'oracle' is the canonical line through the same
      tokenize / decode / assemble / sandbox path (checks the pipeline, should pass every task).
    limit: evaluate a seeded sample of this many tasks (see the module docstring).
    subset_seed: seed of that sample.
    max_len: context budget in tokens (default cfg.max_len; capped at it).
    draft_len: ASSD's k.
    temperature, top_p: sampling settings (the same for every method).
    order: the order of the hole's positions (`masks.ORDERS`; the context comes first).
    batch_size: sampler rows per call.
    seed: sampling seed; task i of the selection uses `fold_in(key(seed), i)` for every method.
    timeout_s: wall-clock limit of one program in the sandbox.
    workers: programs run concurrently.
    tasks: the task list (default: all 1033 from `humaneval_tasks.load_tasks()`).
    allow_lossy_tokenization: evaluate tasks whose code the tokenizer cannot keep as it is (see
      the module docstring) instead of refusing them.

  Returns:
    A JSON-ready dict: settings (`lossy_tasks`: the tasks whose code the tokenizer changed), and
    per method pass@1, counts by status, sampling statistics and per-task records.

  Raises:
    ValueError: a task the tokenizer cannot keep (unless `allow_lossy_tokenization`), naming the
      first loss, before anything is sampled; a bad option.
  """
  max_len = cfg.max_len if max_len is None else min(max_len, cfg.max_len)
  all_tasks = humaneval_tasks.load_tasks() if tasks is None else list(tasks)
  selected = select_tasks(all_tasks, limit, subset_seed)
  lossy = lossy_tasks(selected, tokenizer)
  if lossy and not allow_lossy_tokenization:
    task_id, reason = lossy[0]
    raise ValueError(
        f"the tokenizer cannot keep the code of {len(lossy)} of the {len(selected)} tasks as it "
        f"is (first {task_id}: {reason}); the model would see and write code without its "
        "layout and even the reference line would fail; pass allow_lossy_tokenization=True "
        "(--allow_lossy_tokenization) to evaluate it anyway")
  posed = [pose(task, tokenizer, max_len) for task in selected]
  usable = [i for i, example in enumerate(posed) if example is not None]
  examples = [posed[i] for i in usable]
  results: dict[str, Any] = {
      "task": "humaneval_infill",
      "settings": dict(num_tasks=len(selected), of_tasks=len(all_tasks), limit=limit,
                       subset="all" if limit is None or limit >= len(all_tasks)
                       else f"seeded uniform sample (subset_seed={subset_seed})",
                       max_len=max_len, draft_len=draft_len, temperature=temperature,
                       top_p=top_p, batch_size=batch_size, seed=seed, timeout_s=timeout_s,
                       order=order, lossy_tasks=len(lossy),
                       skipped_too_long=len(selected) - len(usable)),
      "methods": {},
  }
  for method in methods:
    infilled = span_infill.infill_examples(
        params, cfg, examples, jax.random.key(seed), method=method, batch_size=batch_size,
        draft_len=draft_len, temperature=temperature, top_p=top_p, order=order)
    middles = ["" for _ in selected]
    for i, tokens in zip(usable, infilled.tokens):
      middles[i] = tokenizer.decode(posed[i].middle(tokens).tolist())
    programs = [task.program(middle) for task, middle in zip(selected, middles)]
    runnable = set(usable)
    sandbox_start = time.perf_counter()
    outcomes = sandbox.run_many([programs[i] for i in usable], timeout_s, workers=workers)
    sandbox_seconds = time.perf_counter() - sandbox_start
    by_index = dict(zip(usable, outcomes))
    nfe_by_index = dict(zip(usable, infilled.nfe.tolist()))
    records, statuses = [], collections.Counter()
    for i, task in enumerate(selected):
      outcome = by_index.get(i)
      status = outcome.status if i in runnable else "skipped"
      statuses[status] += 1
      records.append(dict(task_id=task.task_id, passed=bool(outcome and outcome.passed),
                          status=status, completion=middles[i], nfe=nfe_by_index.get(i, 0),
                          detail=outcome.detail if outcome else "middle longer than max_len"))
    passed = sum(r["passed"] for r in records)
    results["methods"][method] = dict(
        pass_at_1=passed / len(selected) if selected else float("nan"), passed=passed,
        total=len(selected), statuses=dict(statuses), sampling=infilled.stats,
        sandbox_seconds=sandbox_seconds, tasks=records)
  return results


COLUMNS: tuple[report.Column, ...] = (
    ("pass_at_1", "pass@1", lambda v: f"{100 * v:.2f}%"),
    ("passed", "passed", "d"),
    ("total", "tasks", "d"),
)

TITLE = ("HumanEval single-line infilling: {num_tasks} of {of_tasks} tasks ({subset}), 1 sample "
         "each, T={temperature:g}, context <= {max_len} tokens")  # of results["settings"]


def table(results: dict[str, Any]) -> str:
  """The printed table of `evaluate`'s results: pass@1 and the sampling cost per method; the
  title says LOSSY when the tokenizer changed tasks' code."""
  settings = results["settings"]
  title = TITLE.format(**settings)
  if settings["lossy_tasks"]:
    title += (f"; LOSSY tokenization: the tokenizer changed the code of {settings['lossy_tasks']} "
              "tasks (newlines, indentation), so pass@1 is not comparable")
  return report.methods_table(results, COLUMNS, title)
