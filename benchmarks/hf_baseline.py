"""The peer baseline: sequential any-order decoding with Hugging Face's XLNetLMHeadModel in torch.

This is what a user without asarm_jax would run: the same weights, exported with
`convert_hf.export_hf_xlnet`, decoded one token per forward pass in rank order. At the step that
decides rank n, the model sees

  perm_mask[b, i, j] = 1 - query_mask[b, i, j]   (`masks.density_masks`: i may see j iff
                                                  rank[j] < rank[i], or both are prompt positions)
  target_mapping[b, 0, :] = one-hot of the position of rank n,

so its query-stream logits are the conditional of rank n given every lower rank: the law our
`sampling.sample(method="sequential")` draws from. The logits then go through the transforms of
`asarm_jax.processors` (banned ids incl. the mask token, temperature, top-k, top-p; ties broken by
ascending id), re-implemented here in torch. Greedy decoding (temperature 0) takes the argmax with
the lowest id on ties, so it matches ours token for token (tests/test_benchmarks.py); with
temperature > 0 the law is the same but the random streams differ (torch.Generator vs jax.random).

Every forward recomputes the whole sequence (HF XLNet has no order-aware cache: its `mems` are
Transformer-XL segment memories). The density masks do not change between steps, so `perm_mask` is
built once per call; undecided positions hold the mask token (no query row can see them anyway).
Rows are decoded in one batch; they may have different orders but must share `num_prompt`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class HFSequentialOutput:
  """What `hf_sequential` returns."""
  tokens: np.ndarray  # int64 [B, N]: the prompt kept, every other position decided
  nfe: int            # forward passes (the same for every row: one per generated rank)
  seconds: float      # wall-clock of the decoding loop (mask construction included)


def set_threads(num_threads: int | None = None) -> int:
  """Sets torch's intra-op threads (default: every core of this machine); returns the count."""
  num_threads = num_threads or os.cpu_count() or 1
  torch.set_num_threads(num_threads)
  return num_threads


def perm_mask(ranks: np.ndarray, num_prompt: int) -> np.ndarray:
  """HF's perm_mask float32 [B, N, N]: 1 where row i may NOT attend to key j (query stream).

  It is `1 - masks.density_masks(ranks, num_prompt)[1]`, computed in numpy: i may see j iff
  rank[j] < rank[i], or both are prompt positions (rank < num_prompt).
  """
  rows = ranks[:, :, None]  # [B, N, 1]
  keys = ranks[:, None, :]  # [B, 1, N]
  visible = (keys < rows) | ((rows < num_prompt) & (keys < num_prompt))  # [B, N, N]
  return (~visible).astype(np.float32)


def _processed_logits(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                      banned: torch.Tensor) -> torch.Tensor:
  """`processors.probabilities` for temperature > 0, as logits: [B, V] float32, -inf = dropped."""
  logits = logits.float().masked_fill(banned, -torch.inf) / temperature  # [B, V]
  if not top_k and top_p >= 1:
    return logits
  vocab_size = logits.shape[-1]
  # Rank by logit, descending; equal logits by ascending id (a stable sort keeps id order).
  canonical = torch.where(logits == 0, torch.zeros_like(logits), logits)
  sorted_logits, order = torch.sort(canonical, dim=-1, descending=True, stable=True)  # [B, V]
  keep_sorted = torch.ones_like(sorted_logits, dtype=torch.bool)
  if top_k:
    keep_sorted = (torch.arange(vocab_size) < top_k).expand_as(keep_sorted).clone()
  if top_p < 1:
    sorted_probs = torch.softmax(sorted_logits.masked_fill(~keep_sorted, -torch.inf), dim=-1)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    keep_sorted = keep_sorted & (mass_before < top_p)
  keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to token order
  return logits.masked_fill(~keep, -torch.inf)


def hf_sequential(model, tokens, ranks, num_prompt: int, *, mask_token_id: int,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  banned_ids: Sequence[int] = (), seed: int = 0,
                  num_steps: int | None = None) -> HFSequentialOutput:
  """Decodes every non-prompt rank with one HF forward pass each.

  Args:
    model: a transformers `XLNetLMHeadModel` (put in eval mode here).
    tokens: int [B, N]; only prompt positions are read.
    ranks: int [B, N], each row a permutation of 0..N-1 (see asarm_jax/masks.py).
    num_prompt: ranks below it are the prompt, the same for every row (1 <= num_prompt < N: HF
      attends uniformly where our model sees nothing, so an empty prompt is not comparable).
    mask_token_id: the mask token; it is written at undecided positions and never sampled.
    temperature: >= 0; 0 is greedy (argmax, lowest id on ties).
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus mass in (0, 1] (1 = off).
    banned_ids: ids never sampled besides the mask token.
    seed: seed of the torch.Generator used for sampling.
    num_steps: decide only the first `num_steps` generated ranks (None: all); for warm-ups.

  Returns:
    HFSequentialOutput.

  Raises:
    ValueError: shapes, num_prompt or sampling settings out of range.
  """
  tokens = np.asarray(tokens, np.int64)
  ranks = np.asarray(ranks, np.int64)
  if tokens.ndim != 2 or tokens.shape != ranks.shape:
    raise ValueError(f"tokens and ranks must both have shape [batch, length]; got {tokens.shape} "
                     f"and {ranks.shape}")
  batch, length = tokens.shape
  if not 1 <= num_prompt < length:
    raise ValueError(f"num_prompt must be in [1, {length - 1}]; got {num_prompt}")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, "
                     f"{top_p}, {top_k}")
  model.eval()
  by_rank = np.argsort(ranks, axis=-1)  # [B, N]: position of each rank
  state = torch.from_numpy(np.where(ranks < num_prompt, tokens, mask_token_id))  # [B, N]
  mask = torch.from_numpy(perm_mask(ranks, num_prompt))  # [B, N, N]
  vocab_size = model.config.vocab_size
  banned = torch.zeros(vocab_size, dtype=torch.bool)
  banned[[mask_token_id, *banned_ids]] = True
  generator = torch.Generator().manual_seed(seed)
  rows = torch.arange(batch)
  last = length if num_steps is None else min(length, num_prompt + num_steps)
  start = time.perf_counter()
  with torch.no_grad():
    for rank in range(num_prompt, last):
      position = torch.from_numpy(by_rank[:, rank])  # [B]
      target_mapping = torch.zeros(batch, 1, length)  # [B, 1, N]
      target_mapping[rows, 0, position] = 1.0
      logits = model(state, perm_mask=mask, target_mapping=target_mapping,
                     use_mems=False).logits[:, 0]  # [B, V]
      if temperature == 0:
        # argmax returns the first maximum: the lowest id on ties, as processors.py.
        token = logits.float().masked_fill(banned, -torch.inf).argmax(dim=-1)
      else:
        probs = torch.softmax(_processed_logits(logits, temperature=temperature, top_k=top_k,
                                                top_p=top_p, banned=banned), dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)[:, 0]
      state[rows, position] = token
  seconds = time.perf_counter() - start
  return HFSequentialOutput(tokens=state.numpy(), nfe=last - num_prompt, seconds=seconds)
