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
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
