"""`babeltower mixture` and `babeltower optimize` through the CLI entry point."""

import json

import numpy as np
import pytest
import yaml

from babeltower.cli import main
from babeltower.mixture import MixtureSampler, MixtureSpec, available_tokens
from test_mixture_optimize import TOKENS, loss_curve, peaked
from test_mixture_sampler import make_shards


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    return make_shards(tmp_path / "data", {"python": list(rng.integers(5, 60, 40)),
                                           "php": list(rng.integers(5, 60, 90))})


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("babeltower: error:") and "\n" not in err
    return err


def test_mixture_command_writes_a_spec_training_accepts(tmp_path, data, capsys):
    out = tmp_path / "m.yaml"
    rc = main(["mixture", "unimax", "--data", str(data.root), "-n", "2000", "-o", str(out)])
    assert rc == 0
    spec = MixtureSpec.from_yaml(out)
    assert spec.name == "unimax" and sum(spec.budgets.values()) == 2000
    assert spec.meta["provenance"]["data_sha256"]["manifest.json"]
    assert len(MixtureSampler(data, out, 16)) > 0
    capsys.readouterr()
    # existing output is not overwritten silently
    assert main(["mixture", "natural", "--data", str(data.root), "-o", str(out)]) == 2
    assert "already exists" in _one_line_error(capsys)


@pytest.mark.parametrize("args, needle", [
    (["mixture", "temperature-x", "--available", "python=10"], "unknown baseline"),
    (["mixture", "uniform", "--available", "python=10,php"], "lang=tokens"),
    (["mixture", "uniform"], "exactly one of"),
    (["mixture", "natural", "--available", "cobol=10"], "unknown language"),
    (["mixture", "uniform", "--available", "python=10,php=100", "-n", "100"], "python"),
])
def test_mixture_command_bad_input(tmp_path, capsys, args, needle):
    out = tmp_path / "m.yaml"
    assert main([*args, "-o", str(out)]) == 2
    assert needle in _one_line_error(capsys)
    assert not out.exists()


def test_optimize_command_end_to_end(tmp_path, data, capsys):
    avail = available_tokens(data)
    lines = ["language,step,tokens,loss,performance,trials"]
    for i, (t, lo, pf) in enumerate(zip(TOKENS, loss_curve(), peaked(3))):
        lines.append(f"php,{i},{t},{lo},{pf},400")
    runs = tmp_path / "metrics.csv"
    runs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "optimized.yaml"
    eta_p = avail["python"] // 2
    rc = main(["optimize", "--runs", str(runs), "--primary", "python", "--data", str(data.root),
               "--primary-tokens", str(eta_p), "--beta", "last_k", "-o", str(out)])
    assert rc == 0
    spec = MixtureSpec.from_yaml(out)
    # P* = 0.5 at the best checkpoint -> eta_php = eta_p
    assert spec.budgets == {"python": eta_p, "php": eta_p}
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["languages"]["php"]["p_star"] == pytest.approx(0.5)
    assert numbers["provenance"]["data_sha256"]["runs"]
    assert yaml.safe_load(out.read_text())["name"] == "optimized"
    MixtureSampler(data, spec, 8)   # training accepts it
    capsys.readouterr()

    bad = tmp_path / "bad.csv"
    bad.write_text("language,tokens,loss\nphp,0,abc\n")
    out2 = tmp_path / "o2.yaml"
    assert main(["optimize", "--runs", str(bad), "--primary", "python", "--data",
                 str(data.root), "-o", str(out2)]) == 2
    assert "not a number" in _one_line_error(capsys)
    assert not out2.exists() and not out2.with_suffix(".json").exists()


def test_stages_command(tmp_path, capsys):
    lines = ["language,tokens,loss,performance,trials"]
    for t, lo, pf in zip(TOKENS, loss_curve(), peaked(4)):
        lines.append(f"php,{t},{lo},{pf},400")
    for t, lo, pf in zip(TOKENS, loss_curve(), np.linspace(0, 0.6, 14)):
        lines.append(f"cpp,{t},{lo},{pf},400")
    runs = tmp_path / "metrics.csv"
    runs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "stages.json"
    assert main(["stages", "detect", "--runs", str(runs), "--bootstrap", "99", "-o", str(out)]) == 0
    res = json.loads(out.read_text())["stages"]
    assert res["php"]["call"] == "rise_then_drop" and res["php"]["peak_index"] == 4
    assert res["php"]["p_value"] <= 0.05
    assert res["cpp"]["call"] == "monotone"
    capsys.readouterr()
    assert main(["stages", "detect", "--runs", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in _one_line_error(capsys)
    no_noise = tmp_path / "no_noise.csv"
    no_noise.write_text("\n".join(x.rsplit(",", 1)[0] for x in lines) + "\n")
    assert main(["stages", "detect", "--runs", str(no_noise)]) == 2
    assert "no per-checkpoint uncertainty" in _one_line_error(capsys)


def test_stages_power_command(capsys):
    assert main(["stages", "power", "--checkpoints", "12", "--eval-size", "400", "--sims", "20",
                 "--bootstrap", "19"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("12 checkpoints, n=400: detection") and "false positives" in line
    assert main(["stages", "power", "--checkpoints", "12", "--eval-size", "0"]) == 2
    assert "zero eval size" in _one_line_error(capsys)
