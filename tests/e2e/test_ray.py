"""`--engine ray` writes, row for row, the records of single-process `mlmkit fill`/`score` on ELI5
sentences with bad records in the errors file; a worker killed mid-job and a job SIGKILLed and
rerun both end with every record exactly once; other settings into the same directory are
refused; and without Ray the command says in one line how to install it."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlmkit.cli.main import main

KILLER = Path(__file__).with_name("ray_killer.py")
SHARD_ROWS = 16


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs for this module's jobs; its address for a second driver."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def sentences(texts: list[str], n: int, mask: bool, seed: int = 0) -> list[str]:
    """`n` ELI5 answer sentences of 6-30 words, with one word masked if `mask`."""
    rng, out = random.Random(seed), []
    for t in texts:
        for s in t.split(". "):
            words = s.split()
            if 6 <= len(words) <= 30 and len(out) < n:
                if mask:
                    words[rng.randrange(len(words))] = rng.choice(["<mask>", "[MASK]"])
                out.append(" ".join(words))
    return out


def write_inputs(d: Path, good: list[str], blank_of: str) -> Path:
    """A .jsonl and a .txt file of `good` texts with bad records among them: not a string,
    invalid JSON, `blank_of` (a text the engine refuses), too long, not UTF-8, a blank line."""
    d.mkdir()
    half = len(good) // 2
    a = [json.dumps({"text": t}) for t in good[:half]]
    a[3:3] = ['{"text": 5}', "{not json", json.dumps({"text": blank_of}),
              json.dumps({"text": "word " * 700 + "<mask>"})]
    (d / "a.jsonl").write_text("\n".join(a) + "\n")
    b = [t.encode() for t in good[half:]]
    b[5:5] = [b"caf\xe9 <mask> au lait", b""]
    (d / "b.txt").write_bytes(b"\n".join(b))  # no newline at the end
    return d


def single_process(tmp: Path, argv: list[str], d: Path) -> tuple[dict, dict, int]:
    """What `mlmkit fill`/`score --input F --output O` writes for each file, keyed by the row
    the Ray job gives it: (outputs, error messages, shards of `SHARD_ROWS`)."""
    outputs, errors, offset, shards = {}, {}, 0, 0
    for f in sorted(d.iterdir()):
        out = tmp / f"{f.name}.ref.jsonl"
        main([*argv, "--input", str(f), "--output", str(out), "--quiet"])
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        lines = f.read_bytes().split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        numbers = [n for n, line in enumerate(lines) if line.strip()]  # blank: no record
        assert len(numbers) == len(recs)
        for n, rec in zip(numbers, recs):
            if isinstance(rec, dict) and set(rec) == {"line", "error"}:
                assert rec["line"] == n + 1
                errors[offset + n] = rec["error"]
            else:
                outputs[offset + n] = rec
        offset += len(lines)
        shards += -(-len(lines) // SHARD_ROWS)
    return outputs, errors, shards


def close(a, b) -> bool:
    """Equal, floats to 1e-4 relative: a shard's batches are not the single process's, and a
    batch's padding changes float32 sums in the last digits."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-7)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def read_job(out: Path) -> tuple[list[int], dict[int, object], list[dict]]:
    """(rows in the order the files hold them, outputs by row, error records) of a job."""
    rows, outputs = [], {}
    for p in sorted(out.glob("part-*")):
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            recs = [(r["row"], json.loads(r["output"])) for r in pq.read_table(p).to_pylist()]
        else:
            recs = [(r["row"], r["output"]) for r in map(json.loads, p.read_text().splitlines())]
        rows += [r for r, _ in recs]
        outputs.update(recs)
    errors = [json.loads(ln) for ln in (out / "_errors.jsonl").read_text().splitlines()]
    return rows, outputs, errors


def check_against(out: Path, ref: tuple[dict, dict, int]) -> None:
    want_outputs, want_errors, _ = ref
    rows, outputs, errors = read_job(out)
    assert len(rows) == len(set(rows)) == len(want_outputs)  # every record once
    assert sorted(outputs) == sorted(want_outputs)
    bad = [r for r in want_outputs if not close(outputs[r], want_outputs[r])]
    assert not bad, (bad[:3], outputs[bad[0]], want_outputs[bad[0]])
    assert errors == [{"row": r, "error": m} for r, m in sorted(want_errors.items())]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no torn writes left


FILL = ["fill", "--top-k", "3"]


