"""Fills the [MASK] / [MASK*n] spans of a text with a trained AS-ARM.

python sample.py --workdir runs/default --text $'def add(a, b):\n    return [MASK*4]\n' \
    [--method auto] [--draft_len 3] [--temperature 0.8] [--seed 0] [--batch 4] [--json]
    [--dtype bfloat16] [--drafter ngram] [--r_atol 0.3 (lossy)] [--draft_only_temperature (lossy)]
python sample.py --random_model --text '...'   # an untrained model, to try the sampler

--workdir is one of our training run directories or a Hugging Face XLNet directory
(`save_pretrained`: config.json, weights, tokenizer.json or spiece.model). XLNet's tokenizer folds
whitespace runs and newlines; a --text it cannot keep is refused unless --allow_lossy_tokenization.
"""
from __future__ import annotations

import collections
import json
import pathlib
import string
import textwrap
from typing import Any

import jax
from absl import flags

from asarm_jax import infilling
from asarm_jax import loading
from asarm_jax import masks
from asarm_jax import sampling
from asarm_jax.cli import common
from asarm_jax.data import train_tokenizer
from asarm_jax.model import ModelConfig, cast_for_inference, init_params

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory or Hugging Face XLNet "
                                "directory to load the model from.")
_RANDOM_MODEL = flags.DEFINE_bool("random_model", False,
                                  "Use an untrained small model instead of --workdir.")
_TEXT = flags.DEFINE_string("text", None, "Text with [MASK] or [MASK*n] spans.")
_METHOD = flags.DEFINE_enum("method", sampling.DEFAULT_METHOD,
                            [*sampling.METHODS, sampling.AUTO],
                            "Sampler (all are exact; auto: the fastest for --batch on this "
                            "backend).")
_DRAFT_LEN = flags.DEFINE_integer("draft_len", sampling.DEFAULT_DRAFT_LEN,
                                   "ASSD drafts per round (k).")
_DRAFTER = flags.DEFINE_enum("drafter", "model", list(sampling.DRAFTERS),
                             "Where ASSD's drafts come from: the model, or bigram counts of the "
                             "decided tokens (ngram; exact, one forward per round, --method assd "
                             "or auto).")
_R_ATOL = flags.DEFINE_float("r_atol", 0.0,
                             "LOSSY when > 0: keep a draft when u < q/p + r_atol (fewer forwards; "
                             "the samples no longer follow the model's law).")
_DRAFT_ONLY_TEMPERATURE = flags.DEFINE_bool(
    "draft_only_temperature", False,
    "LOSSY: --temperature shapes the drafts only; the verify pass uses temperature 1.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1] (1 = off).")
_ORDER = flags.DEFINE_enum("order", "left_to_right", list(infilling.ORDERS),
                           f"Order of the hidden positions: {masks.ORDER_HELP}.")
_ADAPTIVE_ORDER = flags.DEFINE_bool(
    "adaptive_order", False,
    "Every round decodes the hidden positions where the model is most certain first (lowest "
    "entropy); --order then fixes nothing. NOT the law of any fixed order (the samples follow "
    "'most certain position next'). Needs --method assd or auto.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (also the random order's seed).")
_BATCH = flags.DEFINE_integer("batch", 1, "Samples, drawn in one batched call.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per sample.")
_ALLOW_LOSSY_TOKENIZATION = flags.DEFINE_bool(
    "allow_lossy_tokenization", False,
    "Fill a --text whose visible parts the tokenizer cannot keep as they are (XLNet's folds "
    "whitespace runs and newlines): the model then sees the folded text.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Inference dtype of the weights and cache (default: as trained). "
                           "bfloat16 halves the memory and the bytes a forward reads; the samples "
                           "are exact draws from the bfloat16 model's law.")

