"""A hub id + revisions, offline: a Pythia-style series (two branches, ``step100`` and
``step200``, each a different tiny LLaMA, plus ``main`` pointing at step200's commit) in a
local Hugging Face cache laid out as ``huggingface_hub`` lays it out (``hub_fixtures``).

``huggingface_hub`` reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE once, at import, and
babeltower has no cache argument: so the hub side runs in a child process whose
environment is set before anything is imported - what a user does - with every network
connection refused and recorded (``hub_fixtures.NETWORK_GUARD``). What it returns is
checked here against the revisions' snapshot directories loaded directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import babeltower
from procs import run as run_process
from hub_fixtures import NETWORK_GUARD, add_ref, add_revision, repo_folder
from test_probes_helpers import CODE_SAMPLE, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow

REPO = "babel-org/tiny-series"
REVS = ["step100", "step200"]
SEEDS = {"step100": 100, "step200": 200}

# The hub side, run in the child (after NETWORK_GUARD): listing, snapshots, lens, loss.
DRIVER = r'''
import json, socket, sys
from babeltower.checkpoints import hub_snapshot, list_checkpoints
from babeltower.evaluate.loss import evaluate_loss
from babeltower.probes.lens import run_lens

p = json.loads(sys.argv[1])
refs = list_checkpoints("hub:" + p["repo"], revisions=p["revs"] + ["main"])
run_lens("hub:" + p["repo"], primary="python", new="php", revisions=p["revs"],
         out=p["lens"], progress=False)
evaluate_loss("hub:" + p["repo"], text=[p["text"]], revisions=p["revs"], out=p["loss"],
              progress=False)
try:                                    # the guard is live in this process
    socket.getaddrinfo("guard-selftest.invalid", 443)
except OSError:
    pass
json.dump({"refs": [[r.name, r.revision, r.step] for r in refs],
           "snapshots": {r.name: str(hub_snapshot(r)) for r in refs}}, open(p["result"], "w"))
'''

# The CLI as a user runs it (after NETWORK_GUARD): one (exit code, stderr) per command line.
CLI_DRIVER = r'''
import contextlib, io, json, sys
from babeltower.cli import main

p = json.loads(sys.argv[1])
out = []
for argv in p["argvs"]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append([rc, err.getvalue()])
json.dump(out, open(p["result"], "w"))
'''


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache (HF_HOME/hub), the staged model dirs, the commits and two text files."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "hf" / "hub"
    tok = tiny_tokenizer()
    commits = {}
    for rev in REVS:
        d = root / "stage" / rev
        tiny_model("llama", len(tok), seed=SEEDS[rev]).save_pretrained(d)
        tok.save_pretrained(d)
        commits[rev] = add_revision(cache, REPO, rev, d)
    add_ref(cache, REPO, "main", commits["step200"])     # Pythia: main = the last step
    text = root / "text"
    text.mkdir()
    python_part = CODE_SAMPLE.split("<?php")[0]
    (text / "a.py").write_text(python_part)
    (text / "b.py").write_text(python_part.replace("items", "values") * 2)
    return {"root": root, "cache": cache, "commits": commits, "text": text,
            "snapshot": {rev: repo_folder(cache, REPO) / "snapshots" / c
                         for rev, c in commits.items()}}


def _child_env(hub, net_log: Path, **hf) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    src = str(Path(babeltower.__file__).resolve().parents[1])   # this checkout's package
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NET_LOG=str(net_log),
               BABELTOWER_CACHE=str(hub["root"] / "babeltower-cache"),
               PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]), **hf)
    return env


def _run_child(hub, driver: str, params: dict, env: dict) -> dict:
    script = Path(params["result"]).with_suffix(".driver.py")
    script.write_text(NETWORK_GUARD + driver)
    proc = run_process([sys.executable, str(script), json.dumps(params)], env=env,
                       timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(params["result"]).read_text())


@pytest.fixture(scope="module")
def child(hub):
    """The hub side, run once for the module (HF_HOME points at the cache's parent)."""
    root = hub["root"]
    net_log = root / "net-main.log"
    params = {"repo": REPO, "revs": REVS, "text": str(hub["text"]), "lens": str(root / "lens"),
              "loss": str(root / "loss.json"), "result": str(root / "child.json")}
    res = _run_child(hub, DRIVER, params, _child_env(hub, net_log, HF_HOME=str(root / "hf")))
    res["net"] = net_log.read_text().splitlines() if net_log.exists() else []
    res["lens"] = pd.read_parquet(root / "lens" / "lens.parquet")
    res["lens_provenance"] = json.loads((root / "lens" / "provenance.json").read_text())
    res["loss"] = json.loads((root / "loss.json").read_text())
    return res


def _blob_sha256(snapshot: Path) -> str:
    return hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()


def test_revisions_resolve_in_order_to_their_commits(hub, child):
    assert child["refs"] == [["step100", "step100", 100], ["step200", "step200", 200],
                             ["main", "main", None]]
    for rev, commit in hub["commits"].items():
        assert (hub["cache"] / f"models--{REPO.replace('/', '--')}" / "refs" / rev
                ).read_text() == commit
        assert Path(child["snapshots"][rev]).resolve() == hub["snapshot"][rev].resolve()
    assert Path(child["snapshots"]["main"]).name == hub["commits"]["step200"]
    # nothing tried the network, and the guard was live: it caught the child's self-test
    assert child["net"] == ["('getaddrinfo', 'guard-selftest.invalid')"]


def test_recorded_weights_are_the_snapshot_files(hub, child):
    want = {rev: _blob_sha256(hub["snapshot"][rev]) for rev in REVS}
    assert want["step100"] != want["step200"]
    assert child["lens_provenance"]["weights_sha256"] == want
    assert child["loss"]["provenance"]["weights_sha256"] == want
    lens = child["lens"]
    for rev in REVS:
        assert set(lens.loc[lens.checkpoint == rev, "weights_sha256"]) == {want[rev]}
    assert {r["checkpoint"]: r["weights_sha256"] for r in child["loss"]["rows"]} == want


def test_lens_per_revision_equals_its_snapshot_dir(hub, child, monkeypatch, tmp_path):
    from babeltower.probes.lens import run_lens

    monkeypatch.setenv("BABELTOWER_CACHE", str(tmp_path))
    keys = ["layer", "side", "pair_language", "kind", "measure"]
    hub_lens = child["lens"]
    assert list(hub_lens.checkpoint.unique()) == REVS
    assert list(hub_lens.step.unique()) == [100, 200]
    by_rev = {rev: hub_lens[hub_lens.checkpoint == rev].set_index(keys)["value"]
              for rev in REVS}
    for rev in REVS:
        direct = run_lens(hub["snapshot"][rev], primary="python", new="php", progress=False)
        direct = direct.set_index(keys)["value"]
        assert len(direct) == len(by_rev[rev]) > 100
        diff = (by_rev[rev] - direct.reindex(by_rev[rev].index)).abs()
        assert diff.max() < 1e-6, diff.max()
    # different weights, different lens
    a, b = by_rev["step100"], by_rev["step200"].reindex(by_rev["step100"].index)
    logp = a.index.get_level_values("measure") == "logp_diff"
    assert (a[logp] - b[logp]).abs().max() > 1e-2


def _direct_loss(snapshot: Path, files: list[Path]) -> tuple[float, int, int]:
    """Total nats, tokens and bytes: each file after the BOS token, one plain forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(snapshot)
    nats, tokens, n_bytes = 0.0, 0, 0
    for f in files:
        text = f.read_text()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) < model.config.max_position_embeddings     # one window
        seq = torch.tensor([[tok.bos_token_id] + ids])
        with torch.no_grad():
            logits = model(seq).logits[0, :-1].double()
        nats += float(torch.nn.functional.cross_entropy(logits, seq[0, 1:], reduction="sum"))
        tokens += len(ids)
        n_bytes += len(text.encode())
    return nats, tokens, n_bytes


def test_loss_per_revision_equals_a_direct_forward(hub, child):
    rows = {r["checkpoint"]: r for r in child["loss"]["rows"]}
    assert list(rows) == REVS and {r["language"] for r in rows.values()} == {"python"}
    files = sorted(hub["text"].glob("*.py"))
    for rev in REVS:
        nats, tokens, n_bytes = _direct_loss(hub["snapshot"][rev], files)
        row = rows[rev]
        assert (row["tokens"], row["bytes"], row["documents"]) == (tokens, n_bytes, 2)
        assert row["loss"] == pytest.approx(nats / tokens, abs=1e-6)
        assert row["bits_per_byte"] == pytest.approx(nats / n_bytes / 0.6931471805599453,
                                                     abs=1e-6)
    assert abs(rows["step100"]["loss"] - rows["step200"]["loss"]) > 1e-3


def test_unknown_revision_is_one_line_and_hub_cache_env_is_read(hub, tmp_path):
    """HF_HUB_CACHE alone (HF_HOME elsewhere) finds the cache; an unknown revision is one
    line naming it and the cached ones, before anything loads; no network is tried."""
    lens_out, loss_out, main_out = tmp_path / "lens", tmp_path / "loss.json", tmp_path / "m.json"
    argvs = [["probe", "lens", f"hub:{REPO}", "--new", "php", "--revisions", "step100,nope",
              "--out", str(lens_out)],
             ["eval", "loss", f"hub:{REPO}", "--text", f"python={hub['text']}",
              "--revisions", "step100,nope", "--out", str(loss_out)],
             ["eval", "loss", f"hub:{REPO}", "--text", f"python={hub['text']}",
              "--revisions", "main", "--out", str(main_out)]]
    net_log = tmp_path / "net.log"
    env = _child_env(hub, net_log, HF_HUB_CACHE=str(hub["cache"]),
                     HF_HOME=str(tmp_path / "empty-home"))
    res = _run_child(hub, CLI_DRIVER, {"argvs": argvs, "result": str(tmp_path / "r.json")}, env)
    for rc, err in res[:2]:
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("babeltower: error: babel-org/tiny-series: revision nope not "
                              f"in the Hugging Face cache {hub['cache']} "), err
        assert "HF_HUB_OFFLINE" in err and "(cached revisions: main, step100, step200)" in err
    assert not lens_out.exists() and not loss_out.exists()
    assert res[2][0] == 0, res[2][1]
    main_rows = json.loads(main_out.read_text())["rows"]
    assert [(r["checkpoint"], r["step"]) for r in main_rows] == [("main", None)]
    assert main_rows[0]["weights_sha256"] == _blob_sha256(hub["snapshot"]["step200"])
    assert not net_log.exists()


def test_offline_listing_names_a_repo_missing_from_the_cache():
    """In this process HF_HUB_OFFLINE=1 (conftest, before huggingface_hub is imported)."""
    from babeltower.checkpoints import list_checkpoints
    from babeltower.errors import BabelError

    with pytest.raises(BabelError, match=r"babel-org/never-cached-x: revisions step1, main not "
                                         r"in the Hugging Face cache .* HF_HUB_OFFLINE is set "
                                         r"\(cached revisions: none\)"):
        list_checkpoints("hub:babel-org/never-cached-x", revisions=["step1", "main"])
    with pytest.raises(BabelError, match="without a repo id"):
        list_checkpoints("hub:")
    with pytest.raises(BabelError, match="not a hub id"):
        list_checkpoints("hub:a/b/c")
