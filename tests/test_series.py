"""The checkpoint-series runner: one load per checkpoint for all measures, weight hashes in
every row, resume, outputs as one unit, and a 2-process torchrun sweep equal to 1 process."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest

import babeltower.checkpoints as ckpts
from babeltower.errors import BabelError
from babeltower.io import sha256_file
from babeltower.probes.lens import run_lens
from babeltower.series import SeriesOptions, run_series, write_outputs
from procs import run as run_process
from test_probes_helpers import save_run

BIN = Path(sys.executable).parent


class Norm:
    """A per-model measure: the norm of the first parameter (differs between models)."""

    def __init__(self, name="norm", scale=1.0):
        self.name, self.scale, self.models = name, scale, []

    def config(self):
        return {"scale": self.scale}

    def measure(self, model, tokenizer, ref):
        self.models.append(id(model))
        p = next(model.parameters())
        return [{"value": float(p.norm()) * self.scale, "vocab": len(tokenizer)}]


@pytest.fixture
def run(tmp_path):
    return save_run(tmp_path, "llama", steps=(0, 4, 8), n_layers=1)


def test_one_load_per_checkpoint_for_all_measures(run, monkeypatch, tmp_path):
    loads = []
    real = ckpts.load_checkpoint
    monkeypatch.setattr(ckpts, "load_checkpoint",
                        lambda ref, **kw: loads.append(ref.name) or real(ref, **kw))
    a, b = Norm("a"), Norm("b", scale=2.0)
    res = run_series(run, [a, b], options=SeriesOptions(progress=False))
    assert loads == ["step-00000000", "step-00000004", "step-00000008"]
    assert a.models == b.models                     # both measures saw the same model object
    assert [r["step"] for r in res.rows["a"]] == [0, 4, 8]
    for ra, rb in zip(res.rows["a"], res.rows["b"]):
        assert rb["value"] == pytest.approx(2 * ra["value"])
        want = sha256_file(run / "checkpoints" / ra["checkpoint"] / "model.safetensors")
        assert ra["weights_sha256"] == rb["weights_sha256"] == want
        assert ra["config_sha256"] != rb["config_sha256"]
    assert len({r["value"] for r in res.rows["a"]}) == 3
    with pytest.raises(BabelError, match="distinct names"):
        run_series(run, [Norm("a"), Norm("a")])


def test_weights_hash_computed_once_per_file_version(run, monkeypatch, tmp_path):
    monkeypatch.setenv("BABELTOWER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ckpts, "_HASHES", {})
    calls = []
    monkeypatch.setattr(ckpts, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    ref = ckpts.list_checkpoints(run)[0]
    h = ckpts.weights_sha256(ref)
    assert ckpts.weights_sha256(ref) == h and len(calls) == 1
    monkeypatch.setattr(ckpts, "_HASHES", {})          # a new process reads the disk cache
    assert ckpts.weights_sha256(ref) == h and len(calls) == 1
    f = Path(ref.path) / "model.safetensors"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))   # touched: re-hash
    assert ckpts.weights_sha256(ref) == h and len(calls) == 2


def test_resume_skips_finished_and_redoes_changed_weights(run, tmp_path):
    state = tmp_path / "state"
    m = Norm()

    def stop_after_first(name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_series(run, [m], state=state, options=SeriesOptions(progress=False),
                   on_checkpoint=stop_after_first)
    done = []
    res = run_series(run, [Norm()], state=state, options=SeriesOptions(progress=False),
                     on_checkpoint=done.append)
    assert done == ["step-00000004", "step-00000008"]
    full = run_series(run, [Norm()], options=SeriesOptions(progress=False))
    assert res.rows == full.rows
    # other settings: refused; a checkpoint rewritten since: measured again
    with pytest.raises(BabelError, match="other settings"):
        run_series(run, [Norm(scale=3.0)], state=state, options=SeriesOptions(progress=False))
    save_run(tmp_path, "llama", steps=(4,), n_layers=1)   # step 4 rewritten (seed 0 now)
    done.clear()
    run_series(run, [Norm()], state=state, options=SeriesOptions(progress=False),
               on_checkpoint=done.append)
    assert done == ["step-00000004"]


def test_outputs_appear_as_one_unit(tmp_path):
    out = tmp_path / "o"

    def broken(d):
        (d / "a.csv").write_text("x\n")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_outputs(out, broken)
    assert not out.exists() and not list(tmp_path.iterdir())
    write_outputs(out, lambda d: (d / "a.csv").write_text("x\n"))
    assert (out / "a.csv").read_text() == "x\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_rows_of_one(run, tmp_path):
    one = run_lens(run, primary="python", new="php", out=tmp_path / "one", progress=False)
    # start the 2-process sweep from a 1-process run interrupted after one checkpoint:
    # resume works across world sizes
    out = tmp_path / "two"

    def stop(name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_lens(run, primary="python", new="php", out=out, progress=False, on_checkpoint=stop)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    res = run_process(
        [str(BIN / "torchrun"), "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "babeltower.cli", "probe", "lens", str(run), "--new", "php", "--out", str(out),
         "--no-plot"], env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    two = pd.read_parquet(out / "lens.parquet")
    assert not (tmp_path / "two.partial").exists()
    one = one.reset_index(drop=True)
    # the same rows: every key column and hash exactly; the values exactly for the checkpoint
    # computed in this process, and to float32 rounding for those computed in the two
    # workers (BLAS kernels may round differently in another process: measured <= 1.2e-7)
    floats = ["value", "sem"]
    pd.testing.assert_frame_equal(one.drop(columns=floats), two.drop(columns=floats),
                                  check_exact=True)
    first = one.checkpoint == "step-00000000"
    for c in floats:
        assert (one[c][first].fillna(0) == two[c][first].fillna(0)).all()
        pd.testing.assert_series_equal(one[c], two[c], check_exact=False, rtol=1e-5, atol=1e-6)


def _cfg(**kw):
    from babeltower.experiment.config import ExperimentConfig

    return ExperimentConfig.model_validate({
        "primary": "python", "new_languages": ["php", "go"], "model": {"seq_len": 16},
        "primary_phase": {"tokens": 100, "lr": 1e-3}, "continual": {"tokens": 100, "lr": 1e-3},
        "scratch": {"tokens": 100},
        "evaluation": {"val_tokens_per_language": 64}, **kw})


def test_experiment_lape_inputs_read_64k_tokens_from_20_documents(tmp_path):
    import numpy as np

    from babeltower.corpus.shards import TokenShards
    from babeltower.experiment.measure import _lape_inputs
    from test_probes_helpers import packed_data

    rng = np.random.default_rng(0)
    # python: 25 documents of 4000 tokens - 17 reach 64k tokens, so 20 are read (80k);
    # php: 30 documents of 16 tokens - the split is smaller: all of it, and said so
    # go: 100 documents of 1000 tokens - 66 documents reach 65536 tokens
    docs = {"python": rng.integers(0, 60, size=(25, 4000)),
            "php": rng.integers(0, 60, size=(30, 16)),
            "go": rng.integers(0, 60, size=(100, 1000))}
    shards = TokenShards(packed_data(tmp_path / "d", docs))
    windows, counted = _lape_inputs(shards, _cfg())
    assert counted == {"python": {"tokens": 80000, "documents": 20, "split": "validation"},
                       "php": {"tokens": 480, "documents": 30, "split": "validation"},
                       "go": {"tokens": 66000, "documents": 66, "split": "validation"}}
    assert windows["php"].size == 480 and windows["go"].shape[1] == 16


def test_experiment_rows_keep_their_keys(tmp_path):
    from babeltower.experiment.measure import measure_series
    from test_probes_helpers import packed_data, planted_llama, planted_windows, tiny_tokenizer

    run = tmp_path / "run" / "checkpoints" / "step-00000003"
    planted_llama().save_pretrained(run)
    tiny_tokenizer().save_pretrained(run)
    data = packed_data(tmp_path / "d", planted_windows(n=8, seq=16))
    rows = measure_series(tmp_path / "run", data, _cfg(), pair_languages=[],
                          loss_languages=["python", "php"], split="validation")
    assert set(rows[0]) == {"checkpoint", "step", "tokens", "tokens_by_language", "loss", "bpb",
                            "bpb_se", "doc_bits", "doc_bytes", "eval_documents", "eval_tokens",
                            "weights_sha256"}
    # every scored document's bits and bytes: the paired items of the item-level bpb test
    for lang in ("python", "php"):
        assert len(rows[0]["doc_bits"][lang]) == len(rows[0]["doc_bytes"][lang]) \
            == rows[0]["eval_documents"][lang]
        bits, nbytes = sum(rows[0]["doc_bits"][lang]), sum(rows[0]["doc_bytes"][lang])
        assert abs(bits / nbytes - rows[0]["bpb"][lang]) < 1e-3   # rounded to 1e-4 bits each
    assert rows[0]["step"] == 3 and set(rows[0]["loss"]) == {"python", "php"}


def test_experiment_loss_at_the_ends_and_resume_from_state(tmp_path, monkeypatch):
    """The replay arm's loss_every reads loss at the first and last checkpoints only (the
    other rows keep their keys without loss), and a measurement interrupted after some
    checkpoints resumes from its state directory without measuring them again."""
    from babeltower.experiment import measure as measure_mod
    from babeltower.experiment.pipeline import LOSS_AT_ENDS
    from test_probes_helpers import packed_data, planted_llama, planted_windows, tiny_tokenizer

    for step in (0, 2, 4, 6):
        ck = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
        planted_llama(seed=step).save_pretrained(ck)
        tiny_tokenizer().save_pretrained(ck)
    data = packed_data(tmp_path / "d", planted_windows(n=8, seq=16))
    kw = dict(pair_languages=[], loss_languages=["python"], split="validation")
    every = measure_mod.measure_series(tmp_path / "run", data, _cfg(), **kw)
    ends = measure_mod.measure_series(tmp_path / "run", data, _cfg(), loss_every=LOSS_AT_ENDS, **kw)
    assert [r["step"] for r in ends] == [0, 2, 4, 6]
    assert ["loss" in r for r in ends] == [True, False, False, True]
    for a, b in zip(every, ends):
        if "loss" in b:
            assert a["loss"] == b["loss"]

    # interrupted: the third checkpoint's loss raises; the first two are kept in the state
    state = tmp_path / "state"
    real = measure_mod._Loss.measure
    seen: list[str] = []

    def flaky(self, model, tokenizer, ref):
        seen.append(ref.name)
        if ref.step == 4 and len(seen) == 3:
            raise KeyboardInterrupt
        return real(self, model, tokenizer, ref)

    monkeypatch.setattr(measure_mod._Loss, "measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        measure_mod.measure_series(tmp_path / "run", data, _cfg(), state=state, **kw)
    assert seen == ["step-00000000", "step-00000002", "step-00000004"]
    again = measure_mod.measure_series(tmp_path / "run", data, _cfg(), state=state, **kw)
    assert seen[3:] == ["step-00000004", "step-00000006"]      # the first two not again
    assert [r["loss"] for r in again] == [r["loss"] for r in every]
    assert not state.exists()                                   # removed once rows are back
