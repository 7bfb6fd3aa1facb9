"""``bertkit train --task ner`` and the NER halves of ``bertkit predict`` and ``bertkit eval``."""

from typing import Annotated

import typer

from .options import print_json

# the options of `bertkit train --task ner`, added to `train`
TRAIN_OPTIONS = {
    "fix_tags": (Annotated[bool, typer.Option("--fix-tags", help="ner: read a tag the scheme forbids (an I-X after O or after another type) as the start of an entity, as conlleval does, instead of refusing the file.")], False),
}


def train_ner(train_file, dev, model, cfg, max_length: int, save_fp16: bool, fix_tags: bool) -> None:
    from ..core.errors import UsageError
    from ..ner.task import run_ner_training

    if train_file is None:
        raise UsageError("--task ner needs TRAIN (CoNLL or JSONL)")
    run_ner_training(train_file, dev, model, cfg, max_length=max_length, save_fp16=save_fp16, fix_tags=fix_tags)


def evaluate_ner(test_file: str, model: str | None, max_length: int, batch_size: int) -> None:
    """``bertkit eval`` on an NER model: strict entity-level precision, recall and F1, overall and per type."""
    from ..ner.data import read_ner
    from ..ner.runner import NerTagger

    data = read_ner(test_file, fix_tags=True)  # scoring reads gold tags leniently, as conlleval
    tagger = NerTagger.load(model, max_length=max_length, batch_size=batch_size)
    print_json(tagger.evaluate(data.sentences, source=test_file))


def predict_entities(input_file: str, model: str, output: str | None, max_length: int, batch_size: int) -> None:
    """``bertkit predict`` on an NER model: one JSON line per input line with its entities."""
    import json

    from ..classify.data import read_examples
    from ..core.textio import output_stream
    from ..ner.runner import NerTagger, entity_record

    tagger = NerTagger.load(model, max_length=max_length, batch_size=batch_size)
    texts = (ex.text for ex in read_examples(input_file, labelled=False))
    with output_stream(output) as out:
        for text, entities in tagger.tagged(texts):
            out.write(json.dumps(entity_record(text, entities), ensure_ascii=False) + "\n")
