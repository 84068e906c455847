"""Training in real subprocesses: SIGKILL + resume is bit-identical to an uninterrupted
run; DDP and FSDP under torchrun (2 CPU processes, gloo) match one process with the
same global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from babeltower.checkpoints import list_checkpoints, verify_checkpoint
from babeltower.train import TrainConfig, train
from procs import run, started
from train_fixtures import make_packed

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_packed(tmp_path_factory.mktemp("packed"))


def _env():
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _write_cfg(path: Path, data: Path, **kw) -> Path:
    d = dict(data=str(data), seq_len=32, micro_batch_size=4, progress=False, num_threads=1,
             peak_flops=1e11, log_interval=2, eval={"tokens_per_language": 128})
    d.update(kw)
    TrainConfig.from_dict(d).to_yaml(path)
    return path


def _final(run: Path) -> Path:
    return Path(list_checkpoints(run)[-1].path)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(data, tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", data, max_steps=30,
                     checkpoints={"every": 5, "log_spaced": False, "initial": False})
    cmd = [str(BIN / "babeltower"), "train", str(cfg)]
    # the uninterrupted reference runs in this process (same thread count: 1)
    train(TrainConfig.from_yaml(cfg, [f"out_dir={tmp_path / 'ref'}"]))

    killed = tmp_path / "killed"
    with started(cmd + ["--set", f"out_dir={killed}"], env=_env(),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        second = killed / "checkpoints" / "step-00000010"
        deadline = time.time() + 240
        while not second.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = [r.step for r in list_checkpoints(killed)]
    assert steps and steps[-1] < 30, f"the run finished before it could be killed: {steps}"

    again = run(cmd + ["--set", f"out_dir={killed}"], env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert [r.step for r in list_checkpoints(killed)] == list(range(5, 31, 5))
    a = (_final(tmp_path / "ref") / "model.safetensors").read_bytes()
    b = (_final(killed) / "model.safetensors").read_bytes()
    assert a == b
    info = json.loads((killed / "run.json").read_text())
    assert info["resumed_from"] and "step-000000" in info["resumed_from"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cfg: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(
        [str(BIN / "torchrun"), "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "babeltower.train",
         str(cfg), "--set", f"out_dir={out}", *extra],
        env=_env(), timeout=240)


@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(data, tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", data, max_steps=4,
                     checkpoints={"every": 2, "log_spaced": False, "initial": False})
    train(TrainConfig.from_yaml(cfg, [f"out_dir={tmp_path / 'one'}", "grad_accum=2"]))
    w1 = load_file(str(_final(tmp_path / "one") / "model.safetensors"))
    loss1 = [json.loads(x)["loss"] for x in (tmp_path / "one/metrics.jsonl").read_text()
             .splitlines() if json.loads(x)["kind"] == "train"]
    mf1 = json.loads((_final(tmp_path / "one") / "manifest.json").read_text())

    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        res = _torchrun(cfg, out, "--set", f"strategy={strategy}")
        assert res.returncode == 0, res.stderr[-3000:]
        assert [r.step for r in list_checkpoints(out)] == [2, 4]
        verify_checkpoint(_final(out))
        mf = json.loads((_final(out) / "manifest.json").read_text())
        # the two ranks together read exactly the single process's sequences
        assert mf["tokens_by_language"] == mf1["tokens_by_language"]
        assert mf["tokens_seen"] == mf1["tokens_seen"] == 4 * 2 * 4 * 32
        losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text()
                  .splitlines() if json.loads(x)["kind"] == "train"]
        assert losses == pytest.approx(loss1, abs=1e-4)
        w = load_file(str(_final(out) / "model.safetensors"))
        assert w.keys() == w1.keys()
        for k in w1:
            torch.testing.assert_close(w[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)
        info = json.loads((out / "run.json").read_text())
        assert info["world_size"] == 2 and info["strategy"] == strategy

    # resuming FSDP from its own step-2 checkpoint (full optimizer state re-sharded on
    # load) reproduces its step-4 weights byte for byte
    fsdp = tmp_path / "fsdp"
    first = (fsdp / "checkpoints/step-00000004/model.safetensors").read_bytes()
    shutil.rmtree(fsdp / "checkpoints/step-00000004")
    res = _torchrun(cfg, fsdp, "--set", "strategy=fsdp")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (fsdp / "checkpoints/step-00000004/model.safetensors").read_bytes() == first
