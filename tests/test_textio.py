import pytest

from bertkit.core.errors import BertkitError
from bertkit.core.textio import map_in_order, output_stream, read_lines, read_records


def test_invalid_utf8_reports_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("好\n也好\n".encode() + b"\xff\xfe oops\n")
    with pytest.raises(BertkitError, match=r"bad.txt:3: invalid UTF-8"):
        list(read_lines(str(p)))


def test_binary_and_empty(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(BertkitError, match="binary"):
        list(read_lines(str(tmp_path / "b.bin")))
    with pytest.raises(BertkitError, match="empty"):
        list(read_lines(str(tmp_path / "e.txt")))


def test_txt_keeps_blank_lines_tsv_rejects_them(tmp_path):
    (tmp_path / "a.txt").write_text("一\n\n三\n", encoding="utf-8")
    assert [r["text"] for _, r in read_records(str(tmp_path / "a.txt"))] == ["一", "", "三"]
    (tmp_path / "a.tsv").write_text("label\ttext\nx\t一\n\ny\t二\n", encoding="utf-8")
    with pytest.raises(BertkitError, match="a.tsv:3: blank line"):
        list(read_records(str(tmp_path / "a.tsv")))


def test_map_in_order_sorts_inside_windows_and_restores_order():
    items = ["ccc", "a", "bb", "dddd", "e", "ff"]
    seen_batches = []

    def fn(batch):
        seen_batches.append(list(batch))
        return [s.upper() for s in batch]

    out = list(map_in_order(iter(items), fn, length=len, batch_size=2, window=3))
    assert out == [s.upper() for s in items]
    assert seen_batches[0] == ["a", "bb"]  # shortest first inside the first window
    assert all(len(b) <= 2 for b in seen_batches)


def test_output_stream_is_atomic(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with output_stream(str(target)) as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]
    with output_stream(str(target)) as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n"