@pytest.fixture(scope="module")
def fill_case(tmp_path_factory, sample_texts, splade):
    tmp = tmp_path_factory.mktemp("ray-fill")
    d = write_inputs(tmp / "in", sentences(sample_texts, 120, mask=True), "no mask here")
    return d, single_process(tmp, [FILL[0], str(splade), *FILL[1:]], d)


def ray_argv(model, d: Path, out: Path, cluster: str, *extra) -> list[str]:
    return [FILL[0], str(model), *FILL[1:], "--input", str(d / "*"), "--output", str(out),
            "--engine", "ray", "--address", cluster, "--workers", "2",
            "--shard-rows", str(SHARD_ROWS), "--quiet", *extra]


def test_fill_equals_the_single_process_records_and_a_rerun_resumes_or_refuses(
        capsys, tmp_path, cluster, splade, fill_case):
    d, ref = fill_case
    out = tmp_path / "out"
    assert main(ray_argv(splade, d, out, cluster)) == 1  # 1: some records failed
    err = capsys.readouterr().err.strip().splitlines()[-1]
    n, shards = len(ref[0]) + len(ref[1]), ref[2]
    assert f"{n} records in {shards} shards (0 already done, skipped): {len(ref[0])} written" in err
    assert f"; {len(ref[1])} errors in {out}/_errors.jsonl; 1 blank line skipped" in err
    check_against(out, ref)
    messages = " ".join(ref[1].values())
    for problem in ("not a string but int", "invalid JSON", "no mask token", "tokens, more than",
                    "not UTF-8"):
        assert problem in messages
    parts = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*")}

    assert main(ray_argv(splade, d, out, cluster)) == 1
    assert (f"({shards} already done, skipped): 0 written to {out} by this run, "
            f"{len(ref[0])} in all; {len(ref[1])} errors") in capsys.readouterr().err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*")} == parts

    assert main(ray_argv(splade, d, out, cluster, "--top-k", "5")) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out}: holds a job with other settings (top_k 3 there, 5 here); "
        "expected the same arguments to resume it, or another --output")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(ray_argv(splade, d, mine, cluster)) == 2
    assert "not empty and not written by an mlmkit batch job" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_score_equals_the_single_process_records_as_json_lines(
        capsys, tmp_path, tmp_path_factory, cluster, sample_texts, splade):
    d = write_inputs(tmp_path / "in", sentences(sample_texts, 60, mask=False, seed=1), "")
    argv = ["score", str(splade), "--metric", "word-l2r", "--per-token"]
    ref = single_process(tmp_path, argv, d)
    out = tmp_path / "out"
    assert main([*argv, "--input", str(d), "--output", str(out), "--engine", "ray",
                 "--workers", "2", "--shard-rows", str(SHARD_ROWS), "--format", "jsonl",
                 "--quiet"]) == 1
    check_against(out, ref)
    assert "no tokens to score" in " ".join(ref[1].values())
    with open(d / "a.jsonl", "a") as fh:  # the input grew since: not the same job
        fh.write('{"text": "One more."}\n')
    capsys.readouterr()
    assert main([*argv, "--input", str(d), "--output", str(out), "--engine", "ray",
                 "--shard-rows", str(SHARD_ROWS), "--format", "jsonl", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: --output {out}: its job read other input files (or they "
                          f"changed since: {d / 'a.jsonl'}: ")


def test_a_worker_killed_mid_job_loses_no_record_and_duplicates_none(
        tmp_path, cluster, splade, fill_case):
    from mlmkit.batch.ray import BatchJob, BatchResources, run_batch

    d, ref = fill_case
    killed: list[int] = []

    def kill_the_first_worker(record):
        if not killed:  # it has its next shard by now: one shard in flight per actor
            killed.append(record["pid"])
            os.kill(record["pid"], signal.SIGKILL)

    job = BatchJob("fill", str(splade), {"top_k": 3, "targets": None}, shard_rows=SHARD_ROWS)
    r = run_batch(job, str(d), tmp_path / "out", BatchResources(workers=2),
                  on_shard=kill_the_first_worker)
    assert (r.shards, r.skipped, r.outputs, r.errors) == (ref[2], 0, len(ref[0]), len(ref[1]))
    check_against(tmp_path / "out", ref)
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "out" / "_shards").glob("*.json")}
    assert killed[0] in pids and len(pids) >= 3  # the restarted actor did shards too


