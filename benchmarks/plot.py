"""Plots of a `benchmarks.sampling` results JSON.

python -m benchmarks.plot benchmarks/results/sampling.json [out.png]

Three panels: tokens/s by method at the headline setting (N = headline, 90% hidden, infill order,
batch 1; cached, uncached and the HF-torch peer), NFE relative to sequential decoding by hidden
fraction and order, and tokens/s by batch size (infill order).
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

_HF = "hf_torch"


def _rows(results: dict[str, Any], order: str | None = "left_to_right", **where) -> list[dict[str, Any]]:
  """The model's rows matching `where`, in `order` (None: any order)."""
  return [r for r in results["results"] if all(r[k] == v for k, v in where.items())
          and order in (None, r["order"]) and r["model"] == results["model"]["label"]]


def _name(row: dict[str, Any]) -> str:
  return "HF-torch seq." if row["implementation"] == _HF else row["method"]


def plot(results: dict[str, Any], path: str | pathlib.Path) -> None:
  """Writes the three panels as one small PNG at `path`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  head = results["plan"]["headline_seq_len"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

  # 1. tokens/s at the headline setting.
  ax = axes[0]
  rows = _rows(results, seq_len=head, hidden_fraction=0.9, batch=1)
  methods = list(dict.fromkeys(_name(r) for r in sorted(
      rows, key=lambda r: (r["implementation"] != _HF, r["method"]))))
  settings = (("cache", lambda r: r["implementation"] != _HF and r["use_cache"], "tab:blue"),
              ("no cache", lambda r: r["implementation"] != _HF and not r["use_cache"],
               "tab:orange"),
              ("HF-torch", lambda r: r["implementation"] == _HF, "tab:gray"))
  width = 0.27
  for offset, (label, keep, color) in enumerate(settings):
    xs, ys = [], []
    for x, method in enumerate(methods):
      match = [r for r in rows if _name(r) == method and keep(r)]
      if match:
        xs.append(x + (offset - 1) * width)
        ys.append(match[0]["tokens_per_second"])
    if xs:
      ax.bar(xs, ys, width, label=label, color=color)
  ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
  ax.set_yscale("log")
  bottom, top = ax.get_ylim()
  ax.set_ylim(bottom, top * 8)  # room for the legend
  ax.set_ylabel("tokens / s")
  ax.set_title(f"N={head}, 90% hidden, batch 1", fontsize=10)
  ax.legend(fontsize=8, ncol=3, loc="upper left")

  # 2. NFE / sequential NFE by hidden fraction, batch 1 (NFE does not depend on the cache setting;
  # cached rows are preferred where both exist).
  ax = axes[1]
  ratios = {}
  for r in sorted(_rows(results, None, seq_len=head, batch=1, implementation="asarm_jax"),
                  key=lambda r: r["use_cache"]):
    if r["nfe_ratio_vs_sequential"] is not None:
      ratios[r["method"], (r["hidden_fraction"], r["order"])] = r["nfe_ratio_vs_sequential"]
  groups = sorted({g for _, g in ratios}, key=lambda g: (g[1] != "left_to_right", g))
  methods = sorted({m for m, _ in ratios})
  width = 0.8 / max(len(groups), 1)
  for offset, (fraction, order) in enumerate(groups):
    ys = [ratios.get((m, (fraction, order)), 0.0) for m in methods]
    ax.bar([x + (offset - (len(groups) - 1) / 2) * width for x in range(len(methods))], ys,
           width, label=f"{fraction:.0%} hidden, {order} order")
  ax.axhline(0.5, color="k", lw=0.8, ls="--", label="target 0.5")
  ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
  ax.set_ylabel("NFE / sequential NFE")
  ax.set_title(f"N={head}, batch 1", fontsize=10)
  ax.legend(fontsize=8)

  # 3. tokens/s by batch size.
  ax = axes[2]
  rows = _rows(results, seq_len=head, hidden_fraction=0.9)
  lines = {}
  for r in rows:
    key = _name(r) + ("" if r["implementation"] == _HF or r["use_cache"] else " (no cache)")
    lines.setdefault(key, []).append((r["batch"], r["tokens_per_second"]))
  for key, points in sorted(lines.items()):
    if len(points) > 1 or key.startswith("HF"):
      points.sort()
      ax.plot(*zip(*points), marker="o", label=key)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("batch")
  ax.set_ylabel("tokens / s")
  ax.set_title(f"N={head}, 90% hidden", fontsize=10)
  ax.legend(fontsize=8)

  fig.suptitle(results["model"]["description"][:120], fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


if __name__ == "__main__":
  if len(sys.argv) not in (2, 3):
    sys.exit("usage: python -m benchmarks.plot RESULTS.json [OUT.png]")
  source = pathlib.Path(sys.argv[1])
  plot(json.loads(source.read_text()), sys.argv[2] if len(sys.argv) == 3 else
       source.with_suffix(".png"))
