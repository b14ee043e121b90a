"""Fine-tuning Hugging Face's xlnet-base-cased with the any-order objective: the paper's recipe.

python train.py --config configs/xlnet_base_finetune.py --config.init_from=xlnet-base-cased/ \
    --workdir runs/xlnet_base_ft [--config.data.source=files:my_code/ ...]
python train.py --config configs/xlnet_base_finetune.py:code ...   # the code-infilling rates

`init_from` must be an XLNet `save_pretrained` directory (config.json, weights, tokenizer.json or
spiece.model). The run starts from its weights and keeps its tokenizer (nothing is trained for
the tokenizer: the data.vocab_size / tokenizer_* keys are unused). The architecture is the
checkpoint's: the model section below repeats xlnet-base-cased's config.json, and a checkpoint whose
config.json disagrees on d_model, n_layers, n_heads, d_head, d_inner, ff_activation or
layer_norm_eps is refused before any work, naming the keys (for xlnet-large-cased pass
--config.model.d_model=1024 --config.model.n_layers=24 --config.model.n_heads=16
--config.model.d_inner=4096). dropout, max_len and the dtypes are this config's choices.

The numbers. From the paper (arXiv 2504.20456) and its code:
  optimizer     AdamW, peak learning rate 1e-5, linear warm-up then linear decay to 0, global
                gradient-norm clipping at 1.0.
  seq_len       512, packed documents.
  masking       one rate per example, stratified over the batch (example s of B draws from bin s
                of the range), the range warming up linearly from a start rate. The paper's rates
                by domain, chosen with the config argument:
                  text  (default)  0.15 -> [0.85, 0.99]   general text (its WikiText numbers)
                  story            0.15 -> [0.60, 0.75]   story infilling
                  code             0.01 -> [0.05, 0.25]   code infilling
  masking warm-up  the paper uses 2,500 to 5,000 steps; here 2,500 for code (as its code
                infilling setting) and 5,000 for text and story (our pick within its range).
  batch         the paper's effective batches are 32 to 256 sequences; here 64 (8 accumulation
                steps of 8). The sizes, batch, logging and checkpoint cadence are
                configs/xlnet_base.py's, which this config starts from.
Our choices, not given by the paper: 1,000 learning-rate warm-up steps, 20,000 steps in all
(64 x 512 x 20,000 = 655M tokens), weight decay 0.01 on matrices and
embeddings, Adam b2 0.999 and eps 1e-8 (torch's AdamW defaults), dropout 0.1 (XLNet's own), bfloat16
compute on float32 master weights, held-out loss also at fixed masking rates 0.5 and 0.95 (the
paper's WikiText evaluation hides 95%).

Data: any source of train.py (`data.source`: 'stdlib', 'tfds:<name>' prepared in data.data_dir,
or 'files:<dir>' for a folder of text or code files). XLNet's tokenizer folds whitespace runs and
newlines into single spaces, so code is trained on without its layout.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xlnet_base  # noqa: E402  (configs/xlnet_base.py: the sizes, batch and schedule shape)

# domain -> (start rate, min rate, max rate, masking warm-up steps)
MASKING = {
    "text": (0.15, 0.85, 0.99, 5000),
    "story": (0.15, 0.60, 0.75, 5000),
    "code": (0.01, 0.05, 0.25, 2500),
}


def get_config(domain: str = "text"):
  if domain not in MASKING:
    raise ValueError(f"unknown domain {domain!r} (configs/xlnet_base_finetune.py:<domain>); "
                     f"expected one of {sorted(MASKING)}")
  start_rate, min_rate, max_rate, masking_warmup = MASKING[domain]
  config = xlnet_base.get_config()  # xlnet-base-cased's sizes, seq 512, batch 64 = 8 x 8
  config.objective.update(min_rate=min_rate, max_rate=max_rate, start_rate=start_rate,
                          warmup_steps=masking_warmup)
  config.optimizer.update(learning_rate=1e-5, lr_scaling_batch=0, warmup_steps=1000, eps=1e-8)
  config.num_train_steps = 20_000
  config.eval_rates = (0.5, 0.95)
  return config
