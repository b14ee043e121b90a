"""One process of the two-process jax.distributed test (run by test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT WORKDIR OUT_JSON
Each process has 2 CPU devices; the mesh (data=2, fsdp=1, tensor=2) spans both processes. Writes
OUT_JSON (losses, data shard, eval loss), OUT_JSON.npz (the gathered params of the synthetic run),
OUT_JSON.state/ (that run's state as an orbax checkpoint) and a full training run in WORKDIR.
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
  from asarm_jax import checkpoint
  from asarm_jax import sharding
  from asarm_jax import train_lib

  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  trainer = train_helpers.make_trainer(MESH_SHAPE, jax.devices())
  shard, count, local = sharding.process_data_shard(trainer.mesh, 8)
  state, losses = train_helpers.train_steps(trainer, trainer.init(0), range(NUM_STEPS),
                                            rows=slice(shard * local, (shard + 1) * local))
  params = multihost_utils.process_allgather(state.params, tiled=True)
  # The state as both processes hold it, for the test to restore in one process.
  saver = checkpoint.Checkpointer(out + ".state", async_save=False)
  saver.save(NUM_STEPS, state, force=True)
  saver.close()

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
