"""Sequence classification (BERT, Devlin et al. 2019, section 4.1): model, data, task (the
fine-tuning recipe over the shared loop) and runner (:class:`.runner.Classifier`)."""
