"""`mlmkit fill --input` reads Parquet, CSV and globs as training does, and an input whose
lines are all unreadable gives an error record for each rather than a traceback."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from mlmkit.cli.main import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fill_reads_parquet_csv_and_globs(capsys, tiny_roberta, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["The sun is a <mask> star.", "Why is the <mask> blue?"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("id,text\n1,Water <mask> at 100 degrees.\n")
    typed = [*texts, "Water <mask> at 100 degrees."]
    code, want, err = run(capsys, "fill", tiny_roberta, *typed, "--json", "--top-k", "2")
    assert code == 0 and len(want.splitlines()) == 3, err
    code, out, err = run(capsys, "fill", tiny_roberta, "--input", tmp_path / "*", "--json",
                         "--top-k", "2")
    assert code == 0 and out == want, err
    code, out, _ = run(capsys, "fill", tiny_roberta, "--input", tmp_path / "a.parquet",
                       "--json", "--top-k", "2")
    assert code == 0 and out.splitlines() == want.splitlines()[:2]


@pytest.mark.parametrize("kind", ["txt", "parquet"])
def test_fill_input_of_only_unreadable_records_gives_an_error_record_each(
        capsys, tiny_roberta, tmp_path, kind):
    src, dst = tmp_path / f"x.{kind}", tmp_path / "out.jsonl"
    if kind == "txt":
        src.write_bytes(b"\xff\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array([None], pa.string())}), src)
    code, _, err = run(capsys, "fill", tiny_roberta, "--input", src, "--output", dst, "--quiet")
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1 and "1 of 1 line could not be filled" in err
    unit = "line" if kind == "txt" else "row"  # each record named by its own place
    assert recs[0]["line"] == 1 and recs[0]["error"].startswith(f"{src}: {unit} 1: ")


def test_a_glob_names_the_file_of_a_bad_record_and_text_field_picks_the_text(capsys, tiny_roberta,
                                                                           tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"q": {"t": "The cat sat on the <mask>."}})
                                      + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"q": {"t": "A <mask> day."}}) + "\n"
                                      + json.dumps({"q": {"u": "x"}}) + "\n")
    dst = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "fill", tiny_roberta, "--input", tmp_path / "*.jsonl",
                       "--text-field", "q.t", "--output", dst, "--quiet")
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1 and "1 of 3 lines could not be filled" in err
    assert [len(r) for r in recs[:2]] == [5, 5]  # top 5 of each text read from q.t
    assert recs[2]["line"] == 2 and recs[2]["error"].startswith(f"{tmp_path / 'b.jsonl'}: line 2: ")


def test_fill_writes_into_a_device_a_fifo_or_dash_and_refuses_a_socket(capsys, tiny_roberta,
                                                                        tmp_path):
    fill = ["fill", tiny_roberta, "The sun is a <mask> star.", "--top-k", "2", "--quiet"]
    code, want, _ = run(capsys, *fill, "--json")
    assert code == 0 and len(want.splitlines()) == 1
    try:  # first a node of our own: a wrong implementation replaces it, not /dev/null
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert run(capsys, *fill, "--output", tmp_path / "null")[0] == 0
        assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    except PermissionError:
        pass  # not root: /dev is not ours to write in anyway
    assert run(capsys, *fill, "--output", "/dev/null")[0] == 0
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert run(capsys, *fill, "--output", "-") == (0, want, "")
    os.mkfifo(tmp_path / "pipe")
    reader = os.open(tmp_path / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert run(capsys, *fill, "--output", tmp_path / "pipe")[0] == 0
        assert os.read(reader, 1 << 16).decode() == want
    finally:
        os.close(reader)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        code, out, err = run(capsys, *fill, "--output", tmp_path / "sock")
    finally:
        sock.close()
    assert (code, out, err) == (2, "", f"error: --output {tmp_path / 'sock'}: is a socket; "
                                "expected a regular file, a character device or a FIFO\n")
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)


def test_fill_refuses_to_write_over_the_file_on_its_stdin(capsys, tiny_roberta, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("The sun is a <mask> star.\n")
    (tmp_path / "alias.txt").symlink_to(src)
    saved, fd = os.dup(0), os.open(src, os.O_RDONLY)
    try:
        os.dup2(fd, 0)  # `mlmkit fill M --output in.txt < in.txt`
        for argv in ([], ["-"], ["--input", "-"]):
            for out in (src, tmp_path / "alias.txt"):
                code, _, err = run(capsys, "fill", tiny_roberta, *argv, "--output", out)
                assert (code, err) == (2, f"error: --output {out}: is the file on stdin; "
                                       "writing it would destroy the texts being read; choose "
                                       "another output file\n")
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    assert src.read_text() == "The sun is a <mask> star.\n"


def test_score_input_of_only_unreadable_lines_gives_an_error_record_each(capsys, tiny_roberta,
                                                                        tmp_path):
    src, dst = tmp_path / "x.txt", tmp_path / "out.jsonl"
    src.write_bytes(b"\xff\n" * 50)
    code, _, err = run(capsys, "score", tiny_roberta, "--input", src, "--output", dst, "--quiet")
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1 and "50 of 50 lines could not be scored" in err, err
    assert [r["line"] for r in recs] == list(range(1, 51))
    assert all(r["error"].startswith(f"{src}: line {r['line']}: not UTF-8") for r in recs)


def test_fill_input_gives_an_error_record_for_a_text_past_its_candidate_budget(capsys,
                                                                               tiny_roberta,
                                                                               tmp_path):
    # 11 masks x top_k 100 = 1,100 candidates, past the default of 1,000 a text: an error in
    # its place, and the texts around it filled.
    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("The sun is a <mask> star.\n" + "<mask> " * 11 + "\nWhy is the <mask> blue?\n")
    code, _, err = run(capsys, "fill", tiny_roberta, "--input", src, "--output", dst,
                       "--top-k", "100", "--quiet")
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1 and "1 of 3 lines could not be filled" in err
    assert len(recs[0]) == len(recs[2]) == 100
    assert recs[1]["line"] == 2 and recs[1]["error"].endswith(
        "11 masks x top_k 100 = 1,100 candidates, more than the limit of 1,000 a text "
        "(--max-candidates)")
    code, _, err = run(capsys, "fill", tiny_roberta, "--input", src, "--output", dst,
                       "--top-k", "100", "--max-candidates", "1100", "--quiet")
    assert code == 0 and len(json.loads(dst.read_text().splitlines()[1])) == 11, err
