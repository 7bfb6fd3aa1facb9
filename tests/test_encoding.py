"""TextEncoder: the streaming batch encoder gives exactly what one call per text gives."""

from transformers import AutoTokenizer

from bertkit.core.encoding import TextEncoder


def test_encode_stream_matches_encode_text_by_text(tiny_model):
    encoder = TextEncoder(AutoTokenizer.from_pretrained(str(tiny_model)), max_length=12)
    items = [("球队比赛", None), ("股票基金" * 9, None), ("", None),  # a long text splits into windows
             ("进球教练", "银行"), ("冠军" * 8, "股票" * 8), ("教练", None)]  # a pair cut to fit, mixed with singles
    one_by_one = TextEncoder(encoder.tokenizer, max_length=12)
    expected = [one_by_one.encode(a, b) for a, b in items]
    assert len(expected[1]) > 1 and one_by_one.truncated_pairs == 1  # the cases above are what they claim
    assert list(encoder.encode_stream(items, chunk=4)) == expected  # 4: chunks split the list and its pairs
    assert encoder.truncated_pairs == 1
