"""What every evaluation reports: sampling statistics, a printed table, and a JSON file.

`SamplingStats` accumulates the cost of the sampler calls of one method (forward passes, ASSD
rounds, kept drafts, generated tokens, the batch's loop iterations, run and compile seconds) and
derives the per-token numbers that the paper reports (NFE, tokens per round, tokens per second)
and the share of a ragged batch's work spent idle. Every task result carries one
per method.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

_UNDRAFTED = ("sequential", "oracle")  # methods without drafts (the oracle samples nothing)


def _ratio(numerator: float, denominator: float) -> float:
  return float(numerator) / denominator if denominator else float("nan")


def _ratio_of(numerator: str, denominator: str, doc: str) -> property:
  """A read-only property: the field `numerator` over the field `denominator` (NaN over 0)."""
  return property(lambda self: _ratio(getattr(self, numerator), getattr(self, denominator)),
                  doc=doc)


@dataclasses.dataclass
class SamplingStats:
  """Cost of sampling `rows` sequences with one method (sums over rows; seconds over calls).

  Attributes:
    method: 'sequential', 'assd', 'assd_fused' or 'oracle' (the reference itself: no sampling,
      all zeros).
    draft_len: ASSD's k (1 for sequential; see `drafts_per_round`).
    rows: sequences sampled (padding rows of a batch excluded).
    tokens: hidden tokens generated.
    nfe: forward passes (`SampleOutput.nfe` summed over rows).
    rounds: sampler iterations (ASSD rounds; == nfe for sequential).
    accepted: ASSD drafts kept, each round's first included.
    row_iterations: loop iterations times rows of every call, padding rows included: a batch
      loops until its slowest row is done, so a row that finishes early, or a padding row, idles
      (`idle_fraction`).
    seconds: wall-clock run time of the sampler calls, compilation excluded.
    compile_seconds: time spent compiling (0 for cached compilations).
  """
  method: str
  draft_len: int = 1
  _: dataclasses.KW_ONLY  # the counts below are named, never positional
  rows: int = 0
  tokens: int = 0
  nfe: int = 0
  rounds: int = 0
  accepted: int = 0
  # The counts above that `add_call` sums from the SampleOutput fields of the same names.
  OUTPUT_COUNTS: ClassVar[tuple[str, ...]] = ("nfe", "rounds", "accepted")
  row_iterations: int = 0
  seconds: float = 0.0
  compile_seconds: float = 0.0

  def add_call(self, output: Any, generated: np.ndarray, keep: np.ndarray, seconds: float,
               compile_seconds: float) -> None:
    """Adds one batched `sampling.sample` call.

    Args:
      output: its SampleOutput (nfe, rounds, accepted: [B]; its row_iterations()).
      generated: int [B], hidden tokens of each row.
      keep: bool [B], False on padding rows (their work is not counted, their time is).
      seconds, compile_seconds: from `sampling.timed_sample`.
    """
    keep = np.asarray(keep, bool)
    self.rows += int(keep.sum())
    self.tokens += int(np.asarray(generated)[keep].sum())
    for name in self.OUTPUT_COUNTS:
      setattr(self, name, getattr(self, name) + int(np.asarray(getattr(output, name))[keep].sum()))
    self.row_iterations += output.row_iterations()
    self.seconds += float(seconds)
    self.compile_seconds += float(compile_seconds)

  def merge(self, other: SamplingStats) -> SamplingStats:
    """The sums of both (of the same method and k)."""
    if (other.method, other.draft_len) != (self.method, self.draft_len):
      raise ValueError(f"cannot merge stats of {other.method} (k={other.draft_len}) into "
                       f"{self.method} (k={self.draft_len})")
    return dataclasses.replace(self, **{
        field.name: getattr(self, field.name) + getattr(other, field.name)
        for field in dataclasses.fields(self) if field.name not in ("method", "draft_len")})

  nfe_per_row = _ratio_of("nfe", "rows", "Forward passes per sequence.")
  tokens_per_nfe = _ratio_of("tokens", "nfe", "Tokens generated per forward pass.")
  tokens_per_round = _ratio_of("tokens", "rounds", "Tokens generated per sampler iteration.")
  tokens_per_second = _ratio_of("tokens", "seconds", "Tokens generated per second of run time.")

  @property
  def idle_fraction(self) -> float:
    """The share of row-iterations not spent on a counted row's own rounds: rows already
    finished while their batch loops on, and padding rows (NaN before any call)."""
    return 1.0 - _ratio(self.rounds, self.row_iterations)

  def to_json(self) -> dict[str, Any]:
    """The fields and the ratios above."""
    return {**dataclasses.asdict(self), **{name: getattr(self, name) for name in _RATIOS}}


_RATIOS = ("nfe_per_row", "tokens_per_nfe", "tokens_per_round", "tokens_per_second",
           "idle_fraction")


def drafts_per_round(method: str, draft_len: int) -> int:
  """ASSD's k for the speculative samplers ('assd', 'assd_fused'); 1 for the others."""
  return 1 if method in _UNDRAFTED else draft_len


