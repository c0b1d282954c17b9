"""A 64-piece vocabulary and a 1-layer, 32-wide bi-encoder: models built in milliseconds
for tests of encoding, retrieval and the index (shared by in-process tests and the
2-process worker script)."""

import os

import ml_collections

from blink_jax import tokenization
from blink_jax.models import biencoder

VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]",
         "[MASK]"] + [f"w{i}" for i in range(56)]


def tokenizer(directory) -> tokenization.Tokenizer:
  """Writes VOCAB to `directory`/vocab.txt and loads it."""
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(VOCAB) + "\n")
  return tokenization.Tokenizer.from_pretrained(directory)


def biencoder_model():
  """Random (seed 0), dropout-free, mean pooled."""
  cfg = ml_collections.ConfigDict(dict(
      init_from="", pooling="mean", projection_dim=0,
      bert=dict(vocab_size=len(VOCAB), hidden_size=32, num_layers=1, num_heads=4,
                intermediate_size=64, max_position=32, dropout=0.0,
                attention_dropout=0.0)))
  return biencoder.build(cfg, vocab_size=len(VOCAB), seed=0)
