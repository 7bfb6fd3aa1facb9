"""Sentence embeddings: poolings, BERT-whitening and BERT-flow (see :mod:`.model` and :mod:`.flow`
for the methods).  model (poolings, transforms), flow (the Glow), data (STS pairs, vector
output), task (fitting the transforms), pipeline (the sentence-transformers layout) and runner
(:class:`.runner.Embedder`)."""
