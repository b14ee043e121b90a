"""A larger model for a TPU pod slice (or a multi-GPU host): fsdp x tensor mesh, bf16, a TFDS corpus.

24 layers, d_model 1024, 16 heads, d_inner 4096 (XLNet-large sizes), sequences of 1024, a global
batch of 512 split over data x fsdp, parameters and optimizer state sharded over fsdp and tensor.
The text corpus is C4 read from a prepared TFDS array_record directory (nothing is downloaded):

  tfds build c4/en --file_format=array_record --data_dir=gs://BUCKET/tfds
  python train.py --config configs/tpu_pod.py --workdir gs://BUCKET/runs/pod \
      --config.data.data_dir=gs://BUCKET/tfds

Every host runs the same command; jax.distributed initializes from the TPU environment.
Masking follows the paper's general-text setting, 0.15 -> [0.85, 0.99] (arXiv 2504.20456).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import default  # noqa: E402  (configs/default.py)


def get_config():
  config = default.get_config()
  config.distributed = "always"
  config.model.update(d_model=1024, n_layers=24, n_heads=16, d_head=64, d_inner=4096,
                      dropout=0.1, max_len=1024, dtype="bfloat16", param_dtype="float32")
  config.data.update(source="tfds:c4/en", train_split="train", eval_split="validation",
                     text_key="text", vocab_size=32000, tokenizer_max_chars=500_000_000,
                     read_threads=16)
  config.objective.update(min_rate=0.85, max_rate=0.99, start_rate=0.15, warmup_steps=5000)
  config.optimizer.update(learning_rate=3e-4, lr_scaling_batch=512, warmup_steps=5000,
                          decay="cosine", end_lr_factor=0.1, weight_decay=0.01, b2=0.98,
                          eps=1e-6, grad_clip_norm=1.0)
  config.update(seq_len=1024, batch_size=512, grad_accum_steps=1, num_train_steps=200_000,
                mesh_shape=(1, -1, 4),  # fsdp fills the slice, 4-way tensor parallelism
                log_every_steps=100, eval_every_steps=5000, num_eval_batches=20,
                eval_batch_size=512, checkpoint_every_steps=1000, keep_checkpoints=3,
                progress_bar=False)
  return config
