"""Held-out any-order loss at fixed masking rates, and the unigram-entropy diversity check.

Loss: the training objective's held-out evaluation (`train_lib.eval_step`, the function the training
loop evaluates with) at a fixed masking rate r (low == high == r): every sequence hides
max(1, int(r * valid tokens)) uniformly chosen positions, reads the visible ones as the prompt and
predicts the hidden ones in a decoding order (`masks.ORDERS`). Under a fixed order the teacher-forced
loss is the exact negative log-likelihood of the hidden tokens as the product of the model's
conditionals in that order, so the table per order is the quality each decoding order gets (the
same hidden sets for every order). Reported per order and rate: the mean cross-entropy over
hidden tokens in nats, in bits (nats / ln 2) and as perplexity, the accuracy of the argmax, and the
counts of hidden and valid tokens. The batches are the first `num_batches` of the run's evaluation
split in order (`data.eval_batches`), and the hidden sets are drawn from `seed` as in training
(`train_lib.eval_key`), so two calls with the same arguments score the same positions, and the
run's own evaluation settings reproduce its training-time eval/loss@rate.

Diversity (the paper's check that sampling does not collapse): the entropy of the unigram
distribution of model samples versus that of held-out text. Samples are `num_samples` unconditional
sequences of the run's sequence length, generated left to right by one of the exact samplers at
temperature 1; the data entropy is reported over all evaluated tokens and over the same number of
tokens as the samples (the first sequences), since the plug-in estimate grows with the count.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import data as data_lib
from asarm_jax import masks as masks_lib
from asarm_jax import metrics as metrics_lib
from asarm_jax import objective
from asarm_jax import sampling
from asarm_jax import train_lib
from asarm_jax.data import files_source
from asarm_jax.evals import report

DEFAULT_RATES = (0.15, 0.5, 0.9)


def load_batches(tokenizer, *, source: str, split: str, seq_len: int, batch_size: int,
                 num_batches: int, max_documents: int | None = None,
                 **source_options) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` evaluation batches of a split (one process, no shuffling);
  `source_options` are `data.open_source`'s (text_key, data_dir, file_glob, max_bytes)."""
  return list(data_lib.eval_batches(source, split, tokenizer, seq_len, batch_size,
                                    num_batches=num_batches, process_index=0, process_count=1,
                                    max_documents=max_documents, **source_options))


@functools.lru_cache(maxsize=8)
def _jitted_eval_step(cfg, masking: objective.MaskingConfig):
  """`train_lib.eval_step` for one model and objective, compiled once per batch shape."""
  return jax.jit(functools.partial(train_lib.eval_step, model_cfg=cfg, masking=masking))


def run_settings(config: dict[str, Any], max_len: int) -> dict[str, Any]:
  """`evaluate`'s data and objective arguments for a run from its stored config
  (`checkpoint.read_run(workdir)["config"]`): its evaluation split, sequence length, objective and
  evaluation size, so that the defaults score what its training evaluated."""
  data = config.get("data", {})
  masking = (objective.MaskingConfig.from_dict(config["objective"]) if "objective" in config
             else objective.MaskingConfig())
  return dict(source=data.get("source", "stdlib"), split=data.get("eval_split", "validation"),
              text_key=data.get("text_key", "text"), data_dir=data.get("data_dir"),
              file_glob=data.get("file_glob", files_source.DEFAULT_GLOB),
              max_bytes=data.get("max_bytes", files_source.DEFAULT_MAX_BYTES),
              max_documents=data.get("max_documents"),
              seq_len=int(config.get("seq_len", max_len)), masking=masking,
              num_batches=int(config.get("num_eval_batches", 8)),
              batch_size=int(config.get("eval_batch_size", 16)))


