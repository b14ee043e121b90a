"""Evaluations of trained AS-ARMs; run them with `python -m asarm_jax.evals --help`.

- `humaneval_infill`: HumanEval single-line infilling pass@1 (sandboxed execution).
- `heldout_loss`: held-out any-order loss at fixed masking rates; unigram entropy of samples and
  data.
- `story_infill`: ROUGE of the infilled middle sentence of 5-sentence texts.

Each reports, per sampling method (sequential / ASSD), the sampler's cost (NFE, tokens per round,
wall-clock) next to its quality numbers (`report.SamplingStats`). Modules are imported on use, so
that importing this package stays light.
"""

TASKS = ("humaneval_infill", "heldout_loss", "story_infill")
