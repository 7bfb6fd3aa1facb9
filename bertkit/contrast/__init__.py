"""Contrastive sentence embeddings (SG-BERT, SimCSE, CoSENT, in-batch negatives): the objectives so
far (``model.py``); the training recipe and `bertkit contrast` come next (issue 17)."""
