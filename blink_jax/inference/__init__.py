"""Inference: what a serving process needs, and what training stages call.

  load       a trained stage's model from a workdir (parameters only), the tokenizer
  encode     run a tower over rows in fixed-size, sharded batches
  retrieve   a catalogue embedded once per model, exact top-k per world
  rerank     cross-encoder scores of candidate lists
  linker     the end-to-end Linker (mention detection, retrieval, re-ranking, NIL)
  calibration  mention and NIL thresholds from held-out documents

Nothing here imports a training stage: training imports inference, never the
reverse.
"""
