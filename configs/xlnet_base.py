"""XLNet-base sizes with the paper's training recipe (arXiv 2504.20456).

12 layers, d_model 768, 12 heads of 64, d_inner 3072, dropout 0.1, sequences of 512, AdamW with
linear warm-up then linear decay, gradient clipping 1.0, an effective batch of 64 (8 x 8 accumulation
steps), and the paper's code-infilling masking schedule 0.01 -> [0.05, 0.25] over 2,500 steps.

The paper fine-tunes a pretrained XLNet with lr 1e-5; this config trains from scratch, so its peak
learning rate is higher (configs/xlnet_base_finetune.py is the fine-tuning recipe, from a Hugging
Face XLNet directory). Needs an accelerator.

python train.py --config configs/xlnet_base.py --workdir runs/xlnet_base
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import default  # noqa: E402  (configs/default.py)


def get_config():
  config = default.get_config()
  config.model.update(d_model=768, n_layers=12, n_heads=12, d_head=64, d_inner=3072,
                      ff_activation="gelu", dropout=0.1, max_len=512, dtype="bfloat16")
  config.data.update(vocab_size=32000, tokenizer_max_chars=200_000_000)
  config.objective.update(min_rate=0.05, max_rate=0.25, start_rate=0.01, warmup_steps=2500)
  config.optimizer.update(learning_rate=1e-4, lr_scaling_batch=64, warmup_steps=2500,
                          decay="linear", end_lr_factor=0.0, weight_decay=0.01, b1=0.9,
                          b2=0.999, eps=1e-6, grad_clip_norm=1.0)
  config.update(seq_len=512, batch_size=64, grad_accum_steps=8, num_train_steps=100_000,
                log_every_steps=100, eval_every_steps=2000, num_eval_batches=50, eval_batch_size=64,
                checkpoint_every_steps=2000, keep_checkpoints=3, measure_peak_flops=True)
  return config
