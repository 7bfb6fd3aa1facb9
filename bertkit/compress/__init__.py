"""Compression of a fine-tuned BERT classifier, EdgeBERT-style (Tambe et al., MICRO 2021): stages
a user combines, each a function with the paper it comes from, applied in this order:

1. :mod:`.vocab`: vocabulary pruning to the tokens a corpus uses (TextPruner, Shen et al. 2022);
2. :mod:`.structured`: attention heads and FFN neurons removed by importance (Michel et al. 2019),
   with a distillation loss (Hinton et al. 2015) to win accuracy back;
3. :mod:`.sparse`: magnitude or movement pruning (Sanh et al. 2020) of the remaining Linear weights,
   stored as bitmask + values;
4. :mod:`.quantize`: int8 Linear layers (PyTorch dynamic quantization) and int8 or 8-bit float
   embedding tables.

:mod:`.model` saves the result as a bertkit model directory and registers the architecture that
builds it back (``bertkit-compressed``).  Each stage works in place on the model and returns a
JSON-able record of what it did; :func:`bertkit.compress.model.save_compressed` writes those
records into the manifest.
"""
