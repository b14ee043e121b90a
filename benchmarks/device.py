"""One command that measures a device end to end: sampling speed, memory and training throughput.

python -m benchmarks.device                   # on a GPU or TPU host (its extra installed)
python -m benchmarks.device --dtype bfloat16  # bfloat16 rows only (half the sampling time)
python -m benchmarks.device --dry_run         # tiny settings, about a minute on a CPU (the tests)
python -m benchmarks.device --plan_only       # only the memory plan (compiled, never run)

1. Sampling: benchmarks/real_size.py's measurement at N = 512 (floors from a read-bandwidth and a
   matmul-rate probe of the same run; ms per forward against its floor, tokens/s, each speculative
   iteration against the sequential forward) of sequential decoding, ASSD and fused ASSD, in
   float32 and bfloat16, at batches 1, 8, 32 and 128, with each program's memory plan and the
   device's peak memory. The model is the trained run `--workdir`, else runs/default if it holds
   a checkpoint, else the XLNet-base shape with random weights.
2. Memory plan: the sampler programs at the XLNet-base shape, batch `--plan_batch` (128) and
   N = 512, compiled from shapes alone, one per (dtype, method), against `--plan_budget_gb` (16, a
   16 GB GPU). The loop state (cache, tokens, laws) is carried by the while loop and updated in
   place, so a plan near weights + one cache + activations means no buffer is held twice; the
   table gives the cache's bytes beside each plan.
3. Training: `--train_steps` steps of configs/xlnet_base.py (bfloat16 compute, batch 64 of 512
   tokens in 8 micro-batches) on random tokens (no data needed): tokens/s after the compiling
   first step, and MFU against the matmul peak measured in the same run (`train_lib.peak_flops`).

Writes benchmarks/results/<backend>/device.json and device.md (and the sampling block's
sampling.json/.md, the plan's memory_plan.json/.md) — `<backend>_dry_run/` for a dry run,
`--out_dir` to choose — and prints device.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import checkpoint, metrics, run_config, sampling, train_lib
from asarm_jax import model as model_lib
from asarm_jax.model import ModelConfig, init_params
from benchmarks import real_size
from benchmarks.sampling import _fmt, _git_state, _machine  # pylint: disable=protected-access

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
SAMPLING_BATCHES = (1, 8, 32, 128)
PLAN_METHODS = ("sequential", "assd", "assd_fused")
MASK_TOKEN_ID = 6  # XLNet's <mask>; random tokens avoid it
DEFAULT_RUN = "runs/default"  # sampled when --workdir is not given, if it holds a checkpoint


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one device run measures."""
  sampling: real_size.Settings
  plan_cfg: ModelConfig          # the memory plan's model shape
  plan_batch: int
  plan_seq_len: int
  plan_budget_bytes: int
  train_overrides: dict[str, Any]  # over configs/xlnet_base.py
  train_steps: int               # the first one compiles and is not timed


def full_plan(*, workdir: str | None, dtype: str | None, plan_batch: int, plan_budget_gb: float,
              train_steps: int) -> Plan:
  """The device run: `workdir`'s model; with no `workdir`, runs/default's if it holds a
  checkpoint, else the XLNet-base shape.

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
  """
  if workdir is None:
    trained = DEFAULT_RUN if checkpoint.latest_step(DEFAULT_RUN) is not None else None
  elif checkpoint.latest_step(workdir) is None:
    raise FileNotFoundError(f"--workdir {workdir} holds no checkpoint (omit --workdir to sample "
                            "runs/default if trained, else the XLNet-base shape)")
  else:
    trained = workdir
  return Plan(
      sampling=dataclasses.replace(real_size.FULL, batches=SAMPLING_BATCHES, workdir=trained,
                                   configurations=_configurations(dtype)),
      plan_cfg=real_size.XLNET_BASE, plan_batch=plan_batch, plan_seq_len=512,
      plan_budget_bytes=int(plan_budget_gb * 1e9), train_overrides={}, train_steps=train_steps)


def dry_run_plan(dtype: str | None = None) -> Plan:
  """Tiny settings of every part (seconds each on a CPU): what the tests run."""
  return Plan(
      sampling=dataclasses.replace(real_size.QUICK, configurations=_configurations(dtype)),
      plan_cfg=real_size.QUICK_MODEL, plan_batch=4, plan_seq_len=real_size.QUICK.seq_len,
      plan_budget_bytes=int(16e9), train_steps=3,
      train_overrides=dict(model=dict(d_model=64, n_layers=2, n_heads=2, d_head=32, d_inner=128,
                                      max_len=64, dropout=0.0),
                           data=dict(vocab_size=512), seq_len=64, batch_size=16,
                           grad_accum_steps=2))


