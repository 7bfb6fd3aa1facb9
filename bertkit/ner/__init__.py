"""Chinese named-entity recognition: character-level token classification with constrained
decoding (``bertkit train --task ner``, ``bertkit predict``, ``bertkit eval``)."""
