"""TextEncoder: the streaming batch encoder gives exactly what one call per text gives."""

from transformers import AutoTokenizer

from bertkit.core.encoding import TextEncoder, longest_first


def test_encode_stream_matches_encode_text_by_text(tiny_model):
    encoder = TextEncoder(AutoTokenizer.from_pretrained(str(tiny_model)), max_length=12)
    items = [("球队比赛", None), ("股票基金" * 9, None), ("", None),  # a long text splits into windows
             ("进球教练", "银行"), ("冠军" * 8, "股票" * 8), ("教练", None)]  # a pair cut to fit, mixed with singles
    one_by_one = TextEncoder(encoder.tokenizer, max_length=12)
    expected = [one_by_one.encode(a, b) for a, b in items]
    assert len(expected[1]) > 1 and one_by_one.truncated_pairs == 1  # the cases above are what they claim
    assert list(encoder.encode_stream(items, chunk=4)) == expected  # 4: chunks split the list and its pairs
    assert encoder.truncated_pairs == 1


def test_longest_first_matches_the_trimming_loop():
    def by_loop(a: int, b: int, budget: int) -> tuple[int, int]:
        while a + b > budget:
            a, b = (a - 1, b) if a >= b else (a, b - 1)
        return a, b

    for budget in range(5, 30):
        for a in range(0, 40):
            for b in range(0, 40):
                assert longest_first(a, b, budget) == by_loop(a, b, budget), (a, b, budget)
