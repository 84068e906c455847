"""pass@k: the estimator, stop-token truncation, the harness proven on HumanEval references."""

import json
from math import comb

import pytest
from hypothesis import given, settings, strategies as st

from babeltower.errors import BabelError
from babeltower.evaluate.humaneval import load_humaneval
from babeltower.evaluate.passk import (Problem, estimate_pass_at_k, execute_samples,
                                       generate_completions, partial_samples_path, pass_at_k,
                                       read_problems_file, truncate_at_stop)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n), st.integers(1, n))))
def test_estimator_equals_the_combinatorial_definition(nck):
    n, c, k = nck
    exact = 1.0 - comb(n - c, k) / comb(n, k)
    assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_estimator_edge_cases_and_large_n_is_stable():
    assert estimate_pass_at_k(10, 0, 1) == 0.0
    assert estimate_pass_at_k(10, 10, 5) == 1.0
    assert estimate_pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # comb() of this size would overflow a float; the product form does not
    v = estimate_pass_at_k(2000, 7, 100)
    assert 0.0 < v < 1.0
    with pytest.raises(ValueError):
        estimate_pass_at_k(5, 1, 6)


def test_truncate_at_stop_takes_the_earliest():
    text = "    return x\n\ndef other():\n    pass\n# comment"
    assert truncate_at_stop(text, ["\n#", "\ndef"]) == "    return x\n"
    assert truncate_at_stop("abc", []) == "abc"


