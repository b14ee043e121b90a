"""Shared pieces of the Hugging Face XLNet tests (test_convert_hf.py, test_hf_xlnet.py): small
random XLNetLMHeadModels, random problems, and the logit parity check against ours."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from asarm_jax import ASARM, init_params, masks

BATCH, LENGTH, VOCAB, MASK_ID = 2, 9, 50, 49
TOLERANCE = 1e-4


def random_hf_model(seed=0, **overrides):
  """A small random XLNetLMHeadModel in eval mode, weights scaled up so that logits are O(1)."""
  settings = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0)
  settings.update(overrides)
  model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**settings)).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      param.copy_(1.0 + 0.2 * noise if name.endswith("layer_norm.weight") else 0.3 * noise)
  return model


def random_problem(seed, num_prompt):
  """Random tokens [B, N], a random prompt set of `num_prompt` positions and a random order."""
  k_tok, k_prompt, k_order = jax.random.split(jax.random.key(seed), 3)
  tokens = jax.random.randint(k_tok, (BATCH, LENGTH), 0, VOCAB)
  prompt_positions = jax.vmap(lambda k: jax.random.permutation(k, LENGTH)[:num_prompt])(
      jax.random.split(k_prompt, BATCH))
  is_prompt = jnp.zeros((BATCH, LENGTH), bool).at[jnp.arange(BATCH)[:, None],
                                                  prompt_positions].set(True)
  return tokens, masks.random_ranks(k_order, is_prompt)


def hf_logits(model, tokens, query_mask):
  """HF query-stream logits [B, N, V] with perm_mask = not query_mask, one target per position."""
  perm_mask = torch.from_numpy(1.0 - np.asarray(query_mask, np.float32))  # [B, N, N]
  target_mapping = torch.eye(LENGTH).expand(BATCH, LENGTH, LENGTH)  # [B, N, N]
  with torch.no_grad():
    out = model(torch.from_numpy(np.asarray(tokens, np.int64)), perm_mask=perm_mask,
                target_mapping=target_mapping, token_type_ids=None, use_mems=False)
  return out.logits.numpy()


@functools.lru_cache(maxsize=None)
def _jitted_apply(cfg):
  return jax.jit(ASARM(cfg).apply)


def our_logits(cfg, params, tokens, ranks, num_prompt):
  """Our density-mask logits [B, N, V], numpy."""
  return np.asarray(_jitted_apply(cfg)({"params": params}, tokens, ranks, num_prompt))


def zero_params(cfg):
  """Parameters of the right tree and shapes, without running the initialisers."""
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)


def random_params(cfg, seed, scale=0.3):
  """Normal(0.1, scale) parameters: larger than init_params' so that logits are O(1)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: jnp.asarray(0.1 + scale * rng.standard_normal(leaf.shape),
                                               leaf.dtype), zero_params(cfg))


def max_logit_diff(cfg, params, model, seed, num_prompt, skip_rank=None):
  """max |our logits - HF logits| on `random_problem(seed, num_prompt)` (positions of rank
  `skip_rank` left out)."""
  tokens, ranks = random_problem(seed, num_prompt)
  _, query_mask = masks.density_masks(ranks, num_prompt)
  diff = np.abs(our_logits(cfg, params, tokens, ranks, num_prompt)
                - hf_logits(model, tokens, query_mask))  # [B, N, V]
  if skip_rank is not None:
    diff = np.where(np.asarray(ranks == skip_rank)[:, :, None], 0.0, diff)
  return float(diff.max())
