"""Checkpoint listing and loading: steps only from real step namings, the target dtype, and
one-line errors for corrupt or missing inputs (library and CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from babeltower.checkpoints import list_checkpoints
from babeltower.cli import main
from babeltower.errors import BabelError
from test_probes_helpers import tiny_model, tiny_tokenizer


def _model_dir(d):
    tok = tiny_tokenizer()
    tiny_model("llama", len(tok), n_layers=1).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("m") / "smollm2-hf")


def test_steps_only_from_step_namings(good, tmp_path):
    assert list_checkpoints(good)[0].step is None            # "smollm2-hf" is not step 2
    assert list_checkpoints(good, steps=[7])[0].step == 7
    series = tmp_path / "series"
    for name in ("step143000", "checkpoint-500", "revision-step1000", "model-v2"):
        (series / name).mkdir(parents=True)
        for f in good.iterdir():
            (series / name / f.name).symlink_to(f)
    refs = list_checkpoints(series)
    assert [(r.name, r.step) for r in refs] == [("checkpoint-500", 500),
                                                 ("revision-step1000", 1000),
                                                 ("step143000", 143000), ("model-v2", None)]
    assert [r.step for r in list_checkpoints(series, steps=[1, 2, 3, 4])] == [1, 2, 3, 4]
    with pytest.raises(BabelError, match="2 steps given for 4 checkpoints"):
        list_checkpoints(series, steps=[1, 2])
    # hub revisions (step100 -> 100, main -> None) need a cache offline: test_hub_revisions.py


def test_loads_in_the_target_dtype(good):
    model, _ = list_checkpoints(good)[0].load(dtype=torch.bfloat16, device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training


def _copy(good, tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    for f in good.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return d


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot load checkpoint"),
    ("random", "cannot load checkpoint"),
    ("config_type", "cannot load checkpoint"),
    ("config_json", "corrupt checkpoint config"),
    ("no_weights", "no weights"),
    ("no_tokenizer", "cannot load checkpoint"),
])
def test_corrupt_checkpoints_are_one_line(good, tmp_path, capsys, damage, message):
    d = _copy(good, tmp_path, "m")
    w = d / "model.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "random":
        w.write_bytes(bytes(range(256)) * 64)
    elif damage == "config_type":
        cfg = json.loads((d / "config.json").read_text())
        cfg["hidden_size"] = "thirty-two"
        (d / "config.json").write_text(json.dumps(cfg))
    elif damage == "config_json":
        (d / "config.json").write_text('{"model_type": "llama", ')
    elif damage == "no_weights":
        w.unlink()
    else:
        for f in d.glob("tokenizer*"):
            f.unlink()
    with pytest.raises(BabelError, match=message) as e:
        list_checkpoints(d)[0].load()
    assert len(str(e.value).splitlines()) == 1
    capsys.readouterr()
    rc = main(["probe", "lens", str(d), "--new", "php", "--out", str(tmp_path / "o"),
               "--no-plot"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()
