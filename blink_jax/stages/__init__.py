"""The stages of BLINK's chain, one module each; `workdir.STAGES` declares what
each reads and writes.

  biencoder     train the bi-encoder                 -> WORKDIR/biencoder
  candidates    its top k per mention, stored         -> WORKDIR/candidates
  crossencoder  train the re-ranker on them           -> WORKDIR/crossencoder
  distill       the cross-encoder teaches the bi-encoder -> WORKDIR/distill
  linker        mention detection + linking, calibrated  -> WORKDIR/linker
  index         the final bi-encoder's entity index      -> WORKDIR/index
  pipeline      runs them in order, each resuming

Each trains through `blink_jax/trainer.py` and runs its models through
`blink_jax/inference/`.
"""
