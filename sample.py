"""Fills the [MASK] / [MASK*n] spans of a text with a trained AS-ARM.

python sample.py --workdir runs/default --text $'def add(a, b):\n    return [MASK*4]\n' \
    --method assd --draft_len 5 --temperature 0.8 --seed 0 --batch 4 [--json]
python sample.py --random_model --text '...'   # an untrained model, to try the sampler
"""
import sys

from absl import app
from absl import flags

from asarm_jax import infilling

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory to load the model from.")
_RANDOM_MODEL = flags.DEFINE_bool("random_model", False,
                                  "Use an untrained small model instead of --workdir.")
_TEXT = flags.DEFINE_string("text", None, "Text with [MASK] or [MASK*n] spans.", required=True)
_METHOD = flags.DEFINE_enum("method", "assd", ["assd", "sequential"], "Sampler.")
_DRAFT_LEN = flags.DEFINE_integer("draft_len", 5, "ASSD drafts per round (k).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1] (1 = off).")
_ORDER = flags.DEFINE_enum("order", "infill", ["infill", "random"], "Generation order.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (also the random order's seed).")
_BATCH = flags.DEFINE_integer("batch", 1, "Samples, drawn in one batched call.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per sample.")

# Checked while parsing the flags, before any model is loaded; the error names the flag.
flags.register_validator("temperature", lambda t: t >= 0, "must be >= 0 (0 is greedy)")
flags.register_validator("top_p", lambda p: 0 < p <= 1, "must be in (0, 1] (1 = off)")
flags.register_validator("top_k", lambda k: k >= 0, "must be >= 0 (0 = off)")
flags.register_validator("draft_len", lambda k: k >= 1, "must be >= 1")
flags.register_validator("batch", lambda b: b >= 1, "must be >= 1")
flags.register_multi_flags_validator(
    ["workdir", "random_model"],
    lambda values: values["random_model"] != (values["workdir"] is not None),
    "name exactly one model: --workdir DIR or --random_model")


def _check_text(text):
  try:
    if text is not None:
      infilling.parse_masked_text(text)
  except ValueError as error:
    raise flags.ValidationError(str(error)) from error
  return True


flags.register_validator("text", _check_text)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    lines = infilling.sample_command(
        text=_TEXT.value,
        workdir=_WORKDIR.value, random=_RANDOM_MODEL.value, seed=_SEED.value,
        batch=_BATCH.value, as_json=_JSON.value, method=_METHOD.value,
        draft_len=_DRAFT_LEN.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        top_p=_TOP_P.value, order=_ORDER.value, order_seed=_SEED.value)
  except FileNotFoundError as error:
    sys.exit(f"error: --workdir {_WORKDIR.value}: {error}" if _WORKDIR.value else f"error: {error}")
  except ValueError as error:
    sys.exit(f"error: {error}")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
