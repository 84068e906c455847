"""GPU check: the training and probing path of babeltower measured on one accelerator.

    python bench/gpu_check.py [--device auto|cuda|cpu] [--size toy|125m] [--steps N]
                              [--out DIR]

What it does, in one run (on CPU at ``--size toy`` it is the same code path in seconds;
``tests/test_train_gpu_check.py`` runs it so it cannot rot):

1. the device's dense matmul peak, measured here (bf16 8192^3 on CUDA, fp32 1024^3 on CPU);
2. for the LLaMA- and GPT-2-style preset of ``--size`` (``125m``: 12 x 768, ~125M
   parameters with a 50k vocabulary): our loop (bf16 autocast, SDPA, ``compile`` on CUDA)
   and a Hugging Face ``Trainer`` (``bench/train.py``'s, same model, init and sequences)
   -> tokens/s, MFU against the measured peak, and the ratio ours / Trainer;
3. a checkpoint series with ``deterministic: true``; its last checkpoints deleted and the
   run resumed: the final ``model.safetensors`` must be byte-identical;
4. every checkpoint reloaded; logit lens (``run_lens``), LAPE (``run_neurons``) and
   held-out loss (``evaluate_loss``) over the series -> checkpoints per minute;
5. ``OUT/gpu_check.json``: date, device name, versions, all numbers.

Data: a small packed corpus of generated Python/PHP code with its own byte-level BPE
tokenizer (``tests/train_fixtures.make_packed``), repeated as often as the steps need;
throughput does not depend on the text.

Running on a GPU machine that has only torch (no network): on a machine with network,
from a checkout of this repository:

    pip wheel --no-deps -w wheels .                 # babeltower's wheel
    pip download -d wheels transformers tokenizers safetensors pydantic pyyaml typer rich \\
        numpy pandas pyarrow scipy tqdm accelerate  # its dependencies (not torch)
    # copy the checkout (bench/, tests/) and wheels/ to the GPU machine, then there:
    pip install --no-index --find-links wheels babeltower accelerate
    python bench/gpu_check.py --device cuda --size 125m --out gpu-check

Budget: < 8 min on one H100/H200 at the defaults (compile of 2 models ~1-2 min, 2 x 2 x
``--steps`` training steps, probes over ~6 checkpoints).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]   # bench/train.py, train_fixtures
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from babeltower.checkpoints import list_checkpoints  # noqa: E402
from babeltower.evaluate.loss import evaluate_loss  # noqa: E402
from babeltower.io import atomic_write_json, provenance  # noqa: E402
from babeltower.series import SeriesOptions  # noqa: E402
from babeltower.probes.lens import run_lens  # noqa: E402
from babeltower.probes.neurons import LapeOptions, run_neurons  # noqa: E402
from babeltower.probes.suite import ProbeSuite, load_suite  # noqa: E402
from babeltower.train import TrainConfig  # noqa: E402
from babeltower.train.mfu import device_name, measure_peak_flops, mfu  # noqa: E402
from babeltower.train.presets import count_parameters, flops_per_token  # noqa: E402
from train import run_hf_trainer, run_ours  # noqa: E402  (bench/train.py)
from train_fixtures import make_packed  # noqa: E402

# (seq_len, micro batch, steps, data docs per language, tokenizer vocabulary)
SIZES = {"toy": (32, 4, 6, 60, 320), "125m": (512, 16, 150, 3000, 8192)}
# probes over the series: (lens pairs, prompts per side of a pair; None = the whole built-in
# suite) and tokens per language for LAPE and the loss. The toy size keeps the same calls
# with a few pairs so the CPU test takes about a minute (the full suite took ~270 s there).
PROBE_SIZES = {"toy": (4, 1, 4 * 32), "125m": (None, None, 8 * 512)}


def lens_suite(size: str) -> ProbeSuite:
    """The python-php suite, cut to ``PROBE_SIZES[size]``'s pairs and prompts per side."""
    n_pairs, n_prompts, _ = PROBE_SIZES[size]
    suite = load_suite("python", "php")
    if n_pairs is None:
        return suite
    pairs = [p.model_copy(update={side: getattr(p, side).model_copy(
                 update={"prompts": getattr(p, side).prompts[:n_prompts]})
                 for side in ("primary", "new")})
             for p in suite.pairs[:n_pairs]]
    return suite.model_copy(update={"pairs": pairs})


def _config(data: Path, out: Path, model: str, device: str, a, **kw) -> TrainConfig:
    seq, batch, steps, _, _ = SIZES[a.size]
    cuda = device == "cuda"
    d = dict(data=str(data), out_dir=str(out), model=model, seq_len=seq,
             micro_batch_size=batch, max_steps=a.steps or steps, device=device,
             dtype="bf16" if cuda else "fp32", compile=cuda, log_interval=1, progress=False,
             optimizer={"lr": 1e-3}, schedule={"warmup_steps": 3},
             eval={"tokens_per_language": 0},
             checkpoints={"initial": False, "log_spaced": False})
    d.update(kw)
    return TrainConfig.from_dict(d)