# Checked while parsing the flags, before any model is loaded; the error names the flag.
flags.register_validator("temperature", lambda t: t >= 0, "must be >= 0 (0 is greedy)")
flags.register_validator("top_p", lambda p: 0 < p <= 1, "must be in (0, 1] (1 = off)")
flags.register_validator("top_k", lambda k: k >= 0, "must be >= 0 (0 = off)")
flags.register_validator("draft_len", lambda k: k >= 1, "must be >= 1")
flags.register_validator("batch", lambda b: b >= 1, "must be >= 1")
flags.register_validator("r_atol", lambda r: r >= 0, "must be >= 0 (0 = off; > 0 is lossy)")
flags.register_multi_flags_validator(
    ["workdir", "random_model"],
    lambda values: values["random_model"] != (values["workdir"] is not None),
    "name exactly one model: --workdir DIR or --random_model")


def _check_text(text: str | None) -> bool:
  if text is None:
    raise flags.ValidationError("is required: the text to fill, with [MASK] or [MASK*n] spans")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as error:
    raise flags.ValidationError(f"is not valid UTF-8 (byte {error.start})") from None
  try:
    infilling.parse_masked_text(text)
  except ValueError as error:
    raise flags.ValidationError(str(error)) from error
  return True


flags.register_validator("text", _check_text)


def random_model(seed: int = 0, *, vocab_size: int = 512) -> tuple[ModelConfig, Any, Any]:
  """An untrained small model with a tokenizer trained on a few standard-library files.

  For trying the sampler without a training run: its fills are noise.
  """
  texts = [pathlib.Path(module.__file__).read_text(encoding="utf-8")
           for module in (collections, json.decoder, string, textwrap)]
  tokenizer = train_tokenizer(texts, vocab_size=vocab_size, seed=seed)
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, d_model=64,
                    n_layers=2, n_heads=2, d_head=32, d_inner=128, max_len=256)
  return cfg, init_params(cfg, jax.random.key(seed)), tokenizer


def format_results(results: list[infilling.Infilled], *, as_json: bool,
                   lossy: bool = False) -> list[str]:
  """One text block (or JSON line) per sample, with its cost and the batch's speed; samples of a
  lossy sampler say so."""
  speed = sum(r.num_generated for r in results) / max(results[0].seconds, 1e-9)
  label = "LOSSY sample (not the model's law)" if lossy else "sample"
  lines = []
  for index, result in enumerate(results):
    if as_json:
      lines.append(json.dumps({"sample": index, **result.to_json(), "tokens_per_second": speed,
                               "lossy": lossy}))
    else:
      lines.append(f"--- {label} {index}\n{result.text}\n--- nfe {result.nfe}, rounds "
                   f"{result.rounds}, accepted {result.accepted}, generated "
                   f"{result.num_generated} tokens; batch: {speed:.1f} tokens/s "
                   f"({result.seconds:.3f} s run, {result.compile_seconds:.1f} s compile)")
  return lines


def main():
  """Loads the model, infills --text --batch times and prints the samples."""
  common.quiet_library_logs()
  if _RANDOM_MODEL.value:
    cfg, params, tokenizer = random_model(_SEED.value)
  else:
    try:
      model = loading.load(_WORKDIR.value)
    except (FileNotFoundError, ValueError) as error:
      common.fail(f"--workdir {_WORKDIR.value}: {error}")
    cfg, params, tokenizer = model.config, model.params, model.tokenizer
  if _DTYPE.value:
    cfg, params = cast_for_inference(cfg, params, _DTYPE.value)
  results = infilling.infill_many(
      params, cfg, tokenizer, _TEXT.value, jax.random.key(_SEED.value), num_samples=_BATCH.value,
      order=_ORDER.value, order_seed=_SEED.value, method=_METHOD.value,
      draft_len=_DRAFT_LEN.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
      top_p=_TOP_P.value, drafter=_DRAFTER.value, r_atol=_R_ATOL.value,
      draft_only_temperature=_DRAFT_ONLY_TEMPERATURE.value, adaptive_order=_ADAPTIVE_ORDER.value,
      allow_lossy_tokenization=_ALLOW_LOSSY_TOKENIZATION.value)
  lossy = sampling.is_lossy(_R_ATOL.value, _DRAFT_ONLY_TEMPERATURE.value)
  print("\n".join(format_results(results, as_json=_JSON.value, lossy=lossy)))


def run():
  """The `sample.py` entry point."""
  common.run(main, module_name=__name__, summary=__doc__)