def test_humaneval_references_pass_164_of_164_in_our_sandbox(tmp_path):
    s = pass_at_k(problems="humaneval", references=True, workers=2, out=tmp_path / "he",
                  progress=False)
    row = s["checkpoints"][0]
    assert row["problems"] == 164 and row["solved"] == 164 and row["pass@1"] == 1.0
    summary = json.loads((tmp_path / "he" / "references" / "summary.json").read_text())
    assert summary["provenance"]["data_sha256"]["problems"]
    lines = (tmp_path / "he" / "references" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 164 and json.loads(lines[0])["status"] == "pass"


def test_wrong_completions_fail():
    probs = [Problem.model_validate(p) for p in load_humaneval()[:12]]
    rows = execute_samples(probs, {i: ["    return None\n"] for i in range(12)},
                           workers=2, timeout=5, progress=False)
    assert len(rows) == 12
    assert sum(r["status"] == "pass" for r in rows) == 0
    loop = execute_samples(probs[:1], {0: ["    while True: pass\n"]}, timeout=1,
                           progress=False)
    assert loop[0]["status"] == "timeout"


def test_resume_uses_finished_samples(tmp_path):
    probs = [dict(name=f"p{i}", language="python", prompt="def f():\n",
                  tests="assert f() == 1\n", stop_tokens=["\ndef"],
                  canonical_solution="    return 1\n") for i in range(3)]
    out = tmp_path / "run"
    part = partial_samples_path(out / "references")
    part.parent.mkdir(parents=True)
    # a finished problem recorded as failed must be kept, not re-run
    part.write_text(json.dumps({"problem": "p0", "language": "python", "sample": 0,
                                "completion": "x", "status": "fail", "time": 0.0}) + "\n"
                    + '{"problem": "p1", "sam')  # a line cut by an interruption
    s = pass_at_k(problems=probs, references=True, out=out, progress=False)
    assert s["checkpoints"][0]["solved"] == 2
    assert not part.exists() and not (out / ".partial").exists()
    assert sorted(p.name for p in (out / "references").iterdir()) == ["samples.jsonl",
                                                                     "summary.json"]


def test_bad_problem_file_names_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    good = dict(name="a", language="python", prompt="", tests="", stop_tokens=[])
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "language": "klingon"}) + "\n")
    with pytest.raises(BabelError, match=r"p.jsonl:2: .*unknown language"):
        read_problems_file(f)
    f.write_text(json.dumps({"name": "a"}) + "\n")
    with pytest.raises(BabelError, match=r"p.jsonl:1: bad problem row"):
        read_problems_file(f)
    with pytest.raises(BabelError, match="not found"):
        read_problems_file(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def tiny_lm():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<eos>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval(), tok


def test_generation_batched_left_padded_and_cut_at_stop(tiny_lm):
    model, tok = tiny_lm
    prompts = ["def f(x):\n", "a much longer prompt here\n", "x"]
    stops = [["\n"], ["e"], []]
    out = generate_completions(model, tok, prompts, stops, n=3, temperature=1.0,
                               max_new_tokens=12, batch_size=4, seed=1, progress=False)
    assert [len(o) for o in out] == [3, 3, 3]
    assert all("\n" not in c for c in out[0]) and all("e" not in c for c in out[1])
    # a batch member's left padding does not change its greedy completion
    alone = generate_completions(model, tok, prompts[:1], stops[:1], max_new_tokens=12,
                                 batch_size=1, progress=False)
    batched = generate_completions(model, tok, prompts, stops, max_new_tokens=12,
                                   batch_size=3, progress=False)
    assert alone[0] == batched[0][:1]
    # sampling is reproducible from the seed
    again = generate_completions(model, tok, prompts, stops, n=3, temperature=1.0,
                                 max_new_tokens=12, batch_size=4, seed=1, progress=False)
    assert again == out


def test_pass_at_k_with_a_model_writes_one_row_per_sample(tiny_lm, tmp_path):
    model, tok = tiny_lm
    probs = [dict(name="p0", language="python", prompt="x = 1\n", tests="assert x == 1\n",
                  stop_tokens=["\n"])]
    s = pass_at_k(problems=probs, model=model, tokenizer=tok, out=tmp_path / "o", n=2,
                  k=[1, 2], temperature=1.0, max_new_tokens=4, progress=False)
    rows = (tmp_path / "o" / "model" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert {json.loads(r)["sample"] for r in rows} == {0, 1}
    assert set(s["checkpoints"][0]) >= {"pass@1", "pass@2"}


def test_summary_bootstrap_interval_over_problems():
    from babeltower.evaluate.passk import summarize

    probs = [Problem(name=f"p{i}", language="python", prompt="", tests="") for i in range(20)]
    rows = [{"problem": f"p{i}", "status": "pass" if i < 5 else "fail"} for i in range(20)]
    s = summarize(probs, rows, [1])
    assert s["pass@1"] == 0.25
    lo, hi = s["pass@1_ci95"]
    assert 0.0 <= lo < 0.25 < hi <= 0.6
    all_pass = summarize(probs, [dict(r, status="pass") for r in rows], [1])
    assert all_pass["pass@1_ci95"] == [1.0, 1.0]


def test_series_pass_at_k_feeds_the_transfer_share(tiny_lm, tmp_path, monkeypatch):
    """pass@k over a checkpoint series -> per-checkpoint results -> knowledge-transfer share;
    an interrupted checkpoint resumes without regenerating finished problems."""
    from babeltower.evaluate import passk as passk_mod
    from babeltower.evaluate.transfer import knowledge_transfer, load_series

    model, tok = tiny_lm
    run = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        model.save_pretrained(run / f"step-{step:08d}")
        tok.save_pretrained(run / f"step-{step:08d}")
    # completions land in a comment (cut at the newline): "a" always passes, "b" never
    probs = [dict(name="HumanEval_0_a", language="python", prompt="x = 1\n#",
                  tests="assert x == 1\n", stop_tokens=["\n"]),
             dict(name="HumanEval_1_b", language="python", prompt="x = 1\n#",
                  tests="assert x == 2\n", stop_tokens=["\n"])]
    out = tmp_path / "passk"
    # an earlier, interrupted run of step 2 finished problem a
    part = partial_samples_path(out / "step-00000002")
    part.parent.mkdir(parents=True)
    part.write_text(json.dumps({"problem": "HumanEval_0_a", "language": "python", "sample": 0,
                                "completion": " done before", "status": "pass",
                                "time": 0.1}) + "\n")
    generated = []
    real = passk_mod.generate_completions

    def spy(model, tokenizer, prompts, *a, skip=None, **kw):
        generated.append(sorted(set(range(len(prompts))) - (skip or set())))
        return real(model, tokenizer, prompts, *a, skip=skip, **kw)

    monkeypatch.setattr(passk_mod, "generate_completions", spy)
    top = pass_at_k(tmp_path / "run", probs, out=out, max_new_tokens=6, progress=False)
    assert [r["checkpoint"] for r in top["checkpoints"]] == ["step-00000001", "step-00000002"]
    assert generated == [[0, 1], [1]]  # step 2 only generated the unfinished problem
    rows2 = [json.loads(x) for x in (out / "step-00000002" / "samples.jsonl").read_text()
             .splitlines()]
    assert rows2[0]["completion"] == " done before"
    # through the series runner: each row carries the weights it read; its resume state
    # is gone once summary.json is written
    assert all(len(r["weights_sha256"]) == 64 for r in top["checkpoints"])
    assert not (out / ".series").exists()
    series = load_series(out)
    assert series[0][2] == {"HumanEval_0": True, "HumanEval_1": False}
    df = knowledge_transfer({"HumanEval_0": True, "HumanEval_1": True},
                            {"HumanEval_0": False, "HumanEval_1": True}, series)
    assert list(df.share) == [1.0, 1.0] and list(df.subset_size) == [1, 1]


@pytest.mark.parametrize("args, message", [
    (["--problems", "{dir}"], "problems file is not a file"),
    (["--problems", "{dir}/random.jsonl"], "not a UTF-8 JSONL file"),
    (["--problems", "builtin:python", "--n", "0"], "bad --n"),
    (["--problems", "builtin:python", "--k", "0"], "bad --k"),
], ids=["directory", "binary-file", "n-0", "k-0"])
def test_pass_at_k_bad_inputs_are_one_line_and_exit_2(tmp_path, args, message):
    import os
    import sys
    from pathlib import Path

    import babeltower
    from procs import run as run_process

    (tmp_path / "random.jsonl").write_bytes(bytes(range(256)) * 8)
    src = str(Path(babeltower.__file__).resolve().parent.parent)
    cmd = [sys.executable, "-c", "import sys; from babeltower.cli import main; sys.exit(main())",
           "eval", "pass-at-k", "--references", "--out", str(tmp_path / "out"),
           *[a.format(dir=tmp_path) for a in args]]
    r = run_process(cmd, timeout=120, env={**os.environ, "PYTHONPATH": src})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
