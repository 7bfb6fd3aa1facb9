"""Masked-LM pretraining with Chinese whole-word masking (BERT, Devlin et al. 2019; see
:mod:`.model` for the method and its deviations): model, data, task (the training recipe) and
runner (masked-token accuracy)."""