def method_label(method: str, draft_len: int) -> str:
  """'sequential', 'assd k=5', 'assd_fused k=5' or 'oracle'."""
  return method if method in _UNDRAFTED else f"{method} k={draft_len}"


# ------------------------------------------------------------------------------------------------
# Tables.

Column = tuple[str, str, Callable[[Any], str] | str]  # (key, header, format spec or function)


def _cell(value: Any, spec: Callable[[Any], str] | str) -> str:
  if value is None:
    return "-"
  if callable(spec):
    return spec(value)
  if isinstance(value, float) and math.isnan(value):
    return "n/a"
  return format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
                 title: str | None = None) -> str:
  """A plain-text table: one line per row; text columns (spec 's') left-aligned, numbers right."""
  header = [name for _, name, _ in columns]
  body = [[_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
  widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(columns))]

  left = [i == 0 or spec == "s" for i, (_, _, spec) in enumerate(columns)]

  def line(cells: Sequence[str]) -> str:
    return "  ".join(cell.ljust(w) if left[i] else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

  lines = [title] if title else []
  lines += [line(header), "  ".join("-" * w for w in widths)]
  lines += [line(cells) for cells in body]
  return "\n".join(lines)


SAMPLING_COLUMNS: tuple[Column, ...] = (
    ("nfe_per_row", "NFE/seq", ".1f"),
    ("tokens_per_round", "tok/round", ".2f"),
    ("tokens_per_second", "tok/s", ".1f"),
    ("idle_fraction", "idle", ".0%"),
    ("seconds", "run s", ".1f"),
    ("compile_seconds", "compile s", ".1f"),
)


def sampling_row(stats: SamplingStats) -> dict[str, Any]:
  """The table cells of `SAMPLING_COLUMNS` (None for the oracle, which samples nothing)."""
  if stats.method == "oracle":
    return {}
  return stats.to_json()


# ------------------------------------------------------------------------------------------------
# JSON.


def _jsonable(value: Any) -> Any:
  if isinstance(value, SamplingStats):
    return value.to_json()
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN / inf
  return value


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> None:
  """Writes `results` (SamplingStats and numpy values converted; NaN becomes null)."""
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(_jsonable(results), f, indent=2, sort_keys=False)
    f.write("\n")


def methods_table(results: dict[str, Any], columns: Sequence[Column], title: str) -> str:
  """The table of a task's result: one row per method of `results["methods"]`, its label, the
  task's `columns` of its values, then its sampling columns."""
  rows = []
  for method, values in results["methods"].items():
    stats = values["sampling"]
    rows.append({**values, **sampling_row(stats), "label": method_label(method, stats.draft_len)})
  return format_table(rows, (("label", "method", "s"), *columns, *SAMPLING_COLUMNS), title)
