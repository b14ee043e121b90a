"""Building config dataclasses from plain dicts (a `run.json`, an `ml_collections` section)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def reject_unknown_keys(cls: type, values: Mapping[str, Any], *, owner: str,
                        prefix: str = "") -> None:
  """Raises ValueError naming the keys of `values` that are not fields of the dataclass `cls`.

  Args:
    cls: the dataclass.
    values: its fields by name.
    owner: what the error calls the keys' owner ('ModelConfig', 'config', ...).
    prefix: prepended to each unknown key in the error (e.g. 'data.' for a config section).
  """
  known = {field.name for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown {owner} keys {[prefix + key for key in unknown]}; known keys are "
                     f"{sorted(known)}")


def from_dict(cls: type[T], values: Mapping[str, Any], *, owner: str, prefix: str = "") -> T:
  """`cls(**values)` for a dataclass `cls`, after `reject_unknown_keys` (same arguments)."""
  reject_unknown_keys(cls, values, owner=owner, prefix=prefix)
  return cls(**values)
