"""Infilling: fill the hidden positions of token sequences, or the `[MASK]` spans of texts.

    text = "def add(a, b):\\n    return [MASK*3]\\n"
    result = infill(params, cfg, tokenizer, text, jax.random.key(0), method="assd_fused")
    result.text, result.nfe

One pipeline serves every caller (the text API here, the evaluations, the main job):
`fill_examples` takes `Example`s (a token sequence and the positions to generate), groups them by
padded length (multiples of `length_bucket`, capped at the model's max_len), sorts each group by the
number of hidden tokens, most first, and fills each group with the sampler, visible tokens first,
then the hidden ones in the chosen order. A group of more examples than `batch_size` runs as one
stream through `batch_size` slots (continuous batching, `sampling.Sampler`'s `num_slots`): a slot
whose example is done takes the next one, so rows idle only at the end of the group (a batch loops
until its slowest row is done). A smaller group is one batch, topped up with copies of its first
row so that every such batch of a length bucket shares one compilation. Padding positions take
the last ranks and are passed as `num_valid`: they are never generated and nothing attends to
them, so the result is the same as with the exact length. Example i samples with `fold_in(rng, i)`
(and, in the random order, its order from `fold_in(key(order_seed), i)`, drawn over its own
length), and a row's result does not depend on the other rows of its batch, so a completion does
not depend on the batch size or on which other examples are filled with it.

Texts: `[MASK]` is one hidden token and `[MASK*n]` is n hidden tokens (n >= 1). The literal pieces
between spans are tokenized one by one and form the prompt. `infill_texts` fills many different
texts in ragged batches, `infill_many` draws samples of one text, `infill` one sample.

Tokenizers: our SentencePiece `Tokenizer` round-trips every text. XLNet's (`XLNetTokenizer`) does
not: it folds each run of whitespace (newlines and tabs included) into one space, drops it at the
ends, strips accents, and so on (see `xlnet_tokenizer`), so the model would be conditioned on
another text than the one given. A literal piece that its tokenizer cannot round-trip is refused,
naming the loss (one space between a piece and a span is not a loss: the fill's first token carries
it); `allow_lossy_tokenization=True` fills it anyway. Either way the result's text keeps the literal
pieces as given. A fill that directly follows text (no whitespace between) is decoded as a
continuation (`decode_continuation`: XLNet's word-start mark there is a space).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import masks as masks_lib
from asarm_jax import sampling
from asarm_jax.model import ModelConfig

ORDERS = masks_lib.ORDERS
_SPAN_START = "[MASK"
_SPAN = re.compile(r"\[MASK(?:\*(-?\d+))?\]")


@dataclasses.dataclass(frozen=True)
class Infilled:
  """One completed text and what it cost."""
  text: str                # the input with every span replaced by its fill
  fills: tuple[str, ...]   # the decoded fill of each span, in order
  tokens: np.ndarray       # int32 [L]: the completed token sequence (no padding)
  nfe: int                 # forward passes this sample needed
  rounds: int              # ASSD rounds (== nfe for sequential)
  accepted: int            # drafts kept
  num_generated: int       # hidden tokens filled
  seconds: float           # run time of the whole batched call, compilation excluded
  compile_seconds: float   # 0.0 when the compilation was cached

  def to_json(self) -> dict[str, Any]:
    values = dataclasses.asdict(self)
    values["fills"] = list(self.fills)
    values["tokens"] = self.tokens.tolist()
    return values


def parse_masked_text(text: str) -> list[str | int]:
  """Splits `text` into literal pieces (str) and hidden-span lengths (int), in order.

  Raises:
    ValueError: an unclosed or malformed span, n <= 0, or no span at all.
  """
  parts: list[str | int] = []
  start = 0
  while (found := text.find(_SPAN_START, start)) >= 0:
    match = _SPAN.match(text, found)
    if match is None:
      close = text.find("]", found)
      if close < 0:
        raise ValueError(f"unclosed mask span at character {found}: {text[found:found + 20]!r}; "
                         "spans are [MASK] or [MASK*n]")
      raise ValueError(f"malformed mask span {text[found:close + 1]!r} at character {found}; "
                       "spans are [MASK] or [MASK*n] with an integer n >= 1")
    count = 1 if match.group(1) is None else int(match.group(1))
    if count <= 0:
      raise ValueError(f"mask span {match.group(0)!r} at character {found} asks for {count} "
                       "tokens; n must be >= 1")
    if found > start:
      parts.append(text[start:found])
    parts.append(count)
    start = match.end()
  if start < len(text):
    parts.append(text[start:])
  if not any(isinstance(part, int) for part in parts):
    raise ValueError("text has no [MASK] or [MASK*n] span: there is nothing to fill")
  return parts


def _layout(parts: list[str | int], tokenizer) -> tuple[list[int], list[int]]:
  """Token ids and span index per position (-1 for visible tokens) of the parsed text."""
  ids, span_of = [], []
  span = 0
  for part in parts:
    if isinstance(part, int):
      ids.extend([tokenizer.mask_id] * part)
      span_of.extend([span] * part)
      span += 1
    else:
      piece = tokenizer.encode(part)
      ids.extend(piece)
      span_of.extend([-1] * len(piece))
  return ids, span_of


@dataclasses.dataclass(frozen=True)
class Example:
  """One infilling problem.

  Attributes:
    tokens: int32 [L]: the full sequence; the values at hidden positions are ignored by the sampler
      (the evaluations keep the reference there).
    hidden: bool [L]: the positions to generate (at least one).
  """
  tokens: np.ndarray
  hidden: np.ndarray

  @classmethod
  def from_span(cls, prefix: Sequence[int], middle: Sequence[int],
                suffix: Sequence[int]) -> Example:
    tokens = np.asarray([*prefix, *middle, *suffix], np.int32)
    hidden = np.zeros(len(tokens), bool)
    hidden[len(prefix):len(prefix) + len(middle)] = True
    return cls(tokens=tokens, hidden=hidden)

  def middle(self, tokens: np.ndarray | None = None) -> np.ndarray:
    """The tokens at the hidden positions of `tokens` (default: the reference)."""
    return np.asarray(self.tokens if tokens is None else tokens)[self.hidden]


def check_examples(examples: Sequence[Example], cfg: ModelConfig) -> None:
  """Raises ValueError for an example the sampler cannot take."""
  for index, example in enumerate(examples):
    length, hidden = len(example.tokens), int(example.hidden.sum())
    if example.hidden.shape != example.tokens.shape:
      raise ValueError(f"example {index}: tokens and hidden differ in shape")
    if not 0 < hidden <= length <= cfg.max_len:
      raise ValueError(f"example {index}: needs 0 < hidden ({hidden}) <= length ({length}) <= "
                       f"max_len ({cfg.max_len})")


@dataclasses.dataclass(frozen=True)
class FilledBatch:
  """One sampler call of `fill_examples` (a batch, or a stream through `batch_size` slots): rows
  past len(indices) are top-up copies."""
  indices: list[int]          # the examples in the call's first rows
  out: sampling.SampleOutput  # [R] rows: batch_size, or every example of a stream
  num_valid: np.ndarray       # int32 [R]: each row's sequence length
  generated: np.ndarray       # int32 [R]: hidden tokens of each row
  seconds: float              # run time of the call (median of timing_repeats), no compile
  compile_seconds: float      # 0.0 when the compilation was cached

  @property
  def keep(self) -> np.ndarray:
    """bool [batch_size]: the rows that are examples (not top-up copies)."""
    return np.arange(len(self.num_valid)) < len(self.indices)

  def completions(self) -> list[tuple[int, np.ndarray, int]]:
    """(example index, completed tokens int32 [L], row) of every example of the batch."""
    tokens = np.asarray(self.out.tokens)
    return [(index, tokens[row, :self.num_valid[row]], row)
            for row, index in enumerate(self.indices)]


def _length_groups(examples: Sequence[Example], length_bucket: int,
                   max_len: int) -> list[tuple[int, list[int]]]:
  """(padded length, example indices) per length group, sorted by hidden count, most first (a
  stream then ends on its shortest examples)."""
  groups: dict[int, list[int]] = {}
  for index, example in enumerate(examples):
    length = min(-(-len(example.tokens) // length_bucket) * length_bucket, max_len)
    groups.setdefault(length, []).append(index)
  return [(length, sorted(groups[length], key=lambda i: (-int(examples[i].hidden.sum()), i)))
          for length in sorted(groups)]


def pose_batch(examples: Sequence[Example], length: int, *, order: str = "left_to_right",
               order_seed: int = 0, indices: Sequence[int] | None = None):
  """The sampler's inputs for `examples` padded to `length`: prompt first, then the hidden
  positions in `order` (one of `ORDERS`; the random one of example i from
  `fold_in(key(order_seed), i)`, where i is `indices[row]`, default the row), padding last.

  Returns:
    (tokens int32 [B, N], ranks int32 [B, N], num_prompt int32 [B], num_valid int32 [B]).
  """
  indices = range(len(examples)) if indices is None else indices
  tokens = np.zeros((len(examples), length), np.int32)  # [B, N]
  is_prompt = np.zeros((len(examples), length), bool)  # [B, N]
  num_valid = np.array([len(example.tokens) for example in examples], np.int32)
  for row, example in enumerate(examples):
    tokens[row, :num_valid[row]] = example.tokens
    is_prompt[row, :num_valid[row]] = ~example.hidden
  num_prompt = is_prompt.sum(axis=1).astype(np.int32)
  valid = np.arange(length) < num_valid[:, None]  # [B, N]
  if order != "random":  # padding takes the last ranks
    ranks = masks_lib.order_ranks(order, jnp.asarray(is_prompt), valid=jnp.asarray(valid))
    return tokens, np.asarray(ranks), num_prompt, num_valid
  order_key = jax.random.key(order_seed)
  ranks = np.tile(np.arange(length, dtype=np.int32), (len(examples), 1))  # padding: last ranks
  for row, index in enumerate(indices):
    used = int(num_valid[row])  # drawn over the example's own length: independent of the padding
    ranks[row, :used] = np.asarray(masks_lib.order_ranks(
        order, jnp.asarray(is_prompt[row:row + 1, :used]),
        key=jax.random.fold_in(order_key, index)))[0]
  return tokens, ranks, num_prompt, num_valid


def _check_sizes(**sizes: int) -> None:
  for name, value in sizes.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def fill_examples(params, cfg: ModelConfig, examples: Sequence[Example], rng, *,
                  batch_size: int = 16, length_bucket: int = 64, order: str = "left_to_right",
                  order_seed: int = 0, timing_repeats: int = 1,
                  **sampler_options) -> list[FilledBatch]:
  """Fills the hidden positions of every example, in batches of `batch_size` rows.

  Args:
    params, cfg: the model.
    examples: what to fill (see `Example`).
    rng: PRNG key; example i uses `fold_in(rng, i)`.
    batch_size: rows sampled at once: a length group of more examples is a stream through this
      many slots (module docstring).
    length_bucket: sequence lengths are rounded up to a multiple of this (at most cfg.max_len).
    order: the order of the hidden positions, one of `ORDERS` (`masks.ORDER_HELP`): the default
      "left_to_right" is the paper's; "random" gives each example its own uniformly random order.
    order_seed: seed of the random orders.
    timing_repeats: runs of each compiled call; `FilledBatch.seconds` is their median
      (`sampling.Sampler.timed`). 1 fills the examples once; more only steady the timings.
    **sampler_options: method, draft_len, temperature, top_k, top_p, banned_ids, use_cache,
      adaptive, drafter, adaptive_order (not a fixed order's law; it overrides `order` beyond the
      prompt), and the lossy r_atol and draft_only_temperature (see `sampling.Sampler.create`).

  Returns:
    The batches, in the order they ran; `FilledBatch.completions` maps rows back to examples.

  Raises:
    ValueError: a bad example or option, before anything is compiled.
  """
  _check_sizes(batch_size=batch_size, length_bucket=length_bucket, timing_repeats=timing_repeats)
  masks_lib.check_order_name(order)  # before anything is compiled
  check_examples(examples, cfg)
  sampling.Sampler.create(cfg, **sampler_options)  # every option checked before any compilation
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(len(examples)))
  filled = []
  for length, indices in _length_groups(examples, length_bucket, cfg.max_len):
    sampler = sampling.Sampler.create(cfg, batch_shape=(batch_size, length), **sampler_options)
    rows = indices + [indices[0]] * (batch_size - len(indices))  # top up: one compiled shape
    tokens, ranks, num_prompt, num_valid = pose_batch(
        [examples[index] for index in rows], length, order=order, order_seed=order_seed,
        indices=rows)
    out, compile_seconds, seconds = sampler.timed(
        params, tokens, ranks, num_prompt, row_keys[np.asarray(rows)], num_valid=num_valid,
        repeats=timing_repeats, num_slots=batch_size)
    filled.append(FilledBatch(indices=indices, out=out, num_valid=num_valid,
                              generated=num_valid - num_prompt, seconds=seconds,
                              compile_seconds=compile_seconds))
  return filled


# ----------------------------------------------------------------------------------------------------
# Texts.


def _check_lossless(parts: list[str | int], tokenizer) -> None:
  """Raises ValueError naming the first literal piece `tokenizer` cannot round-trip; one space
  next to a span is allowed."""
  for index, part in enumerate(parts):
    if isinstance(part, int):
      continue
    core = part
    if index > 0 and core.startswith(" "):
      core = core[1:]
    if index + 1 < len(parts) and core.endswith(" "):
      core = core[:-1]
    reason = tokenizer.lossy_reason(core)
    if reason is not None:
      raise ValueError(f"the tokenizer cannot keep the visible text {core[:40]!r}"
                       f"{'...' if len(core) > 40 else ''} as it is: {reason} (characters counted "
                       "in that text); the model would see another text (pass "
                       "allow_lossy_tokenization=True to fill it anyway)")


def _pose(text: str, tokenizer, cfg: ModelConfig, allow_lossy_tokenization: bool = False
          ) -> tuple[list[str | int], Example, np.ndarray]:
  """(parsed parts, the Example, span index per position (-1 visible)) of a masked text."""
  parts = parse_masked_text(text)
  if not allow_lossy_tokenization:
    _check_lossless(parts, tokenizer)
  ids, span_of = _layout(parts, tokenizer)
  if len(ids) > cfg.max_len:
    hidden = sum(part for part in parts if isinstance(part, int))
    raise ValueError(f"text is too long: {len(ids) - hidden} visible + {hidden} hidden tokens = "
                     f"{len(ids)} exceeds the model's max_len {cfg.max_len}")
  span_of = np.array(span_of, np.int32)
  return parts, Example(tokens=np.array(ids, np.int32), hidden=span_of >= 0), span_of


def _infilled(parts, span_of: np.ndarray, tokens: np.ndarray, tokenizer, batch: FilledBatch,
              row: int) -> Infilled:
  pieces, fills = [], []
  for part in parts:
    if isinstance(part, int):
      ids = tokens[span_of == len(fills)].tolist()
      before = "".join(pieces)
      follows_text = bool(before) and not before[-1].isspace()
      fills.append(tokenizer.decode_continuation(ids) if follows_text else tokenizer.decode(ids))
      part = fills[-1]
    pieces.append(part)
  out = batch.out
  return Infilled(text="".join(pieces), fills=tuple(fills), tokens=tokens, nfe=int(out.nfe[row]),
                  rounds=int(out.rounds[row]), accepted=int(out.accepted[row]),
                  num_generated=int(np.sum(span_of >= 0)), seconds=batch.seconds,
                  compile_seconds=batch.compile_seconds)


def infill_texts(params, cfg: ModelConfig, tokenizer, texts: Sequence[str], rng, *,
                 batch_size: int | None = None, length_bucket: int = 64,
                 allow_lossy_tokenization: bool = False, **options) -> list[Infilled]:
  """Fills the `[MASK]` spans of every text, in ragged batches (text i samples with
  `fold_in(rng, i)`).

  Args:
    params, cfg: the model.
    tokenizer: an `asarm_jax.data.Tokenizer` or an `asarm_jax.xlnet_tokenizer.XLNetTokenizer`
      (encode / decode / decode_continuation / lossy_reason / mask_id).
    texts: strings with `[MASK]` / `[MASK*n]` spans.
    rng: PRNG key.
    batch_size: rows per sampler call (default: all texts in one call).
    length_bucket: see `fill_examples`.
    allow_lossy_tokenization: fill texts whose visible pieces the tokenizer cannot round-trip
      (see the module docstring) instead of refusing them.
    **options: order, order_seed and the sampler options of `fill_examples`.

  Returns:
    One Infilled per text, in the order of `texts`.

  Raises:
    ValueError: naming the bad text (its index) or option, or the loss of a text the tokenizer
      cannot round-trip.
  """
  if isinstance(texts, str) or not texts:
    raise ValueError("texts must be a non-empty list of strings")
  posed = []
  for index, text in enumerate(texts):
    try:
      posed.append(_pose(text, tokenizer, cfg, allow_lossy_tokenization))
    except ValueError as error:
      raise ValueError(f"text {index}: {error}") from None
  batches = fill_examples(params, cfg, [example for _, example, _ in posed], rng,
                          batch_size=batch_size or len(texts), length_bucket=length_bucket,
                          **options)
  results: list[Infilled | None] = [None] * len(texts)
  for batch in batches:
    for index, tokens, row in batch.completions():
      parts, _, span_of = posed[index]
      results[index] = _infilled(parts, span_of, tokens, tokenizer, batch, row)
  return results


def infill_many(params, cfg: ModelConfig, tokenizer, text: str, rng, *, num_samples: int = 1,
                allow_lossy_tokenization: bool = False, **options) -> list[Infilled]:
  """Draws `num_samples` completions of `text` in one batched sampler call (sample s samples with
  `fold_in(rng, s)`); the options are those of `infill_texts`.

  Raises:
    ValueError: a malformed text, a text longer than the model's max_len, a text the tokenizer
      cannot round-trip (unless `allow_lossy_tokenization`), or a bad option.
  """
  _check_sizes(num_samples=num_samples)
  parts, example, span_of = _pose(text, tokenizer, cfg, allow_lossy_tokenization)
  results = [None] * num_samples
  for batch in fill_examples(params, cfg, [example] * num_samples, rng, batch_size=num_samples,
                             **options):
    for index, tokens, row in batch.completions():
      results[index] = _infilled(parts, span_of, tokens, tokenizer, batch, row)
  return results


def infill(params, cfg: ModelConfig, tokenizer, text: str, rng, **kwargs) -> Infilled:
  """One completion of `text`; the options are those of `infill_many`."""
  return infill_many(params, cfg, tokenizer, text, rng, num_samples=1, **kwargs)[0]
