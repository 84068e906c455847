"""Run INSIDE an nnsight environment (see ``nnsight_env.py``), not by pytest: open one
checkpoint directory with nnsight and compare a trace's logits with transformers' own.

    ENV/bin/python tests/nnsight_check.py CKPT_DIR TEXT [LOGITS.npy]

Prints one JSON object: the versions, whether the plain ``LanguageModel(CKPT_DIR)`` opened
it (or its error), the token ids nnsight's tokenizer gives TEXT, the largest |logit
difference| between the traced ``lm.output.logits`` and ``AutoModelForCausalLM`` on the
same ids, and whether the documented recipe (``tokenizer=`` passed explicitly) was
needed. With LOGITS.npy, the traced logits are also written there (float32), so a
caller in another environment can compare them with its own (bench/interop.py). Exits 1
if neither way opens the checkpoint.
"""

from __future__ import annotations

import json
import sys


def main(ckpt: str, text: str, logits_out: str | None = None) -> int:
    import nnsight
    import torch
    import transformers
    from nnsight import LanguageModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {"nnsight": nnsight.__version__, "transformers": transformers.__version__,
           "torch": torch.__version__}
    try:
        lm = LanguageModel(ckpt)
        out["plain"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded, then the recipe is tried
        out["plain"] = f"{type(e).__name__}: {e}".splitlines()[0]
        lm = None
    if lm is None:
        try:   # the recipe for nnsight 0.8 with transformers 5 (docs/training.md)
            lm = LanguageModel(ckpt, tokenizer=AutoTokenizer.from_pretrained(ckpt))
        except Exception as e:  # noqa: BLE001
            out["recipe"] = f"{type(e).__name__}: {e}".splitlines()[0]
            print(json.dumps(out))
            return 1
    out["recipe_used"] = out["plain"] != "ok"
    out["tokenizer_class"] = type(lm.tokenizer).__name__
    ids = lm.tokenizer(text)["input_ids"]
    with lm.trace(text):
        logits = lm.output.logits.save()
    ref = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids])).logits
    got = logits.detach()
    out["ids"] = ids
    out["shape"] = list(got.shape)
    out["max_abs_logit_diff"] = float((got - want).abs().max())
    out["logit_scale"] = float(want.abs().max())
    if logits_out:
        import numpy as np

        np.save(logits_out, got.float().numpy())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