def _configurations(dtype: str | None) -> tuple[tuple[str, str], ...]:
  """real_size.CONFIGURATIONS, or those of one dtype."""
  if dtype is None:
    return real_size.CONFIGURATIONS
  if dtype not in real_size.DTYPES:
    raise ValueError(f"--dtype must be one of {real_size.DTYPES}; got {dtype!r}")
  return tuple(pair for pair in real_size.CONFIGURATIONS if pair[0] == dtype)


# ----------------------------------------------------------------------------------------------------
# Memory plan.


def cache_bytes(cfg: ModelConfig, batch: int, seq_len: int) -> int:
  """Bytes of the sampler's keys and values: 2 x L x B x H x D x N in the compute dtype."""
  size = jnp.dtype(cfg.compute_dtype).itemsize
  return 2 * cfg.n_layers * batch * cfg.n_heads * cfg.d_head * seq_len * size


def planned_memory(cfg: ModelConfig, dtype: str, method: str, batch: int, seq_len: int,
                   draft_len: int) -> dict[str, Any]:
  """The compiled sampler's memory plan for one (dtype, method), from shapes alone."""
  cast_cfg, _ = model_lib.cast_for_inference(cfg, {}, dtype)
  abstract = jax.eval_shape(
      lambda: model_lib.cast_for_inference(cfg, init_params(cfg, jax.random.key(0)), dtype)[1])
  sampler = sampling.Sampler.create(cast_cfg, method=method, draft_len=draft_len)
  problem = real_size.make_problem(np.zeros((batch, seq_len), np.int32),
                                   1 - real_size.PROMPT_LEN / seq_len, batch, 0)
  posed = sampler.batch(problem.tokens, problem.ranks, problem.num_prompt, jax.random.key(0))
  start = time.perf_counter()
  memory = real_size.program_memory(sampler.compile(abstract, posed))
  weights = sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
  return dict(dtype=dtype, method=method, batch=batch, seq_len=seq_len,
              weight_bytes=int(weights), cache_bytes=cache_bytes(cast_cfg, batch, seq_len),
              compile_seconds=time.perf_counter() - start, **memory)


