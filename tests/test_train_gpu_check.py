"""bench/gpu_check.py at toy size on CPU: the same code path as on a GPU, so the GPU check
cannot rot (throughput vs the HF Trainer, exact resume, probes over the series)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--device", "cpu", "--size", "toy", "--steps", "6", "--out", str(tmp_path)])
    rec = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rec["device"] == "cpu" and rec["versions"]["torch"] and rec["date"]
    assert rec["peak_flops"] > 0
    assert set(rec["throughput"]) == {"llama-nano", "gpt2-nano"}
    for r in rec["throughput"].values():
        assert r["tokens_per_s"] > 0 and r["hf_trainer_tokens_per_s"] > 0
        assert r["ratio_vs_hf_trainer"] == pytest.approx(
            r["tokens_per_s"] / r["hf_trainer_tokens_per_s"])
        assert 0 < r["mfu"] < 1
    res = rec["resume"]
    assert res["bit_identical"] is True
    assert res["series"][0] == 0 and res["resumed_from"] < res["series"][-1]
    assert rec["probes"]["checkpoints"] == len(res["series"])
    assert rec["probes"]["checkpoints_per_minute"] > 0
    # the toy size probes a cut suite (the same run_lens call), not the whole built-in one
    assert 0 < rec["probes"]["lens_prompts"] <= 8
    assert all(v > 0 for v in rec["probes"]["seconds"].values())
    assert rec["provenance"]["versions"]["torch"]
