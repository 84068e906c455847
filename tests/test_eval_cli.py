"""babeltower eval ...: thin commands, one-line errors for bad input."""

import json

import pytest

from babeltower.cli import main


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("babeltower: error:"), err
    return err[0]


def test_pass_at_k_references_through_the_cli(tmp_path, capsys):
    out = tmp_path / "ref"
    rc = main(["eval", "pass-at-k", "--problems", "humaneval", "--references", "--limit", "6",
               "--workers", "2", "--out", str(out)])
    assert rc == 0
    top = json.loads((out / "summary.json").read_text())
    assert top["checkpoints"][0]["solved"] == 6
    assert top["provenance"]["config"]["references"] is True


def test_transfer_through_the_cli(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"a": True, "b": True, "c": False}))
    (tmp_path / "n.json").write_text(json.dumps({"a": False, "b": True, "c": False}))
    (tmp_path / "s1.json").write_text(json.dumps({"a": True, "b": True, "c": False}))
    rc = main(["eval", "transfer", "--primary-only", str(tmp_path / "p.json"),
               "--new-only", str(tmp_path / "n.json"), "--checkpoint", str(tmp_path / "s1.json"),
               "--out", str(tmp_path / "t.json")])
    assert rc == 0
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["share"] == 0.5 and row["subset_size"] == 1


def test_run_a_program_file(tmp_path, capsys):
    f = tmp_path / "prog.py"
    f.write_text("import sys; sys.exit(4)\n")
    assert main(["eval", "run", str(f)]) == 0
    assert "status: fail  exit: 4" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["eval", "pass-at-k", "--problems", "/no/such.jsonl", "--references", "--out", "X"],
     "problems file not found"),
    (["eval", "pass-at-k", "--problems", "humaneval", "--n", "1", "--k", "5", "--references",
      "--out", "X"], "needs --n >= 5"),
    (["eval", "loss", "/no/such/run", "--data", "/no/data", "--out", "X"],
     "not a packed data directory"),
    (["eval", "cloze", "/no/such/run", "--suite", "python-klingon", "--out", "X"],
     "unknown language"),
    (["eval", "transfer", "--primary-only", "/no/p.json", "--new-only", "/no/n.json",
      "--checkpoint", "/no/c.json", "--out", "X"], "results not found"),
    (["eval", "run", "/no/such/prog.py"], "program not found"),
])
def test_bad_input_is_one_line_and_nothing_written(tmp_path, capsys, argv, needle):
    argv = [str(tmp_path / "X") if a == "X" else a for a in argv]
    rc = main(argv)
    assert needle in _one_line_error(capsys, rc)
    assert not (tmp_path / "X").exists()


def test_malformed_problem_row_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"name": "a", "language": "python", "prompt": "", "tests": ""}\n{oops\n')
    rc = main(["eval", "pass-at-k", "--problems", str(f), "--references",
               "--out", str(tmp_path / "o")])
    assert "bad.jsonl:2: not JSON" in _one_line_error(capsys, rc)
