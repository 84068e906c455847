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
    assert main(["eval", "run", str(f)]) == 1     # it ran and did not pass
    assert "status: fail  exit: 4" in capsys.readouterr().out


@pytest.mark.parametrize("content,needle", [
    (None, "is a directory"), (b"\x80\x00print(1)", "binary file"),
    (b"print('caf\xe9')", "not UTF-8"), (b"  \n", "is empty")])
def test_run_refuses_bad_program_files(tmp_path, capsys, content, needle):
    f = tmp_path / "prog.py"
    if content is None:
        f.mkdir()
    else:
        f.write_bytes(content)
    assert main(["eval", "run", str(f), "--language", "python"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


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


def test_loss_and_cloze_through_the_cli(tmp_path, capsys):
    import sys

    import numpy as np

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_eval_loss import EOS, VOCAB, char_tokenizer, tiny_model

    from babeltower.corpus.shards import ShardWriter, write_manifest

    data = tmp_path / "data"
    w = ShardWriter(data / "php" / "validation", np.uint16, EOS)
    for n in (20, 30):
        w.add(np.arange(1, n + 1) % (VOCAB - 1) + 1, n_bytes=2 * n)
    write_manifest(data, {"languages": {"php": {"validation": w.close()}}, "eos_id": EOS,
                          "vocab_size": VOCAB, "dtype": "uint16"})
    ck = tmp_path / "run" / "checkpoints" / "step-00000004"
    tiny_model().save_pretrained(ck)
    char_tokenizer().save_pretrained(ck)
    rc = main(["eval", "loss", str(tmp_path / "run"), "--data", str(data), "-l", "php",
               "--out", str(tmp_path / "loss.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "loss.json").read_text())["rows"]
    assert rows[0]["tokens"] == 50 and rows[0]["bytes"] == 100 and rows[0]["step"] == 4
    # the cloze command on the same checkpoint (char-level model: vocab of its tokenizer)
    from transformers import LlamaConfig, LlamaForCausalLM

    ck2 = tmp_path / "run2" / "step-00000001"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(char_tokenizer().get_vocab()), hidden_size=16,
                                 intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=256)).save_pretrained(ck2)
    char_tokenizer().save_pretrained(ck2)
    rc = main(["eval", "cloze", str(tmp_path / "run2"), "--suite", "python-php",
               "--out", str(tmp_path / "cloze.json")])
    assert rc == 0
    rec = json.loads((tmp_path / "cloze.json").read_text())
    assert {r["side"] for r in rec["rows"]} == {"primary", "new"}
