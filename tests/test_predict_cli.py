"""`textft predict` over real files and stdin: formats, order and ids, streaming, and bad input."""

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import textft
from conftest import toy_rows
from textft.cli import main as cli
from textft.prediction_files import InputReader
from tiny_classifier import trained_run


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


@pytest.fixture(scope="module")
def rows():
    return [{"doc": f"d{i:03d}", **r} for i, r in enumerate(toy_rows(50, 11))]


@pytest.fixture(scope="module")
def expected(run, rows):
    return [r["label"] for r in textft.load(run, precision="fp32").predict([r["text"] for r in rows])]


def predict(run, *args):
    return cli(["predict", "--model", str(run), "--precision", "fp32", "--no-progress", *args])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_jsonl_keeps_order_and_ids(run, rows, expected, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert predict(run, "--input", str(src), "--output", str(tmp_path / "out.jsonl"), "--id-column", "doc",
                   "--chunk-size", "7", "--batch-size", "4") == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["id"] for o in out] == [r["doc"] for r in rows]
    assert [o["label"] for o in out] == expected
    err = capsys.readouterr().err
    assert "predicted 50 texts" in err and "texts/s" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary left


def test_csv_in_csv_out_with_top_k_and_accuracy(run, rows, expected, tmp_path, capsys):
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["doc", "review", "gold"])
        w.writeheader()
        w.writerows({"doc": r["doc"], "review": r["text"], "gold": r["label"]} for r in rows)
    assert predict(run, "--input", str(src), "--output", str(tmp_path / "out.csv"), "--text-column", "review",
                   "--id-column", "doc", "--label-column", "gold", "--top-k", "2") == 0
    with open(tmp_path / "out.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert [o["id"] for o in out] == [r["doc"] for r in rows]
    assert [o["label"] for o in out] == expected
    assert [o["true_label"] for o in out] == [r["label"] for r in rows]
    assert len(json.loads(out[0]["top_k"])) == 2
    assert "accuracy" in capsys.readouterr().err


def test_plain_text_lines_and_parquet(run, rows, expected, tmp_path):
    src = tmp_path / "in.txt"
    # a blank line is skipped, and row numbers stay the line numbers
    src.write_text("\n".join(r["text"] for r in rows[:3]) + "\n\n" + "\n".join(r["text"] for r in rows[3:]) + "\n")
    assert predict(run, "--input", str(src), "--output", str(tmp_path / "out.jsonl")) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["row"] for o in out] == [1, 2, 3, *range(5, 52)]
    assert [o["label"] for o in out] == expected

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    assert predict(run, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "p.jsonl"),
                   "--id-column", "doc", "--all-scores") == 0
    out = read_jsonl(tmp_path / "p.jsonl")
    assert [o["label"] for o in out] == expected and set(out[0]["scores"]) == {"neg", "pos"}


@pytest.mark.slow
def test_stdin_to_stdout(run, rows, expected):
    text = "".join(r["text"] + "\n" for r in rows)
    proc = subprocess.run([sys.executable, "-m", "textft", "predict", "--model", str(run), "--input", "-",
                           "--output", "-", "--precision", "fp32"], input=text, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["row"] for o in out] == list(range(1, 51))
    assert [o["label"] for o in out] == expected
    assert "predicted 50 texts" in proc.stderr


