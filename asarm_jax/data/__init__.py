"""Data for asarm_jax: document sources, the SentencePiece tokenizer and the grain pipeline.

Typical use:
    texts = load_texts("stdlib", "train")
    tokenizer = train_tokenizer(texts, vocab_size=8192)
    batches = train_iterator("stdlib", tokenizer, seq_len=512, batch_size=32, seed=0)
    next(batches)  # {'tokens': int32 [32, 512], 'valid': bool [32, 512]}
"""
from asarm_jax.data.pipeline import eval_batches, make_dataset, train_iterator
from asarm_jax.data.sources import load_texts, open_source
from asarm_jax.data.stdlib_corpus import StdlibCorpus
from asarm_jax.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "StdlibCorpus",
    "Tokenizer",
    "eval_batches",
    "load_texts",
    "make_dataset",
    "open_source",
    "train_iterator",
    "train_tokenizer",
]