def masked_loss(params, cfg, batches: list[dict[str, np.ndarray]], rate: float, *,
                masking: objective.MaskingConfig, seed: int = 0) -> dict[str, float]:
  """Loss metrics of `batches` at the fixed masking rate `rate` (see the module docstring)."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"masking rates must lie in [0, 1]; got {rate}")
  step = _jitted_eval_step(cfg, masking)
  key = train_lib.eval_key(seed)
  merged = None
  for index, batch in enumerate(batches):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    metrics = step(params, batch, jax.random.fold_in(key, index), jnp.float32(rate),
                   jnp.float32(rate))
    merged = metrics if merged is None else merged.merge(metrics)
  values = merged.compute()
  nats = float(values["loss"])
  return dict(rate=rate, loss_nats=nats, bits_per_token=nats / math.log(2),
              perplexity=math.exp(nats) if nats < 700 else float("inf"),
              accuracy=float(values["accuracy"]), hidden_tokens=int(merged.loss.count),
              valid_tokens=int(sum(int(np.sum(b["valid"])) for b in batches)))


def unconditional_samples(params, cfg, *, num_samples: int, length: int, method: str = "assd",
                          draft_len: int = sampling.DEFAULT_DRAFT_LEN, batch_size: int = 16,
                          seed: int = 0) -> tuple[np.ndarray, report.SamplingStats]:
  """`num_samples` sequences of `length` tokens from an empty prompt, left to right, T = 1."""
  stats = report.SamplingStats(method=method,
                               draft_len=report.drafts_per_round(method, draft_len))
  rows = []
  key = jax.random.key(seed)
  for start in range(0, num_samples, batch_size):
    count = min(batch_size, num_samples - start)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, start + batch_size))
    tokens = np.zeros((batch_size, length), np.int32)
    ranks = np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length))
    out, compile_seconds, seconds = sampling.timed_sample(
        params, cfg, tokens, ranks, 0, keys, method=method, draft_len=draft_len)
    stats.add_call(out, np.full((batch_size,), length), np.arange(batch_size) < count, seconds,
                   compile_seconds)
    rows.append(np.asarray(out.tokens)[:count])
  return np.concatenate(rows), stats


def evaluate(params, cfg, tokenizer, *, source: str = "stdlib", split: str = "validation",
             seq_len: int = 128, masking: objective.MaskingConfig | None = None,
             rates=DEFAULT_RATES, orders=masks_lib.ORDERS, num_batches: int = 8,
             batch_size: int = 16, seed: int = 0,
             num_samples: int = 16, sample_method: str = "assd",
             draft_len: int = sampling.DEFAULT_DRAFT_LEN,
             text_key: str = "text", data_dir: str | None = None,
             file_glob: str = files_source.DEFAULT_GLOB,
             max_bytes: int = files_source.DEFAULT_MAX_BYTES,
             max_documents: int | None = None) -> dict[str, Any]:
  """Held-out loss at each rate and the unigram-entropy check (see the module docstring).

  Args:
    params, cfg, tokenizer: the model.
    source, split, text_key, data_dir, file_glob, max_bytes, max_documents: the held-out
      documents (the run's evaluation split).
    seq_len: tokens per evaluated sequence (the run's training length).
    masking: the run's objective settings; default `MaskingConfig()`. Its hidden order is replaced
      by each of `orders`.
    rates: fixed masking rates.
    orders: the decoding orders to score the hidden tokens in (names of `masks.ORDERS`).
    num_batches, batch_size: how much held-out data (the run's num_eval_batches and
      eval_batch_size evaluate the set that training evaluates).
    seed: hidden sets (`train_lib.eval_key`; the run's seed gives training's) and sampling seed.
    num_samples: unconditional samples for the entropy check (0 skips it).
    sample_method: one of `sampling.METHODS` (all draw from the same law; ASSD is faster).
    draft_len: ASSD's k.
  """
  masking = objective.MaskingConfig() if masking is None else masking
  for order in orders:
    masks_lib.check_order_name(order)
  batches = load_batches(tokenizer, source=source, split=split, seq_len=seq_len,
                         batch_size=batch_size, num_batches=num_batches, text_key=text_key,
                         data_dir=data_dir, file_glob=file_glob, max_bytes=max_bytes,
                         max_documents=max_documents)
  losses = [dict(order=order, **masked_loss(
      params, cfg, batches, float(rate),
      masking=dataclasses.replace(masking, hidden_order=order), seed=seed))
            for order in orders for rate in rates]
  data_entropy, data_tokens = metrics_lib.unigram_entropy(
      [b["tokens"] for b in batches], [b["valid"] for b in batches], cfg.vocab_size)
  results: dict[str, Any] = {
      "task": "heldout_loss",
      "settings": dict(source=source, split=split, seq_len=seq_len, num_batches=num_batches,
                       batch_size=batch_size, seed=seed, orders=list(orders),
                       training_order=masking.hidden_order,
                       num_samples=num_samples, sample_method=sample_method,
                       draft_len=draft_len, sample_temperature=1.0),
      "losses": losses,
      "unigram_entropy": dict(data_nats=data_entropy, data_bits=data_entropy / math.log(2),
                              data_tokens=data_tokens),
  }
  if num_samples:
    samples, stats = unconditional_samples(params, cfg, num_samples=num_samples, length=seq_len,
                                           method=sample_method, draft_len=draft_len,
                                           batch_size=min(batch_size, num_samples), seed=seed)
    sample_entropy, sample_tokens = metrics_lib.unigram_entropy(
        [samples], [np.ones(samples.shape, bool)], cfg.vocab_size)
    # The same number of held-out tokens, from the first valid positions in order.
    stream = np.concatenate([b["tokens"][b["valid"]] for b in batches])[:sample_tokens]
    matched, matched_tokens = metrics_lib.unigram_entropy(
        [stream], [np.ones(stream.shape, bool)], cfg.vocab_size)
    results["unigram_entropy"].update(
        samples_nats=sample_entropy, samples_bits=sample_entropy / math.log(2),
        samples_tokens=sample_tokens, data_matched_nats=matched,
        data_matched_bits=matched / math.log(2), data_matched_tokens=matched_tokens,
        sample_text=tokenizer.decode(samples[0].tolist()))
    results["sampling"] = stats
  return results


LOSS_COLUMNS: tuple[report.Column, ...] = (
    ("order", "order", "s"),
    ("rate", "mask rate", ".2f"),
    ("loss_nats", "loss (nats)", ".4f"),
    ("bits_per_token", "bits/token", ".4f"),
    ("perplexity", "ppl", ".2f"),
    ("accuracy", "accuracy", ".4f"),
    ("hidden_tokens", "hidden", "d"),
    ("valid_tokens", "tokens", "d"),
)


def table(results: dict[str, Any]) -> str:
  settings = results["settings"]
  lines = [report.format_table(
      results["losses"], LOSS_COLUMNS,
      f"Held-out any-order loss: {settings['source']}/{settings['split']}, "
      f"{settings['num_batches']} x {settings['batch_size']} sequences of {settings['seq_len']} "
      "tokens")]
  entropy = results["unigram_entropy"]
  rows = [dict(what="held-out data (all)", nats=entropy["data_nats"], bits=entropy["data_bits"],
               tokens=entropy["data_tokens"])]
  if "samples_nats" in entropy:
    rows += [dict(what="held-out data (same count)", nats=entropy["data_matched_nats"],
                  bits=entropy["data_matched_bits"], tokens=entropy["data_matched_tokens"]),
             dict(what="model samples", nats=entropy["samples_nats"],
                  bits=entropy["samples_bits"], tokens=entropy["samples_tokens"])]
  lines.append(report.format_table(
      rows, (("what", "unigram entropy of", "s"), ("nats", "nats", ".3f"),
             ("bits", "bits", ".3f"), ("tokens", "tokens", "d"))))
  if "sampling" in results:
    stats = results["sampling"]
    lines.append(report.format_table(
        [dict(label=report.method_label(stats.method, stats.draft_len), **stats.to_json())],
        (("label", "sampler", "s"), *report.SAMPLING_COLUMNS)))
  return "\n\n".join(lines)
