"""Does a model directory we make open in TransformerLens and nnsight, with our numbers?

    .venv/bin/python bench/interop.py                     # Gemma 3 270M (gemma3_gguf())
    .venv/bin/python bench/interop.py --model smollm2     # SmolLM2-135M (smollm2_gguf())
    .venv/bin/python bench/interop.py --model DIR --out interop.json

The GGUF is converted once (``convert_gguf``, the directory every probe loads). Then, on
one short code prompt, against transformers' own logits in this environment
(``AutoModelForCausalLM`` on the same directory, the reference our lens equals):

* TransformerLens (``TransformerBridge.boot_transformers`` on the directory, as
  bench/probes.py uses it): its logits, and its logit lens (``accumulated_resid(apply_ln
  =True)`` + ``unembed`` at the last position) layer by layer against ``LogitLens``.
  Needs ``transformer-lens`` importable here (``pip install -e '.[bench]'``, or a venv
  that sees the project's packages); if it is not, the JSON says so.
* nnsight 0.8.1 with transformers 4.57.6 and with the project's transformers, in the
  environments of tests/nnsight_env.py (``make test-envs``): tests/nnsight_check.py
  opens the directory there (plainly, else with the documented ``tokenizer=`` recipe)
  and saves its traced logits, compared here with ours.

Prints one JSON object (and writes it to ``--out``). Not part of the test suite: it
loads the model five times (~1 GB each for Gemma 3); ~2-3 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = Path(__file__).resolve().parent.parent / "tests"
TEXT = "def alpha_beta(items):\n    return len(items) + 1\n"


def _model_dir(which: str) -> Path:
    from babeltower.checkpoints import convert_gguf, gemma3_gguf, smollm2_gguf

    if which == "gemma3":
        return convert_gguf(gemma3_gguf())
    if which == "smollm2":
        return convert_gguf(smollm2_gguf())
    return Path(which)


def _transformer_lens(d: Path, ids, want, lens_logits) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:
        return {"opened": False, "error": f"transformer-lens not importable here: {e}"}
    from importlib.metadata import version

    out: dict = {"transformer_lens": version("transformer-lens")}
    t = time.perf_counter()
    try:
        # TransformerLens switches the model it wraps to eager attention: its own copy
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        bridge = TransformerBridge.boot_transformers(
            str(d), hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(d))
    except Exception as e:  # noqa: BLE001 - the finding is the error itself
        return {**out, "opened": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    out["opened"] = True
    out["boot_s"] = round(time.perf_counter() - t, 1)
    with torch.inference_mode():
        logits, cache = bridge.run_with_cache(ids)
        out["max_abs_logit_diff"] = float((logits - want).abs().max())
        resid = cache.accumulated_resid(apply_ln=True, pos_slice=-1)   # (L + 1, 1, d)
        tl_lens = bridge.unembed(resid)[:, 0]                          # (L + 1, V)
    per_layer = (tl_lens - lens_logits).abs().amax(dim=-1)
    out["lens_layers"] = int(tl_lens.shape[0])
    out["lens_max_abs_diff_per_layer"] = [round(float(x), 6) for x in per_layer]
    out["lens_top1_agreement"] = float(
        (tl_lens.argmax(-1) == lens_logits.argmax(-1)).float().mean())
    return out


def _nnsight(kind: str, d: Path, want, ids: list[int]) -> dict:
    import numpy as np

    sys.path.insert(0, str(TESTS))
    from nnsight_env import env_python
    from procs import run

    try:
        python = env_python(kind)
    except RuntimeError as e:
        return {"opened": False, "error": str(e)}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "logits.npy"
        done = run([str(python), str(TESTS / "nnsight_check.py"), str(d), TEXT, str(npy)],
                   timeout=900)
        lines = done.stdout.strip().splitlines()
        if not lines:
            return {"opened": False, "error": done.stderr.strip().splitlines()[-1:]}
        out = json.loads(lines[-1])
        out["opened"] = done.returncode == 0
        if npy.exists():
            got = np.load(npy)
            out["same_ids_as_ours"] = out.get("ids") == ids
            if out["same_ids_as_ours"]:
                out["max_abs_diff_vs_our_transformers"] = float(
                    np.abs(got - want.numpy()).max())
    out.pop("ids", None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3", help="gemma3 | smollm2 | a HF model dir")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--skip", default="", help="comma list of: transformer_lens, nnsight")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltower.io import atomic_write_json
    from babeltower.probes.lens import LogitLens

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    d = _model_dir(args.model)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    lens_logits = LogitLens(model).layer_logits(ids)[:, 0]        # (L + 1, V), last position
    result = {"model_dir": str(d), "model_type": model.config.model_type,
              "transformers": transformers.__version__, "torch": torch.__version__,
              "text": TEXT, "n_tokens": int(ids.shape[1]),
              "lens_last_layer_vs_logits": float((lens_logits[-1] - want[0, -1]).abs().max()),
              "logit_scale": float(want.abs().max())}
    skip = set(filter(None, args.skip.split(",")))
    if "transformer_lens" not in skip:
        result["transformer_lens"] = _transformer_lens(d, ids, want, lens_logits)
    if "nnsight" not in skip:
        for kind in ("transformers4", "project"):
            result[f"nnsight_{kind}"] = _nnsight(kind, d, want, ids[0].tolist())
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
