"""Story infilling: ROUGE of the generated middle sentence of 5-sentence texts (oracle length).

Texts come from a data source (`tfds:<name>` with a text feature, or 'stdlib'; see
`asarm_jax.data.sources`). Each text is split into sentences (`split_sentences`: after '.', '!' or
'?' followed by whitespace); texts with fewer than `num_sentences` sentences are skipped, longer
ones keep their first `num_sentences`. The middle sentence (index num_sentences // 2) is hidden:
prefix = the sentences before it and a space, middle = the sentence, suffix = a space and the
sentences after it, each tokenized separately; the model fills the middle's token count. The fill is
scored against the hidden sentence with ROUGE-1/2/L F-measures (`rouge_score`, Porter stemming), in
[0, 1] (the paper reports them x 100). Context beyond `max_len` tokens is cut as in
`humaneval_infill` (prefix on the left, suffix on the right).

The 'oracle' method returns the hidden sentence's own tokens through the same path (tokenize, place,
decode, score): its ROUGE is 1, a check of everything but the sampler.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax

from asarm_jax import data as data_lib
from asarm_jax import infilling
from asarm_jax import sampling
from asarm_jax.evals import report
from asarm_jax.evals import span_infill

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclasses.dataclass(frozen=True)
class Story:
  prefix: str
  middle: str
  suffix: str


def split_sentences(text: str) -> list[str]:
  """Sentences of `text`: cut after '.', '!' or '?' (and closing quotes/brackets) + whitespace."""
  pieces, start = [], 0
  text = text.strip()
  for match in _SENTENCE_END.finditer(text):
    pieces.append(text[start:match.start()] + match.group(0).rstrip())
    start = match.end()
  pieces.append(text[start:])
  return [p.strip() for p in pieces if p.strip()]


def make_story(text: str, num_sentences: int = 5) -> Story | None:
  """The text's first `num_sentences` sentences with the middle one hidden (None if too short)."""
  sentences = split_sentences(text)
  if len(sentences) < num_sentences:
    return None
  sentences = sentences[:num_sentences]
  middle = num_sentences // 2
  before, after = sentences[:middle], sentences[middle + 1:]
  return Story(prefix=" ".join(before) + " " if before else "", middle=sentences[middle],
               suffix=" " + " ".join(after) if after else "")


def collect_stories(texts: Iterable[str], *, num_sentences: int = 5,
                    limit: int | None = None) -> tuple[list[Story], int]:
  """Stories from the first texts, in order, until `limit`; also returns how many were read."""
  stories, read = [], 0
  for text in texts:
    read += 1
    story = make_story(text, num_sentences)
    if story is not None:
      stories.append(story)
      if limit is not None and len(stories) >= limit:
        break
  return stories, read


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures in [0, 1] over the pairs."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top (slow import)

  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for prediction, reference in zip(predictions, references, strict=True):
    scores = scorer.score(reference, prediction)
    for kind in ROUGE_TYPES:
      totals[kind] += scores[kind].fmeasure
  count = max(len(predictions), 1)
  return {kind: total / count for kind, total in totals.items()}


def evaluate(params, cfg, tokenizer, *, dataset: str, split: str = "validation",
             text_key: str = "text", data_dir: str | None = None,
             methods: Sequence[str] = ("sequential", "assd"), limit: int | None = 200,
             num_sentences: int = 5, max_len: int | None = None,
             draft_len: int = sampling.DEFAULT_DRAFT_LEN,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
             seed: int = 0, num_examples_shown: int = 3, order: str = "left_to_right") -> dict[str, Any]:
  """ROUGE of each method's middle sentences (see the module docstring).

  Args:
    params, cfg, tokenizer: the model.
    dataset: 'tfds:<name>' (or 'stdlib'): where the texts come from.
    split, text_key, data_dir: which split, which feature holds the text, TFDS data directory.
    methods: any of `span_infill.METHODS`.
    limit: stories to evaluate (the first usable ones in split order); None: all.
    num_sentences: sentences per story (5 in the paper); the middle one is hidden.
    max_len: context budget in tokens (default cfg.max_len).
    draft_len, temperature, top_p, batch_size, seed: sampling settings (see humaneval_infill).
    num_examples_shown: stories whose fills are kept in the results.
    order: the order of the hidden sentence's positions (`masks.ORDERS`).
  """
  max_len = cfg.max_len if max_len is None else min(max_len, cfg.max_len)
  texts = data_lib.load_texts(dataset, split, text_key=text_key, data_dir=data_dir)
  stories, read = collect_stories(texts, num_sentences=num_sentences, limit=limit)
  if not stories:
    raise ValueError(f"{dataset} split {split!r}: none of the {read} texts read has "
                     f"{num_sentences} sentences")
  posed = []
  for story in stories:
    prefix, middle, suffix = (tokenizer.encode(story.prefix), tokenizer.encode(story.middle),
                              tokenizer.encode(story.suffix))
    fitted = span_infill.fit_context(prefix, len(middle), suffix, max_len)
    posed.append(None if fitted is None else
                 infilling.Example.from_span(fitted[0], middle, fitted[1]))
  usable = [i for i, example in enumerate(posed) if example is not None]
  results: dict[str, Any] = {
      "task": "story_infill",
      "settings": dict(dataset=dataset, split=split, text_key=text_key, limit=limit,
                       num_stories=len(stories), texts_read=read, num_sentences=num_sentences,
                       hidden_sentence=num_sentences // 2, max_len=max_len,
                       draft_len=draft_len, temperature=temperature, top_p=top_p,
                       batch_size=batch_size, seed=seed, order=order,
                       skipped_too_long=len(stories) - len(usable)),
      "methods": {},
  }
  if not usable:
    raise ValueError(f"none of the {len(stories)} stories fits the context budget of {max_len} "
                     "tokens with its middle sentence")
  # Only the stories that fit are scored (the skipped ones are counted in the settings).
  scored = [stories[i] for i in usable]
  references = [story.middle for story in scored]
  for method in methods:
    infilled = span_infill.infill_examples(
        params, cfg, [posed[i] for i in usable], jax.random.key(seed), method=method,
        batch_size=batch_size, draft_len=draft_len, temperature=temperature, top_p=top_p,
        order=order)
    fills = [tokenizer.decode(posed[i].middle(tokens).tolist())
             for i, tokens in zip(usable, infilled.tokens)]
    scores = rouge_scores(fills, references)
    examples = [dict(prefix=s.prefix, reference=s.middle, fill=f, suffix=s.suffix)
                for s, f in itertools.islice(zip(scored, fills), num_examples_shown)]
    results["methods"][method] = dict(**scores, count=len(scored), sampling=infilled.stats,
                                      examples=examples)
  return results


COLUMNS: tuple[report.Column, ...] = (
    ("rouge1", "ROUGE-1", lambda v: f"{100 * v:.2f}"),
    ("rouge2", "ROUGE-2", lambda v: f"{100 * v:.2f}"),
    ("rougeL", "ROUGE-L", lambda v: f"{100 * v:.2f}"),
    ("count", "stories", "d"),
)

TITLE = ("Story infilling ({dataset}/{split}): middle sentence of {num_sentences}, oracle length, "
         "ROUGE F1 x 100, T={temperature:g}")  # of results["settings"]


def table(results: dict[str, Any]) -> str:
  """The printed table of `evaluate`'s results: ROUGE and the sampling cost per method."""
  return report.methods_table(results, COLUMNS, TITLE.format(**results["settings"]))