def test_reader_streams_without_reading_ahead(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("".join(f"text number {i}\n" for i in range(20000)))
    reader = InputReader(str(src))
    chunks = reader.chunks(100)
    first = next(chunks)
    assert [r.number for r in first] == list(range(1, 101))
    assert reader.bytes_read < 64 * 1024 < src.stat().st_size  # one read buffer, not the file
    assert sum(len(c) for c in chunks) == 19900
    reader.close()


def _non_utf8(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"fine line\nthe caf\xe9 was good\n")
    return ["--input", str(p)], "line 2 of"


def _huge_line(tmp_path):
    p = tmp_path / "in.txt"
    with open(p, "wb") as f:
        f.write(b"short\n" + b"x" * (10 * 1024 * 1024) + b"\n")
    return ["--input", str(p)], "longer than the 1,000,000 characters"


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return ["--input", str(path)]


CASES = {
    "missing_file": lambda t: (["--input", str(t / "nope.jsonl")], "does not exist"),
    "empty_file": lambda t: (_file(t, "e.jsonl", ""), "is empty"),
    "only_blank_lines": lambda t: (_file(t, "b.txt", "\n \n"), "holds no texts"),
    "wrong_column": lambda t: (_file(t, "w.jsonl", '{"txt": "good"}\n'), "column 'text' not found in line 1 of"),
    "wrong_csv_column": lambda t: (_file(t, "w.csv", "review,label\ngood,pos\n") + ["--text-column", "reveiw"],
                                   "did you mean 'review'"),
    "bad_json_later": lambda t: (_file(t, "j.jsonl", '{"text": "good"}\n' * 5 + "{oops\n") + ["--chunk-size", "2"],
                                 "line 6 of"),
    "empty_text_later": lambda t: (_file(t, "m.jsonl", '{"text": "good"}\n' * 5 + '{"text": ""}\n')
                                   + ["--chunk-size", "2"], "empty text"),
    "lone_surrogate": lambda t: (_file(t, "s.jsonl", '{"text": "good"}\n{"text": "bad \\ud800 film"}\n'),
                                 ["line 2 of", "lone surrogate"]),
    "nan_text": lambda t: (_file(t, "n.jsonl", '{"text": "good"}\n{"text": NaN}\n'), ["line 2 of", "missing text"]),
    "csv_empty_cell": lambda t: (_file(t, "e.csv", "text,label\ngood,pos\n,neg\n"), ["row 2 (line 3)", "empty text"]),
    "control_only_line": lambda t: (_file(t, "c.txt", "good\n\x00\x01\n"), ["line 2 of", "only control"]),
    "non_utf8": _non_utf8,
    "huge_line": _huge_line,
    "unknown_extension": lambda t: (_file(t, "in.docx", "x"), "cannot tell the format"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error_and_no_output(case, run, tmp_path, capsys):
    args, expected = CASES[case](tmp_path)
    out = tmp_path / "out" / "pred.jsonl"
    out.parent.mkdir()
    assert predict(run, *args, "--output", str(out)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    expected = [expected] if isinstance(expected, str) else expected
    assert len(lines) == 1 and all(e in lines[0] for e in expected), err
    assert "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # neither the output nor a temporary file


def test_failed_run_keeps_the_previous_output(run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "good"}\n' * 10 + '{"text": null}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    assert predict(run, "--input", str(src), "--output", str(out), "--chunk-size", "3") == 2
    assert "missing text" in capsys.readouterr().err
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_output_problems(run, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("good\n")
    assert predict(run, "--input", str(src), "--output", str(tmp_path / "no" / "dir" / "o.jsonl")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict(run, "--input", str(src), "--output", str(tmp_path / "o.xml")) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert predict(run, "--input", str(src), "--output", str(src)) == 2
    assert "must not be the input" in capsys.readouterr().err


@pytest.mark.slow
def test_terminated_run_leaves_no_partial_output(run, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "textft", "predict", "--model", str(run), "--input", "-",
                             "--output", str(out), "--chunk-size", "2", "--no-progress"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        proc.stdin.write("the film was good\n" * 5)  # the reader now waits for more lines
        proc.stdin.flush()
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob(".out.jsonl.tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def special_output(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"out-{kind}.jsonl"
    if kind == "symlink":
        target = tmp_path / "precious.jsonl"
        target.write_text("keep me\n")
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    return path


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_predict_refuses_a_special_output(run, tmp_path, kind):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a good film"}\n')
    out = special_output(tmp_path, kind)
    before = os.lstat(out)
    # A subprocess with a timeout: writing to a FIFO nobody reads blocks forever.
    try:
        proc = subprocess.run([sys.executable, "-m", "textft", "predict", "--model", str(run), "--input", str(source),
                               "--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("predict blocked on the special output")
    after = os.lstat(out)
    assert proc.returncode == 2 and "--output" in proc.stderr and "Traceback" not in proc.stderr
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    if kind == "symlink":
        assert (tmp_path / "precious.jsonl").read_text() == "keep me\n"
