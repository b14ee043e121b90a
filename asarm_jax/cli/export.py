"""Exports a training run as a Hugging Face XLNet directory (weights and tokenizer).

python -m asarm_jax.cli.export --workdir runs/xlnet_base_ft --out exported/xlnet_base_ft [--step N]

The result loads with transformers' `XLNetLMHeadModel.from_pretrained(out)` (the same logits) and,
for a run fine-tuned from an HF XLNet directory, `AutoTokenizer.from_pretrained(out)` (the same
ids). A run with our own SentencePiece tokenizer is exported as weights + asarm_tokenizer.model,
which transformers' XLNet tokenizer cannot reproduce (see asarm_jax/hf_export.py);
`asarm_jax.load(out)` reads either kind back.
"""
from __future__ import annotations

from absl import flags

from asarm_jax import hf_export
from asarm_jax.cli import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory to export.")
_OUT = flags.DEFINE_string("out", None, "Directory to write (must not exist or be empty).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.register_validator("step", lambda s: s is None or s >= 0, "must be >= 0")


def main():
  """Exports, then prints what was written."""
  if _WORKDIR.value is None or _OUT.value is None:
    common.fail("export needs --workdir RUN and --out DIR, e.g. `python -m asarm_jax.cli.export "
                "--workdir runs/default --out exported/default` (see --help)")
  common.quiet_library_logs()
  model = hf_export.export_run(_WORKDIR.value, _OUT.value, step=_STEP.value)
  kind = type(model.tokenizer).__name__
  print(f"Wrote {_OUT.value}: XLNetLMHeadModel weights ({model.config.n_layers} layers, "
        f"d_model {model.config.d_model}, {model.config.vocab_size} ids) and the {kind}.",
        flush=True)


def run():
  """The `python -m asarm_jax.cli.export` entry point."""
  common.run(main, module_name=__name__, summary=__doc__)


if __name__ == "__main__":
  run()
