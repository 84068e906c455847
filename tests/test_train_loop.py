"""The training loop end to end on tiny real shards: checkpoints, manifests, resume,
continual pre-training, and the bad-input paths through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from babeltower.checkpoints import list_checkpoints, verify_checkpoint
from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.train import TrainConfig, train
from babeltower.train import checkpointing as ck
from train_fixtures import make_packed

TINY = dict(seq_len=32, micro_batch_size=8, log_interval=3, progress=False,
            peak_flops=1e11, eval={"tokens_per_language": 256})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_packed(tmp_path_factory.mktemp("packed"))


def _cfg(data, out, **kw) -> TrainConfig:
    d = {**TINY, "data": str(data), "out_dir": str(out), "max_steps": 12,
         "checkpoints": {"every": 6, "log_until": 4}}
    d.update(kw)
    return TrainConfig.from_dict(d)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    return train(_cfg(data, tmp_path_factory.mktemp("runs") / "a"))


def _weights(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model.safetensors"))


def test_checkpoint_series_is_complete_and_loadable(run):
    from transformers import AutoModelForCausalLM

    refs = list_checkpoints(run)
    assert [r.step for r in refs] == [0, 1, 2, 4, 6, 12]
    assert [r.name for r in refs][-1] == "step-00000012"
    for r in refs:
        verify_checkpoint(r.path)
        assert (Path(r.path) / ck.STATE_FILE).exists()
        assert (Path(r.path) / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(refs[-1].path)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 6
    m, tok = refs[-1].load()
    assert tok("def f(): pass")["input_ids"]


def test_manifest_records_what_was_trained(run, data):
    from babeltower.mixture.sampler import MixtureSampler
    from babeltower.corpus.shards import TokenShards

    mf = json.loads((run / "checkpoints/step-00000012/manifest.json").read_text())
    for key in ("step", "tokens_seen", "tokens_by_language", "mixture", "config_sha256",
                "weights_sha256", "val_loss", "provenance"):
        assert key in mf
    assert mf["step"] == 12 and mf["tokens_seen"] == 12 * 8 * 32
    assert sum(mf["tokens_by_language"].values()) == mf["tokens_seen"]
    # exactly the sampler's first 96 sequences were trained on, in their languages
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    sampler = MixtureSampler(TokenShards(data), TrainConfig.model_validate(cfg).mixture or
                             mf["mixture"], 32, seed=cfg.seed)
    expected: dict[str, int] = {}
    for i in range(96):
        lang = sampler.locate(i)[0]
        expected[lang] = expected.get(lang, 0) + 32
    assert mf["tokens_by_language"] == expected
    assert set(mf["val_loss"]) == {"python", "php"}
    assert mf["provenance"]["config"]["max_steps"] == 12
    assert list(mf["weights_sha256"]) == ["model.safetensors"]


def test_training_learns_and_logs(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    evals = {r["step"]: r["val_loss"] for r in recs if r["kind"] == "eval"}
    assert [r["step"] for r in train_recs] == [3, 6, 9, 12]
    for r in train_recs:
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["grad_norm"] > 0 and r["lr"] > 0
    assert sorted(evals) == [0, 1, 2, 4, 6, 12]
    for lang in ("python", "php"):
        # from ~ln(vocab) at init to clearly lower: a broken loss/label shift would not
        assert evals[0][lang] > math.log(300) - 0.5
        assert evals[12][lang] < evals[0][lang] - 1.0
    info = json.loads((run / "run.json").read_text())
    assert info["peak_flops_per_device"] == 1e11 and info["parameters"]["total"] > 0
    assert info["config_sha256"] and info["versions"]["torch"]


def test_init_is_seeded(data, run):
    from babeltower.corpus.shards import TokenShards
    from babeltower.train.model import build_model

    cfg = _cfg(data, "unused")
    m, _ = build_model(cfg, TokenShards(data))
    step0 = _weights(run / "checkpoints/step-00000000")
    for k, v in m.state_dict().items():
        assert torch.equal(v, step0[k]), k
    m2, _ = build_model(_cfg(data, "unused", seed=1), TokenShards(data))
    assert not torch.equal(m2.state_dict()["lm_head.weight"], step0["lm_head.weight"])


def test_resume_after_interrupt_is_bit_identical(data, run, tmp_path, monkeypatch):
    out = tmp_path / "b"
    real_save = ck.save_checkpoint

    def crash_after_step_6(run_dir, step, *a, **kw):
        p = real_save(run_dir, step, *a, **kw)
        if step == 6:
            raise KeyboardInterrupt
        return p

    monkeypatch.setattr(ck, "save_checkpoint", crash_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, out))
    assert [r.step for r in list_checkpoints(out)][-1] == 6
    monkeypatch.setattr(ck, "save_checkpoint", real_save)
    train(_cfg(data, out))
    a = (run / "checkpoints/step-00000012/model.safetensors").read_bytes()
    b = (out / "checkpoints/step-00000012/model.safetensors").read_bytes()
    assert a == b
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [3, 6, 9, 12]        # nothing logged twice after the resume
    sa = ck.load_training_state(run / "checkpoints/step-00000012")
    sb = ck.load_training_state(out / "checkpoints/step-00000012")
    assert sa["tokens_by_language"] == sb["tokens_by_language"]
    # a changed recipe is refused (one line), unless forced
    with pytest.raises(BabelError, match="different config"):
        train(_cfg(data, out, max_steps=14))
    train(_cfg(data, out, max_steps=14), force=True)
    assert list_checkpoints(out)[-1].step == 14


def test_continual_pretraining_from_a_checkpoint(data, run, tmp_path):
    final = run / "checkpoints/step-00000012"
    out = train(_cfg(data, tmp_path / "cpt", init_from=str(final), max_steps=3,
                     mixture={"budgets": {"php": 2000}},
                     checkpoints={"log_spaced": False, "initial": True}))
    w0, w_final = _weights(out / "checkpoints/step-00000000"), _weights(final)
    assert all(torch.equal(w0[k], w_final[k]) for k in w_final)        # weights carried over
    st0 = ck.load_training_state(out / "checkpoints/step-00000000")
    assert st0["optimizer"]["state"] == {}                              # fresh optimizer
    mf = json.loads((out / "checkpoints/step-00000003/manifest.json").read_text())
    assert set(mf["tokens_by_language"]) == {"php"} and mf["tokens_by_language"]["php"] > 0
    info = json.loads((out / "run.json").read_text())
    assert info["init_from"] == str(final)


def test_keep_last_prunes_old_checkpoints(data, tmp_path):
    out = train(_cfg(data, tmp_path / "k", max_steps=4, eval={"tokens_per_language": 0},
                     checkpoints={"keep_last": 2}))
    assert [r.step for r in list_checkpoints(out)] == [2, 4]
    train(_cfg(data, tmp_path / "k", max_steps=4, eval={"tokens_per_language": 0},
               checkpoints={"keep_last": 2}))         # already done: resumes at 4, no-op
    assert [r.step for r in list_checkpoints(out)] == [2, 4]


def test_gpt2_preset_trains_and_reloads(data, tmp_path):
    import importlib.util

    from transformers import AutoModelForCausalLM

    out = train(_cfg(data, tmp_path / "g", model="gpt2-nano", max_steps=4, tensorboard=True,
                     eval={"tokens_per_language": 64, "interval": 1, "languages": ["py"]},
                     checkpoints={"log_spaced": False, "initial": False}))
    m = AutoModelForCausalLM.from_pretrained(out / "checkpoints/step-00000004")
    assert m.config.model_type == "gpt2"
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "eval"]
    # eval every step (interval 1; the checkpoint at 4 reuses the interval's eval), the
    # language alias resolved, only the asked-for language
    assert [e["step"] for e in evals] == [1, 2, 3, 4]
    assert all(set(e["val_loss"]) == {"python"} for e in evals)
    has_tb = importlib.util.find_spec("tensorboard") is not None
    assert (out / "tensorboard").exists() == has_tb   # optional: absent package is no error


# ---- bad input through the CLI: one line on stderr, exit 2, nothing half-written ----

def _cli(tmp_path, data, capsys, *extra, cfg_extra=None):
    cfg = {**TINY, "data": str(data), "out_dir": str(tmp_path / "run"), "max_steps": 2,
           **(cfg_extra or {})}
    path = tmp_path / "c.yaml"
    TrainConfig.from_dict(cfg).to_yaml(path)
    capsys.readouterr()
    rc = main(["train", str(path), *extra])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("override, message", [
    ("model=gpt5-huge", "unknown model preset"),
    ("mixture.budgets.go=100", "no go"),
    ("seq_len=-3", "seq_len"),
    ("data=/nonexistent/packed", "not a packed data directory"),
    ("eval.languages=[python, go]", "go has no 'validation' split"),
])
def test_cli_bad_input_is_one_line(tmp_path, data, capsys, override, message):
    rc, err = _cli(tmp_path, data, capsys, "--set", override)
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and err.startswith("babeltower: error:")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_runs(tmp_path, data, capsys):
    rc, _ = _cli(tmp_path, data, capsys, cfg_extra={"checkpoints": {"log_spaced": False}})
    assert rc == 0 and [r.step for r in list_checkpoints(tmp_path / "run")] == [0, 2]


def test_init_from_corrupt_or_mismatched_checkpoint(tmp_path, data, run, capsys):
    import shutil

    from transformers import AutoModelForCausalLM

    from babeltower.train.presets import preset_config

    bad = tmp_path / "corrupt"
    shutil.copytree(run / "checkpoints/step-00000012", bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    rc, err = _cli(tmp_path, data, capsys, "--set", f"init_from={bad}")
    assert rc == 2 and "corrupt checkpoint" in err and len(err.splitlines()) == 1

    incomplete = tmp_path / "incomplete"
    shutil.copytree(run / "checkpoints/step-00000012", incomplete)
    (incomplete / "model.safetensors").unlink()
    rc, err = _cli(tmp_path, data, capsys, "--set", f"init_from={incomplete}")
    assert rc == 2 and "incomplete checkpoint" in err and len(err.splitlines()) == 1

    other = tmp_path / "other-vocab"
    AutoModelForCausalLM.from_config(preset_config("nano", 999)).save_pretrained(other)
    rc, err = _cli(tmp_path, data, capsys, "--set", f"init_from={other}")
    assert rc == 2 and "vocab_size 999" in err and len(err.splitlines()) == 1


def test_init_from_with_another_tokenizer_of_the_same_size(tmp_path, run):
    other = make_packed(tmp_path / "other", languages=("python", "go"))
    assert json.loads((other / "manifest.json").read_text())["vocab_size"] == \
        json.loads((Path(TrainConfig.from_yaml(run / "config.yaml").data) / "manifest.json")
                   .read_text())["vocab_size"]
    with pytest.raises(BabelError, match="different tokenizer"):
        train(_cfg(other, tmp_path / "x", init_from=str(run)))