def run_memory_plan(plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
  """Every method in each dtype the plan samples in, at the plan's shape, against its budget."""
  rows = []
  for dtype in dict.fromkeys(d for d, _ in plan.sampling.configurations):
    for method in PLAN_METHODS:
      row = planned_memory(plan.plan_cfg, dtype, method, plan.plan_batch, plan.plan_seq_len,
                           plan.sampling.draft_len)
      row["fits"] = row["planned_bytes"] is not None and row["planned_bytes"] <= (
          plan.plan_budget_bytes)
      rows.append(row)
      log(f"memory plan {dtype} {method} batch {plan.plan_batch}: "
          f"{real_size.megabytes(row['planned_bytes'])} MB planned")
  return dict(shape=plan.plan_cfg.to_dict(), batch=plan.plan_batch, seq_len=plan.plan_seq_len,
              budget_bytes=plan.plan_budget_bytes, draft_len=plan.sampling.draft_len, rows=rows)


def memory_markdown(memory: dict[str, Any]) -> str:
  """The plan's table."""
  shape = memory["shape"]
  lines = [f"Memory plan: d_model {shape['d_model']}, {shape['n_layers']} layers, vocabulary "
           f"{shape['vocab_size']}, batch {memory['batch']}, N = {memory['seq_len']}, k = "
           f"{memory['draft_len']}; budget {memory['budget_bytes'] / 1e9:.0f} GB. Planned = "
           "arguments + outputs + temporaries - aliased (the compiled program's "
           "memory_analysis, on this backend).", *([memory["note"]] if "note" in memory else []),
           "",
           "| dtype | method | weights MB | cache MB | temporaries MB | planned MB | fits |",
           "|---|---|---|---|---|---|---|"]
  for row in memory["rows"]:
    lines.append(f"| {row['dtype']} | {row['method']} | {real_size.megabytes(row['weight_bytes'])} "
                 f"| {real_size.megabytes(row['cache_bytes'])} | "
                 f"{real_size.megabytes(row['temp_bytes'])} | "
                 f"{real_size.megabytes(row['planned_bytes'])} | "
                 f"{'yes' if row['fits'] else 'no'} |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Training throughput.


def _training_config(overrides: dict[str, Any]):
  """configs/xlnet_base.py with `overrides` (sections merged key by key)."""
  sys.path.insert(0, str(CONFIGS_DIR))
  try:
    import xlnet_base  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(CONFIGS_DIR))
  config = xlnet_base.get_config()
  for key, value in overrides.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def measure_training(plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
  """Tokens/s and MFU of the training step on random tokens."""
  config = _training_config(plan.train_overrides)
  run = run_config.parse(config)
  model_cfg = run.model_config(config.data.vocab_size, MASK_TOKEN_ID)
  trainer = train_lib.Trainer(run, model_cfg)
  train_lib.check_mesh(run, trainer.mesh)
  state = trainer.init(run.seed)
  rng = np.random.default_rng(0)
  tokens = rng.integers(MASK_TOKEN_ID + 1, model_cfg.vocab_size, (run.batch_size, run.seq_len))
  batch = trainer.global_batch({"tokens": tokens.astype(np.int32),
                                "valid": np.ones(tokens.shape, bool)}, run.batch_size)
  step_times = []
  for step in range(plan.train_steps):
    start = time.perf_counter()
    state, step_metrics = trainer.train_step(state, batch, trainer.step_key(state, step))
    jax.block_until_ready((state, step_metrics))
    step_times.append(time.perf_counter() - start)
    log(f"training step {step + 1}/{plan.train_steps}: {step_times[-1]:.2f} s")
  timed = step_times[1:]
  tokens_per_step = run.batch_size * run.seq_len
  tokens_per_second = tokens_per_step * len(timed) / sum(timed)
  flops_per_token = metrics.train_flops_per_token(model_cfg, run.seq_len)
  peak = train_lib.peak_flops(model_cfg)
  return dict(model=model_cfg.to_dict(), batch_size=run.batch_size, seq_len=run.seq_len,
              grad_accum_steps=run.grad_accum_steps, mesh_shape=list(trainer.mesh.devices.shape),
              steps=plan.train_steps, first_step_seconds=step_times[0], step_seconds=timed,
              tokens_per_second=tokens_per_second, flops_per_token=flops_per_token,
              peak_flops=peak, mfu=tokens_per_second * flops_per_token / peak,
              loss=float(step_metrics.compute()["loss"]))


# ----------------------------------------------------------------------------------------------------
# The run.


def out_dir_for(dry_run: bool) -> pathlib.Path:
  """benchmarks/results/<backend>[_dry_run]."""
  return real_size.RESULTS_DIR / f"{jax.default_backend()}{'_dry_run' if dry_run else ''}"


def _device_name() -> str:
  device = jax.local_devices()[0]
  return f"{jax.local_device_count()} x {device.device_kind} ({device.platform})"


def summary_markdown(results: dict[str, Any]) -> str:
  """Device, the sampling headline (batch x method, tokens/s), the memory plan and training."""
  rows = results["sampling"]["results"]
  lines = [f"Device: {results['device']}; jax {results['jax']}; {results['command']}; "
           f"{results['total_seconds']:.0f} s in all. Model sampled: "
           f"{results['sampling']['model']['description']}.", "",
           "| dtype | batch | method | ms/iter | × floor | × seq fwd | tok/s | planned MB | "
           "device peak MB |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['dtype']} | {row['batch']} | {row['method']} | "
                 f"{_fmt(row['ms_per_iteration'], '.1f')} | {_fmt(row['vs_floor'])} | "
                 f"{_fmt(row['vs_sequential_forward'])} | "
                 f"{_fmt(row['tokens_per_second'], '.1f')} | "
                 f"{real_size.megabytes(row['memory']['planned_bytes'])} | "
                 f"{real_size.megabytes(row['memory']['device_peak_bytes'])} |")
  training = results["training"]
  lines += ["", memory_markdown(results["memory_plan"]),
            f"Training ({training['model']['d_model']}-wide, {training['model']['n_layers']} "
            f"layers, batch {training['batch_size']} x {training['seq_len']} in "
            f"{training['grad_accum_steps']} micro-batches, mesh {training['mesh_shape']}): "
            f"{training['tokens_per_second']:,.0f} tokens/s, MFU "
            f"{training['mfu'] * 100:.1f}% of {training['peak_flops'] / 1e12:.2f} TFLOP/s "
            f"measured; first step (compiles) {training['first_step_seconds']:.1f} s."]
  return "\n".join(lines) + "\n"


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _write(out_dir: pathlib.Path, name: str, results: dict[str, Any], text: str) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
  (out_dir / f"{name}.md").write_text(text)


def run_plan_only(plan: Plan, out_dir: pathlib.Path, *, command: str,
                  log: Callable[[str], None] = _stderr) -> dict[str, Any]:
  """The memory plan alone: writes memory_plan.json/.md under `out_dir`."""
  memory = dict(created=_now(), command=command, device=_device_name(), jax=jax.__version__,
                **run_memory_plan(plan, log))
  if jax.default_backend() == "cpu":
    memory["note"] = ("XLA's CPU backend computes bfloat16 dots through float32 copies of their "
                      "operands, so its bfloat16 plans hold more temporaries than float32's; a "
                      "GPU or TPU compiles its own plan (run this command there).")
  _write(out_dir, "memory_plan", memory, memory_markdown(memory))
  return memory


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_device_benchmark(plan: Plan, out_dir: pathlib.Path, *, command: str,
                         log: Callable[[str], None] = _stderr) -> dict[str, Any]:
  """Sampling, memory plan and training; writes device.json/.md (and the parts) under `out_dir`.

  Raises:
    ValueError: settings that cannot be run (named).
  """
  start = time.perf_counter()
  sampling_results = real_size.run_benchmark(plan.sampling, out=out_dir / "sampling.json",
                                             command=command, log=log)
  memory = run_plan_only(plan, out_dir, command=command, log=log)
  training = measure_training(plan, log)
  results = dict(created=_now(), command=command, device=_device_name(), jax=jax.__version__,
                 backend=jax.default_backend(), machine=_machine(), git=_git_state(),
                 sampling=sampling_results, memory_plan=memory, training=training,
                 total_seconds=time.perf_counter() - start)
  _write(out_dir, "device", results, summary_markdown(results))
  log(f"wrote {out_dir}/device.json (+ .md) in {results['total_seconds']:.0f} s")
  return results


def main() -> None:
  """The command line (flags of `_define_flags`)."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  from asarm_jax.cli import common  # pylint: disable=import-outside-toplevel

  common.quiet_library_logs()
  values = flags.FLAGS
  plan = (dry_run_plan(values.dtype) if values.dry_run else
          full_plan(workdir=values.workdir, dtype=values.dtype, plan_batch=values.plan_batch,
                    plan_budget_gb=values.plan_budget_gb, train_steps=values.train_steps))
  out_dir = pathlib.Path(values.out_dir) if values.out_dir else out_dir_for(values.dry_run)
  command = " ".join(["python -m benchmarks.device", *sys.argv[1:]])
  if values.plan_only:
    print(memory_markdown(run_plan_only(plan, out_dir, command=command)))
  else:
    print(summary_markdown(run_device_benchmark(plan, out_dir, command=command)))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  from asarm_jax.cli import common  # pylint: disable=import-outside-toplevel

  flags.DEFINE_bool("dry_run", False, "Tiny settings of every part (a CPU smoke run).")
  flags.DEFINE_bool("plan_only", False, "Only the memory plan (compiled from shapes, not run).")
  flags.DEFINE_enum("dtype", None, list(real_size.DTYPES), "Sample in this dtype only.")
  flags.DEFINE_string("workdir", None, "A trained run to sample (default: runs/default if it "
                      "holds a checkpoint, else the XLNet-base shape with random weights).")
  flags.DEFINE_integer("plan_batch", 128, "Batch of the memory plan.")
  flags.DEFINE_float("plan_budget_gb", 16.0, "Device memory the plan must fit (GB).")
  flags.DEFINE_integer("train_steps", 12, "Training steps (the first compiles; at least 2).")
  flags.DEFINE_string("out_dir", None, "Output folder (default benchmarks/results/<backend>, "
                      "<backend>_dry_run for --dry_run).")
  common.register_positive_validators("plan_batch")
  flags.register_validator("plan_budget_gb", lambda v: v > 0, "must be > 0")
  flags.register_validator("train_steps", lambda v: v >= 2, "must be at least 2")


if __name__ == "__main__":
  from asarm_jax.cli import common  # pylint: disable=import-outside-toplevel

  _define_flags()
  common.run(main, module_name=__name__, summary=__doc__)