def test_a_job_sigkilled_then_rerun_ends_with_every_record_once(
        capsys, tmp_path, cluster, splade, fill_case):
    d, ref = fill_case
    out = tmp_path / "out"
    argv = ray_argv(splade, d, out, cluster)
    proc = subprocess.run([sys.executable, str(KILLER), "3", *argv], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # The completion records already there: their shards' outputs are not the rerun's.
    before = {p.name: json.loads(p.read_text())["outputs"]
              for p in (out / "_shards").glob("*[0-9].json")}
    done = len(before)
    assert 3 <= done < ref[2] and not (out / "_manifest.json").exists()
    assert main(argv) == 1
    # The dead driver's actors may still finish a shard while the rerun starts: as many or more.
    said = re.search(r"\((\d+) already done, skipped\): (\d+) written to .* by this run, "
                     r"(\d+) in all", capsys.readouterr().err)
    skipped, written, in_all = map(int, said.groups())
    assert done <= skipped < ref[2] and in_all == len(ref[0])
    assert 0 < written <= in_all - sum(before.values())
    if skipped == done:
        assert written == in_all - sum(before.values())
    check_against(out, ref)


def test_without_ray_the_command_says_how_to_install_it(capsys, monkeypatch, tmp_path, tiny_bert):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    (tmp_path / "in.txt").write_text("a <mask>\n")
    code = main(["fill", str(tiny_bert), "--input", str(tmp_path / "in.txt"), "--output",
                 str(tmp_path / "out"), "--engine", "ray"])
    assert (code, capsys.readouterr().err) == (
        2, "error: --engine ray needs Ray Data: pip install 'mlmkit[ray]'\n")
    assert not (tmp_path / "out").exists()
    code = main(["fill", str(tiny_bert), "--input", str(tmp_path / "in.txt"), "--output", "-",
                 "--engine", "ray"])  # stdout is no directory: no directory named '-' either
    assert (code, capsys.readouterr().err) == (
        2, "error: --engine ray: needs --output DIR (a directory for the shards' files)\n")
    assert main(["score", str(tiny_bert), "x", "--workers", "2"]) == 2
    assert capsys.readouterr().err == "error: --workers: only with --engine ray\n"


@pytest.mark.parametrize("flags, options, message", [
    (["--batch-size", "0"], {}, "--batch-size 0: expected an integer >= 1"),
    (["--max-tokens", "-5"], {}, "--max-tokens -5: expected an integer >= 1"),
    ([], {"top_k": 0}, "top_k 0: expected a positive integer"),
])
def test_bad_settings_are_refused_before_ray_starts_or_a_file_is_written(
        capsys, monkeypatch, tmp_path, tiny_bert, flags, options, message):
    # Without Ray importable: a setting checked only on the actors would say "needs Ray Data"
    # here, and with Ray it would start a cluster, write _job.json and fail every shard.
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "in.txt").write_text("a <mask>\n")
    out = tmp_path / "out"
    if not options:
        code = main(["fill", str(tiny_bert), "--input", str(tmp_path / "in.txt"), "--output",
                     str(out), "--engine", "ray", *flags])
        assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    from mlmkit.batch.ray import BatchJob, BatchResources, run_batch
    from mlmkit.errors import MlmkitError

    budget = {"batch_size": 0} if "--batch-size" in flags else (
        {"max_tokens": -5} if flags else {})
    job = BatchJob("fill", str(tiny_bert), {"top_k": 3, "targets": None, **options})
    with pytest.raises(MlmkitError) as e:
        run_batch(job, str(tmp_path / "in.txt"), out, BatchResources(**budget))
    # From Python the setting is named as its keyword: '--batch-size 0' is 'batch_size=0'.
    assert str(e.value) == re.sub(r"^--([a-z-]+) ", lambda m: m[1].replace("-", "_") + "=",
                                  message)
    assert not out.exists()


def test_a_shard_of_only_unreadable_lines_is_an_error_each_and_a_start_killed_early_resumes(
        capsys, tmp_path, cluster, tiny_bert):
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"\xff\n" * 50)
    # What a job killed before its _job.json leaves (earlier versions made _shards/ first).
    (out / "_shards").mkdir(parents=True)
    argv = ["fill", str(tiny_bert), "--input", str(src), "--output", str(out), "--engine", "ray",
            "--address", cluster, "--workers", "1", "--shard-rows", "50", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "50 records in 1 shard (0 already done, skipped): 0 written" in err, err
    errors = [json.loads(ln) for ln in (out / "_errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == list(range(50))
    assert all(e["error"].startswith(f"{src}: line {e['row'] + 1}: not UTF-8") for e in errors)
    assert main(argv) == 1
    assert "(1 already done, skipped)" in capsys.readouterr().err
