"""One process of the two-process jax.distributed test (run by test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT WORKDIR OUT_JSON
Each process has 2 CPU devices; the mesh (data=2, fsdp=1, tensor=2) spans both processes.
"""
import json
import sys

import jax
import numpy as np

NUM_STEPS = 3
MESH_SHAPE = (2, 1, 2)


def main():
  process_id, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_default_matmul_precision", "highest")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  from jax.experimental import multihost_utils

  import train_helpers
  from asarm_jax import run_config
  from asarm_jax import sharding
  from asarm_jax import train_lib

  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  run = run_config.parse(train_helpers.tiny_config(mesh_shape=MESH_SHAPE))
  model_cfg = run.model_config(train_helpers.VOCAB, train_helpers.MASK_ID)
  trainer = train_lib.Trainer(run, model_cfg)
  shard, count, local = sharding.process_data_shard(trainer.mesh, 8)
  state = trainer.init(0)
  losses = []
  for step in range(NUM_STEPS):
    batch = train_helpers.synthetic_batch(8, 16, seed=step, padded_rows=2)
    rows = {k: v[shard * local:(shard + 1) * local] for k, v in batch.items()}
    state, metrics = trainer.train_step(state, trainer.global_batch(rows, 8),
                                        trainer.step_key(state, step))
    losses.append(float(metrics.compute()["loss"]))
  params = multihost_utils.process_allgather(state.params, tiled=True)

  # The full pipeline: tokenizer on process 0, sharded data, multi-process orbax checkpoints.
  config = train_helpers.tiny_config(mesh_shape=MESH_SHAPE, num_train_steps=2,
                                     checkpoint_every_steps=2)
  summary = train_lib.train_and_evaluate(config, workdir)
  if process_id == 0:
    np.savez(out + ".npz", **{jax.tree_util.keystr(path): np.asarray(leaf)
                              for path, leaf in jax.tree_util.tree_leaves_with_path(params)})
    with open(out, "w") as f:
      json.dump({"losses": losses, "shard": [shard, count, local],
                 "eval_loss": summary["eval/loss"]}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
