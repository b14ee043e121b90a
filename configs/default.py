"""Default config: a tiny AS-ARM on the Python standard library, trained on CPU in minutes.

python train.py --config configs/default.py --workdir runs/default
Override any field from the command line, e.g. --config.num_train_steps=100.

Sized for a 2-core CPU: 4 layers of d_model 128 (1.4M parameters with the 4096-piece tokenizer),
500 steps of 32 x 128 tokens (2M tokens, about a fifth of the corpus). Measured on 2 cores: 5,700
to 6,500 tokens/s while the machine is otherwise idle (which puts an idle run at about 6 minutes),
8.6 minutes wall-clock with another job taking a core for most of the run; held-out masked-token
loss 3.86 nats against a held-out unigram entropy of 5.91 nats. A d_model 256 model (5.5M
parameters, 8192 pieces) is about three times slower per token and was at 4.63 nats (unigram 5.70)
after 600 steps of 16 x 128.

Masking-rate range, measured with this config at step 500 (held-out loss in nats by masking rate;
unigram entropy 5.91):
                                      rate 0.15   rate 0.5   rate 0.9
  [0.05, 0.95] (the default)            3.65        3.81       4.13
  0.01 -> [0.05, 0.25] (paper, code)    4.02        4.30       4.80
The wide range wins everywhere, even at low rates: it hides about half of every sequence, so each
step trains on three times as many targets. The sampler benchmarks hide 50% and 90%.

Training order, measured with this config at step 500 (`python -m benchmarks.orders --draft_len
3,5,8`, benchmarks/results/orders.md): held-out NLL at 90% hidden (nats/token) by decoding order,
and fused ASSD tokens/s at its best k against cached sequential decoding (N = 512, 90% hidden,
batch 1):
  trained with          left_to_right    random         spread
  left_to_right         4.128  0.58x     4.812  1.04x   4.873  0.93x
  random                4.390  0.62x     4.432  1.43x   4.443  1.52x
  mixture (p = 0.5)     4.239  0.57x     4.472  1.24x   4.503  1.51x
(speeds from one run; an earlier run gave the random-trained row 0.99x, 1.78x, 1.77x.) Left to
right stays the default: its NLL is the best by 6% or more; the random-trained model's fastest
order (spread, 1.52x) costs 7.6% in NLL against it, outside the 3% the main job allows.
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.distributed = "auto"  # 'auto' | 'always' | 'never' (jax.distributed.initialize)

  config.model = ml_collections.ConfigDict(dict(
      d_model=128,
      n_layers=4,
      n_heads=4,
      d_head=32,
      d_inner=512,
      ff_activation="gelu",
      layer_norm_eps=1e-12,
      dropout=0.0,
      max_len=512,
      initializer_range=0.02,
      dtype="float32",        # 'bfloat16' computes in bf16 on float32 master weights
      param_dtype="float32",
  ))

  config.data = ml_collections.ConfigDict(dict(
      # or 'tfds:<name>' (prepared as array_record; nothing is downloaded), or 'files:<dir>' (a
      # folder of text or code files, split by path hash: asarm_jax/data/files_source.py)
      source="stdlib",
      train_split="train",
      eval_split="validation",
      text_key="text",
      data_dir=config_dict.placeholder(str),
      file_glob="**/*",  # files: which files (hidden paths and binary files are left out)
      max_bytes=1_000_000,  # files: files larger than this are left out
      max_documents=config_dict.placeholder(int),
      tokenizer_path=config_dict.placeholder(str),  # None: train a tokenizer at the start
      vocab_size=4096,
      tokenizer_max_chars=10_000_000,
      read_threads=2,
  ))

  # The paper's joint objective. Its code-infill range is 0.01 -> [0.05, 0.25]; the default covers
  # nearly the whole range (measured better at every rate, see the module docstring).
  config.objective = ml_collections.ConfigDict(dict(
      min_rate=0.05,
      max_rate=0.95,
      start_rate=config_dict.placeholder(float),  # None: no masking-rate warm-up
      warmup_steps=0,
      stratified=True,
      hidden_order="left_to_right",  # or 'random', 'spread', 'mixture' (masks.ORDERS)
      mixture_left_to_right=0.5,  # 'mixture': P(left to right), else mixture_other
      mixture_other="random",
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1.5e-3,
      lr_scaling_batch=0,  # > 0: lr *= batch_size / lr_scaling_batch
      warmup_steps=100,
      decay="linear",  # 'linear' | 'cosine' | 'constant'
      end_lr_factor=0.1,
      weight_decay=0.01,
      b1=0.9,
      b2=0.98,
      eps=1e-8,
      grad_clip_norm=1.0,
  ))

  config.seq_len = 128
  config.batch_size = 32  # global, per optimizer step
  config.grad_accum_steps = 1
  config.num_train_steps = 500

  config.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 fills with the remaining devices
  config.logical_axis_rules = config_dict.placeholder(tuple)  # None: sharding.DEFAULT_RULES

  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.num_eval_batches = 8
  config.eval_batch_size = 32
  config.eval_rates = (0.5, 0.9)  # fixed masking rates evaluated besides the training range

  # Fine-tuning: the parameters and tokenizer that start this run (the optimizer starts fresh), from
  # one of our run directories (its latest checkpoint; its model config must equal config.model)
  # or a Hugging Face XLNet directory (its weights and XLNet's tokenizer; its config.json must agree
  # with config.model on the architecture: train_lib.HF_ARCHITECTURE).
  config.init_from = config_dict.placeholder(str)

  config.checkpoint_every_steps = 250
  config.keep_checkpoints = 2
  config.async_checkpointing = True
  config.progress_bar = True
  config.measure_peak_flops = True
  # A step whose loss, gradient or update is NaN / inf never changes the parameters. 'skip': the
  # step counter and data still advance and train/skipped_updates counts it; 'stop': raise at the
  # next log or checkpoint boundary, naming the step, before that state is checkpointed.
  config.nonfinite_policy = "skip"
  return config
