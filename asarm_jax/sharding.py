"""Device mesh, logical-axis rules, shardings and multi-host plumbing.

The model names its axes logically: parameters carry ('vocab', 'embed', 'heads', 'kv', 'mlp') through
`nn.with_logical_partitioning`, activations ('batch', 'length', 'embed') through
`nn.with_logical_constraint`. `DEFAULT_RULES` maps them onto a mesh with axes ('data', 'fsdp',
'tensor'):
- the batch is split over data x fsdp;
- parameters (and optimizer moments) are split over fsdp along 'embed' and over tensor along 'heads',
  'mlp' and 'vocab'.
Rules are tried in order and a mesh axis is used at most once per array (flax's semantics), so the
activations' 'embed' stays unsplit once 'batch' has taken fsdp. A dimension that a mesh axis does not
divide evenly is replicated instead of split. Changing parallelism is a config change (`mesh_shape`,
`logical_axis_rules`), never a code change.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Fills one -1 entry of (data, fsdp, tensor) so that the product is `num_devices`.

  Raises:
    ValueError: wrong length, more than one -1, non-positive sizes, or a product that does not
      match the number of devices.
  """
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape must have {len(MESH_AXES)} entries {MESH_AXES}; got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {shape}: sizes must be positive, at most one may be -1 (fill)")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh_shape {shape} cannot fill {num_devices} devices: {num_devices} is "
                       f"not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh_shape {shape} has {math.prod(shape)} devices but {num_devices} are "
                     "available")
  return shape


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
  """A Mesh over (data, fsdp, tensor); `mesh_shape` may contain one -1 (fill).

  Devices are laid out in `jax.devices()` order (process-major), so every process owns a contiguous
  block of the data axis whenever data is a multiple of the process count.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Logical-axis rules from a config value (None: DEFAULT_RULES), as hashable tuples."""
  if rules is None:
    return DEFAULT_RULES
  result = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"a logical axis rule is (logical_name, mesh_axes); got {rule!r}")
    name, target = rule
    target = tuple(target) if isinstance(target, (list, tuple)) else target
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"rule {rule!r} names mesh axis {axis!r}; mesh axes are {MESH_AXES}")
    result.append((str(name), target))
  return tuple(result)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of every dimension they do not divide evenly."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for entry, size in zip(entries, shape):
    axes = entry if isinstance(entry, tuple) else (entry,)
    kept = tuple(a for a in axes if a is not None)
    if kept and size % math.prod(mesh.shape[a] for a in kept):
      kept = ()
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else kept)
  return PartitionSpec(*fitted)


def logical_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs and a matching tree of shaped leaves."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit(spec, leaf.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over data x fsdp, everything else replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  """Raises ValueError unless the data x fsdp size divides `batch_size`."""
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if batch_size % shards:
    raise ValueError(f"{what} = {batch_size} is not divisible by the mesh's data x fsdp size "
                     f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {shards}")


def process_data_shard(mesh: Mesh, global_batch_size: int) -> tuple[int, int, int]:
  """Which slice of every global batch this process feeds.

  Returns:
    (shard_index, shard_count, local_batch_size): this process holds rows
    [shard_index * local_batch_size, (shard_index + 1) * local_batch_size) of each global batch;
    processes that hold the same rows (a replicated axis spanning hosts) get the same shard index,
    so their data pipelines must read the same documents.
  """
  sharding = batch_sharding(mesh)
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
    rows.update(range(*index[0].indices(global_batch_size)))
  start, stop = min(rows), max(rows) + 1
  if len(rows) != stop - start or global_batch_size % (stop - start):
    raise ValueError(f"this process's devices hold rows {sorted(rows)} of the batch, not one "
                     "contiguous equal share: reorder the mesh devices or change mesh_shape")
  local = stop - start
  return start // local, global_batch_size // local, local


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 global_batch_size: int) -> dict[str, jax.Array]:
  """Assembles this process's rows [b, ...] (see `process_data_shard`) into global arrays [B, ...]
  sharded over data x fsdp."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(
              sharding, value, (global_batch_size,) + value.shape[1:])
          for key, value in local_batch.items()}


def maybe_initialize_distributed(mode: str | bool | None) -> bool:
  """Calls `jax.distributed.initialize` when asked; must run before anything touches devices.

  Args:
    mode: 'auto' initializes when the environment names a coordinator (JAX_COORDINATOR_ADDRESS,
      or a cluster jax detects, such as TPU pods or SLURM, when JAX_NUM_PROCESSES is set); True or
      'always' always initializes (arguments from the environment / cluster auto-detection);
      False, None or 'never' never does.

  Returns:
    True when this call initialized jax.distributed.
  """
  if mode in (False, None, "never"):
    return False
  if mode == "auto" and not (os.environ.get("JAX_COORDINATOR_ADDRESS")
                             or os.environ.get("JAX_NUM_PROCESSES")):
    return False
  if mode not in (True, "always", "auto"):
    raise ValueError(f"distributed must be 'auto', 'always' or 'never'; got {mode!r}")
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  return True