def throughput(data: Path, tmp: Path, device: str, peak: float, a) -> dict:
    """Ours vs the HF Trainer, per model family: tokens/s, MFU, ratio."""
    from transformers import AutoModelForCausalLM

    out = {}
    for family in ("llama", "gpt2"):
        model = f"{family}-{'nano' if a.size == 'toy' else a.size}"
        cfg = _config(data, tmp / f"ours-{family}", model, device, a, peak_flops=peak)
        warmup = max(1, min(10, cfg.max_steps // 3))   # compile + first steps untimed
        ours = run_ours(cfg, Path(cfg.out_dir), warmup)
        hf = run_hf_trainer(cfg, data, tmp / f"hf-{family}", warmup)
        ck = list_checkpoints(cfg.out_dir)[-1]
        m = AutoModelForCausalLM.from_pretrained(ck.path)
        fpt = flops_per_token(m, cfg.seq_len)
        out[model] = {"parameters": count_parameters(m), "flops_per_token": fpt,
                      "tokens_per_s": ours, "hf_trainer_tokens_per_s": hf,
                      "ratio_vs_hf_trainer": ours / hf, "mfu": mfu(fpt, ours, peak),
                      "hf_trainer_mfu": mfu(fpt, hf, peak), "steps": cfg.max_steps,
                      "batch": [cfg.micro_batch_size, cfg.seq_len]}
        print(f"{model}: ours {ours:,.0f} tok/s (MFU {out[model]['mfu']:.1%}), Trainer "
              f"{hf:,.0f} tok/s -> {ours / hf:.2f}x", flush=True)
    return out


def exact_resume(data: Path, tmp: Path, device: str, a) -> dict:
    """A deterministic series; the last checkpoints deleted and resumed -> same bytes."""
    from babeltower.train import train

    model = "llama-nano" if a.size == "toy" else f"llama-{a.size}"
    steps = max(4, (a.steps or SIZES[a.size][2]) // 5)
    cfg = _config(data, tmp / "series", model, device, a, max_steps=steps, compile=False,
                  deterministic=True, peak_flops=1.0, eval={"tokens_per_language": 2048},
                  checkpoints={"initial": True, "log_spaced": True, "log_until": steps})
    run = train(cfg)
    final = run / "checkpoints" / f"step-{steps:08d}" / "model.safetensors"
    first = final.read_bytes()
    series = [r.step for r in list_checkpoints(run)]
    resumed_from = series[-3]
    for r in list_checkpoints(run):
        if r.step > resumed_from:
            shutil.rmtree(r.path)
    t0 = time.perf_counter()
    train(cfg)
    identical = final.read_bytes() == first
    print(f"resume from step {resumed_from} of {steps}: final weights "
          f"{'bit-identical' if identical else 'DIFFER'}", flush=True)
    return {"run": str(run), "series": series, "resumed_from": resumed_from,
            "bit_identical": identical, "resume_s": time.perf_counter() - t0}


def probe_series(run: Path, data: Path, tmp: Path, a) -> dict:
    """Reload every checkpoint; lens + LAPE + loss over the series, checkpoints/minute."""
    from transformers import AutoModelForCausalLM

    refs = list_checkpoints(run)
    for r in refs:
        AutoModelForCausalLM.from_pretrained(r.path)
    seq = SIZES[a.size][0]
    n_tokens = PROBE_SIZES[a.size][2]
    suite = lens_suite(a.size)
    timed = {}
    for name, fn in {
        "lens": lambda: run_lens(run, suite, out=tmp / "lens", progress=False),
        "lape": lambda: run_neurons(run, data, LapeOptions(
            languages=["python", "php"], primary="python", n_tokens=n_tokens, seq_len=seq),
            out=tmp / "neurons", series=SeriesOptions(progress=False)),
        "loss": lambda: evaluate_loss(run, data, ["python", "php"],
                                      max_tokens_per_language=n_tokens, progress=False),
    }.items():
        t0 = time.perf_counter()
        fn()
        timed[name] = time.perf_counter() - t0
    total = sum(timed.values())
    per_min = len(refs) / (total / 60)
    print(f"probes over {len(refs)} checkpoints: {per_min:.1f} checkpoints/min "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in timed.items())})", flush=True)
    return {"checkpoints": len(refs), "seconds": timed, "checkpoints_per_minute": per_min,
            "lens_prompts": suite.n_prompts(), "probe_tokens_per_language": n_tokens}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--size", default="125m", choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--out", type=Path, default=Path("gpu-check"))
    a = ap.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = a.out / "work"
    shutil.rmtree(tmp, ignore_errors=True)
    _, _, _, docs, vocab = SIZES[a.size]
    data = make_packed(tmp / "data", docs_per_language=docs, vocab_size=vocab)
    cuda = device == "cuda"
    peak = measure_peak_flops(device, n=8192 if cuda else 1024, seconds=2.0 if cuda else 0.5,
                              dtype=torch.bfloat16 if cuda else torch.float32)
    print(f"{device_name(device)}: {'bf16' if cuda else 'fp32'} matmul peak "
          f"{peak / 1e12:.1f} TFLOP/s", flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device, "device_name": device_name(device), "size": a.size,
              "peak_flops": peak, "peak_dtype": "bf16" if cuda else "fp32",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version(),
                           "cuda": torch.version.cuda if cuda else None}}
    result["throughput"] = throughput(data, tmp, device, peak, a)
    result["resume"] = exact_resume(data, tmp, device, a)
    result["probes"] = probe_series(Path(result["resume"]["run"]), data, tmp, a)
    result["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(a.out / "gpu_check.json",
                      {**json.loads(json.dumps(result, default=str)),
                       "provenance": provenance(config=vars(a) | {"out": str(a.out)})})
    print(f"wrote {a.out / 'gpu_check.json'} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
