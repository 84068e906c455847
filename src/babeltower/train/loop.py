"""The training loop: ``train(config) -> run_dir`` = ``setup`` + ``fit``.

A nanoGPT-like loop over a seekable mixture sampler, with HF models, so every
checkpoint is an ordinary ``from_pretrained`` directory. What it guarantees:

* **Deterministic and resumable.** Weights are initialised from ``seed``; the batch at
  step ``s`` is a pure function of ``(data, mixture, seq_len, seed, s)``; every
  checkpoint stores optimizer, scheduler and RNG states. Running the same command again
  continues from the last complete checkpoint; on CPU the result is bit-identical to an
  uninterrupted run (tested with SIGKILL).
* **Lean.** No host sync inside the step: loss and grad norm stay on the device and are
  read once per ``log_interval``; fused/foreach AdamW; SDPA attention.
* **Scales out unchanged.** Under ``torchrun`` it runs DDP (gloo on CPU, NCCL on GPU) or
  FSDP2 (``strategy: fsdp``); rank r of W at micro-step m of step s reads the contiguous
  block of global sequences ``s*G + (m*W + r)*B ...`` (G = global batch, B = micro
  batch), so the data of a step is exactly what one process with ``grad_accum * W``
  micro-steps would read. Only rank 0 writes.

Run directory layout::

    RUN/
      config.yaml         # the resolved TrainConfig (YAML in, the same object out)
      run.json            # provenance, parameter counts, FLOPs/token, measured peak FLOP/s
      metrics.jsonl       # {"kind": "train", ...} per log step, {"kind": "eval", ...} per eval
      checkpoints/step-XXXXXXXX/   # see checkpointing.py
      tensorboard/        # only with tensorboard: true and the package installed
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.interrupts import raise_if_interrupted
from babeltower.io import atomic_write_json, provenance
from babeltower.languages import canonical
from babeltower.mixture.sampler import MixtureSampler
from babeltower.mixture.spec import MixtureSpec
from babeltower.train import checkpointing as ck
from babeltower.train.config import TrainConfig
from babeltower.train.distributed import Strategy, make_strategy
from babeltower.train.metrics import MetricsLog
from babeltower.train.mfu import cached_peak_flops, mfu
from babeltower.train.presets import count_parameters, flops_per_token
from babeltower.train.model import build_model, find_blocks, load_model, unsharded_copy
from babeltower.train.schedule import lr_at, make_optimizer, plan_steps, resolve_mixture
from babeltower.train.validation import validation_loss, validation_windows

__all__ = ["train", "setup", "fit", "train_step", "write_checkpoint", "Run", "TrainState"]


# The pieces (each usable on its own from a notebook) live beside this module: the model
# (train.model), the schedule and optimizer (train.schedule), validation (train.validation).

# ---------------------------------------------------------------------------------------
# the run: train = setup + fit
# ---------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """What changes every step; a checkpoint is a function of this and the ``Run``."""

    step: int = 0
    tokens_seen: int = 0
    # tokens trained on per language (index: ``sampler.languages``), by this rank only
    tokens_by_language: list[int] = field(default_factory=list)


@dataclass
class Run:
    """Everything ``fit`` needs, built once by ``setup`` (fixed for the whole run)."""

    config: TrainConfig
    strategy: Strategy
    shards: TokenShards
    spec: MixtureSpec
    sampler: MixtureSampler
    max_steps: int
    checkpoint_at: set[int]
    windows: dict[str, torch.Tensor]      # fixed validation windows per language
    model: torch.nn.Module                # as wrapped by the strategy
    base_model: torch.nn.Module           # the plain HF model (save_pretrained)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[], Any]
    config_sha: str
    init_info: dict
    flops_per_token: float
    resumed_from: Path | None
    train_model: Callable = None          # the model, or its torch.compile
    peak_flops: float = 0.0
    metrics: MetricsLog | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def global_batch(self) -> int:
        return self.config.micro_batch_size * self.config.grad_accum * self.strategy.world

    @functools.cached_property
    def lang_index(self) -> dict[str, int]:
        return {lang: i for i, lang in enumerate(self.sampler.languages)}


def train(config: TrainConfig, force: bool = False) -> Path:
    """Train (or resume) the run described by ``config``; returns the run directory.

    Running again with the same config resumes from the last complete checkpoint; a
    config whose weight-relevant fields changed is refused unless ``force``.
    ``init_from`` loads weights only (a new optimizer, LR schedule and step counter),
    which is continual pre-training on a new mixture.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill_memory = torch.utils.deterministic.fill_uninitialized_memory
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    strategy = make_strategy(config.strategy, config.device, find_blocks)
    try:
        return fit(*setup(config, strategy, force))
    finally:
        strategy.close()
        # leave the caller's process as it was (the orchestrator trains many runs)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill_memory


def setup(config: TrainConfig, strategy: Strategy, force: bool = False,
          ) -> tuple[Run, TrainState]:
    """Data, model, optimizer and outputs of a run, resumed from its last checkpoint if any."""
    device = strategy.device
    use_bf16 = _configure_numerics(config, device)
    shards = TokenShards(config.data)
    spec = resolve_mixture(config, shards)
    sampler = MixtureSampler(shards, spec, config.seq_len, seed=config.seed, split="train")
    max_steps = plan_steps(config, len(sampler), strategy.world)
    windows = _eval_windows(config, shards)
    config_sha = config.sha256()
    resume_from, saved = _find_resume(config, strategy, sampler, config_sha, force)
    if resume_from is not None:
        model, init_info = load_model(resume_from), saved.get("init_info", {})
    else:
        model, init_info = build_model(config, shards)
    if model.config.vocab_size != shards.vocab_size:
        raise BabelError(f"model vocab_size {model.config.vocab_size} does not match the data's "
                         f"tokenizer ({shards.vocab_size} ids)")
    base_model = model.to(device)
    params = count_parameters(model)
    fpt = flops_per_token(model, config.seq_len)
    model = strategy.wrap(model)
    optimizer = make_optimizer(model, config, fused=strategy.fused_optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, config, max_steps) / config.optimizer.lr)
    run = Run(config=config, strategy=strategy, shards=shards, spec=spec, sampler=sampler,
              max_steps=max_steps,
              checkpoint_at=set(ck.checkpoint_steps(config.checkpoints, max_steps)),
              windows=windows, model=model, base_model=base_model, optimizer=optimizer,
              scheduler=scheduler, autocast=functools.partial(_autocast, device.type, use_bf16),
              config_sha=config_sha, init_info=init_info, flops_per_token=fpt,
              resumed_from=resume_from)
    state = TrainState(tokens_by_language=[0] * len(sampler.languages))
    if saved is not None:
        _restore(run, state, saved)
    run.train_model = torch.compile(model) if config.compile else model
    run.peak_flops = config.peak_flops or cached_peak_flops(device)
    if strategy.is_main:
        _write_run_info(run, params, use_bf16)
    strategy.barrier()
    run.metrics = MetricsLog(run.run_dir, strategy.is_main, config.tensorboard,
                             state.step if saved is not None else None)
    return run, state


def fit(run: Run, state: TrainState) -> Path:
    """Train from ``state`` to ``run.max_steps``; log, evaluate and checkpoint on schedule."""
    config = run.config
    bar = tqdm(total=run.max_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=not (config.progress and run.strategy.is_main), file=sys.stderr)
    if run.resumed_from is None and 0 in run.checkpoint_at:
        _evaluate(run, state, checkpoint=True)
    window = _LogWindow(run.strategy.device)
    try:
        while state.step < run.max_steps:
            raise_if_interrupted()   # a Ctrl-C a library swallowed still stops the run
            t0 = time.perf_counter()
            grad_norm = train_step(run, state, window.loss_sum)
            if grad_norm is not None:
                window.grad_norm = grad_norm
            state.step += 1
            state.tokens_seen += run.global_batch * config.seq_len
            window.steps += 1
            window.seconds += time.perf_counter() - t0
            if state.step % config.log_interval == 0 or state.step == run.max_steps:
                loss, tps = _log_train(run, state, window)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(1)
            is_ckpt = state.step in run.checkpoint_at
            if is_ckpt or (config.eval.interval and state.step % config.eval.interval == 0):
                _evaluate(run, state, checkpoint=is_ckpt)
    finally:
        bar.close()
        run.metrics.close()
    run.strategy.barrier()
    return run.run_dir


def train_step(run: Run, state: TrainState, loss_sum: torch.Tensor) -> torch.Tensor | None:
    """One optimizer step over this rank's share of global batch ``state.step``.

    Rank r of W at micro-step m reads global sequences ``step*G + (m*W + r)*B ...``; the
    micro-batch losses are added to ``loss_sum`` (on the device, no host sync). Returns
    the gradient norm before clipping (None when clipping is off). Does not advance
    ``state.step``.
    """
    config, strategy = run.config, run.strategy
    micro_batch, accum = config.micro_batch_size, config.grad_accum
    for micro in range(accum):
        start = (state.step * run.global_batch
                 + (micro * strategy.world + strategy.rank) * micro_batch)
        batch, langs = run.sampler.batch(start, micro_batch)
        for lang in langs:
            state.tokens_by_language[run.lang_index[lang]] += config.seq_len
        batch = batch.to(strategy.device, non_blocking=True)
        with strategy.grad_sync(run.model, sync=micro == accum - 1):
            with run.autocast():
                logits = run.train_model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   batch[:, 1:].reshape(-1))
            (loss / accum).backward()
        loss_sum += loss.detach()
    grad_norm = None
    if config.grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        grad_norm = gn.full_tensor() if hasattr(gn, "full_tensor") else gn   # FSDP: DTensor
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def write_checkpoint(run: Run, state: TrainState, val_loss: dict[str, float]) -> None:
    """Checkpoint ``state.step``. Collective: every rank calls it, rank 0 writes; a failed
    write stops every rank with the same error."""
    strategy = run.strategy
    by_lang = _tokens_by_language(run, state)
    model_sd, optim_sd = strategy.full_state(run.model, run.optimizer)
    ok, err = True, None
    if strategy.is_main:
        training_state = {
            "step": state.step, "tokens_seen": state.tokens_seen, "tokens_by_language": by_lang,
            "optimizer": optim_sd, "scheduler": run.scheduler.state_dict(),
            "rng": ck.rng_state(), "sampler": run.sampler.state_dict(),
            "next_sequence": state.step * run.global_batch, "world_size": strategy.world,
            "config_sha256": run.config_sha, "init_info": run.init_info,
        }
        manifest = {
            "step": state.step, "tokens_seen": state.tokens_seen, "tokens_by_language": by_lang,
            "mixture": run.spec.model_dump(mode="json"), "config_sha256": run.config_sha,
            "val_loss": val_loss, "lr": run.scheduler.get_last_lr()[0],
            "provenance": provenance(config=run.config, seed=run.config.seed,
                                     data_hashes=run.sampler.state_dict()["data_sha256"]),
        }
        try:
            save_model = run.base_model
            if model_sd is not None:   # sharded: gathered into a plain copy
                save_model = unsharded_copy(run.base_model)
                save_model.load_state_dict(model_sd)
            ck.save_checkpoint(run.run_dir, state.step, save_model, training_state, manifest,
                               tokenizer_dir=run.shards.tokenizer_dir)
            ck.prune(run.run_dir, run.config.checkpoints.keep_last)
        except BabelError as e:
            ok, err = False, e
    if not strategy.agree(ok):
        raise err or BabelError(f"rank 0 failed to write checkpoint {ck.step_name(state.step)}")


# ---------------------------------------------------------------------------------------
# helpers of setup and fit
# ---------------------------------------------------------------------------------------

def _configure_numerics(config: TrainConfig, device: torch.device) -> bool:
    """Deterministic kernels if asked; returns whether to autocast to bf16."""
    if config.deterministic:
        # warn_only: ops without a deterministic kernel warn instead of failing;
        # NaN-filling new memory is a debugging aid we do not need
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if config.dtype == "bf16" and device.type == "cpu":
        raise BabelError("dtype: bf16 is for GPUs; use fp32 on CPU")
    return config.dtype == "bf16" or (config.dtype == "auto" and device.type == "cuda"
                                      and torch.cuda.is_bf16_supported())


def _autocast(device_type: str, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _eval_windows(config: TrainConfig, shards: TokenShards) -> dict[str, torch.Tensor]:
    ev = config.eval
    langs = [canonical(x) for x in ev.languages] if ev.languages else shards.languages
    if ev.languages and ev.tokens_per_language > 0:
        missing = [x for x in langs if not shards.has(x, ev.split)]
        if missing:
            raise BabelError(f"eval.languages: {', '.join(missing)} has no "
                             f"{ev.split!r} split in {shards.root}")
    if ev.tokens_per_language <= 0:
        return {}
    return validation_windows(shards, langs, config.seq_len, ev.tokens_per_language, ev.split)


def _find_resume(config: TrainConfig, strategy: Strategy, sampler: MixtureSampler,
                 config_sha: str, force: bool) -> tuple[Path | None, dict | None]:
    """The last complete checkpoint of ``out_dir`` and its training state (or None, None);
    positions ``sampler`` at its state. A changed recipe or process count is refused."""
    run_dir = Path(config.out_dir)
    if not run_dir.exists():
        return None, None
    if strategy.is_main:
        ck.clean_partial(run_dir)
    strategy.barrier()
    resume_from = ck.latest_checkpoint(run_dir)
    if resume_from is None:
        return None, None
    mf = json.loads((resume_from / ck.MANIFEST).read_text())
    if mf.get("config_sha256") != config_sha and not force:
        raise BabelError(f"{run_dir} holds a run with a different config (resuming from "
                         f"{resume_from.name}); use a new out_dir, or --force to continue it "
                         "with this config")
    saved = ck.load_training_state(resume_from)
    if not force:   # same data stream (spec, seed, seq_len, shards) or a clear error
        sampler.load_state_dict(saved["sampler"])
    saved_world = int(saved.get("world_size", strategy.world))
    if saved_world != strategy.world and not force:
        raise BabelError(f"{resume_from.name} was written by {saved_world} process(es), this is "
                         f"{strategy.world}: the global batch would change; run with "
                         f"--nproc_per_node={saved_world}, or --force")
    return resume_from, saved


def _restore(run: Run, state: TrainState, saved: dict) -> None:
    """Optimizer, scheduler, RNG and counters from a checkpoint's training state."""
    run.strategy.load_optimizer_state(run.model, run.optimizer, saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    ck.set_rng_state(saved["rng"])
    state.step, state.tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
    if run.strategy.is_main:   # the counts are a sum over ranks: rank 0 carries them
        for lang, n in saved["tokens_by_language"].items():
            if lang in run.lang_index:
                state.tokens_by_language[run.lang_index[lang]] = n


def _write_run_info(run: Run, params: dict[str, int], use_bf16: bool) -> None:
    """config.yaml and run.json (rank 0), and a note when the data would repeat."""
    config, sampler = run.config, run.sampler
    # token budgets count whole windows of seq_len+1 while training counts seq_len
    # predictions per window, so a tokens= budget equal to the mixture's total overshoots
    # one pass by ~1/seq_len: only a real repeat is worth a note
    if run.max_steps * run.global_batch > 1.01 * len(sampler) + run.global_batch:
        print(f"babeltower: note: {run.max_steps} steps x {run.global_batch} sequences exceed "
              f"one pass of the mixture ({len(sampler)} sequences); the data repeats in a new "
              "order", file=sys.stderr)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(run.run_dir / "config.yaml")
    atomic_write_json(run.run_dir / "run.json", provenance(
        config=config, seed=config.seed,
        data_hashes={"data": run.shards.manifest.get("sha256") or sampler.data_fingerprint()},
        config_sha256_resume=run.config_sha, parameters=params,
        flops_per_token=run.flops_per_token, peak_flops_per_device=run.peak_flops,
        peak_flops_source=("config" if config.peak_flops else
                           "measured: best fp32 1024^3 matmul burst, max over recorded "
                           "measurements"),
        world_size=run.strategy.world, strategy=run.strategy.name,
        device=str(run.strategy.device), dtype="bf16-autocast" if use_bf16 else "fp32",
        torch_threads=torch.get_num_threads(), max_steps=run.max_steps,
        global_batch_sequences=run.global_batch,
        tokens_per_step=run.global_batch * config.seq_len, sequences_per_pass=len(sampler),
        mixture=run.spec.model_dump(mode="json"), mixture_tokens=sampler.tokens_by_language,
        checkpoint_steps=sorted(run.checkpoint_at),
        resumed_from=str(run.resumed_from) if run.resumed_from else None, **run.init_info))


def _tokens_by_language(run: Run, state: TrainState) -> dict[str, int]:
    """Tokens trained on per language, summed over ranks (collective)."""
    t = run.strategy.all_reduce_(torch.tensor(state.tokens_by_language, dtype=torch.float64))
    return {lang: int(t[i].item()) for lang, i in run.lang_index.items()}


def _evaluate(run: Run, state: TrainState, checkpoint: bool) -> None:
    """Validation loss (logged), then a checkpoint if ``checkpoint``."""
    val = {}
    if run.windows:
        val = validation_loss(run.strategy.unwrap(run.model), run.windows, run.strategy.device,
                              run.config.eval.batch_size, run.autocast)
    run.metrics.log({"kind": "eval", "step": state.step, "tokens": state.tokens_seen,
                     "val_loss": val})
    if checkpoint:
        write_checkpoint(run, state, val)


class _LogWindow:
    """Loss, grad norm and training time since the last log line (kept on the device)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.steps, self.seconds, self.started = 0, 0.0, time.perf_counter()


def _log_train(run: Run, state: TrainState, window: _LogWindow) -> tuple[float, float]:
    """One ``train`` metrics line (the only host sync of the loop); resets the window."""
    config, world = run.config, run.strategy.world
    loss = run.strategy.all_reduce_(window.loss_sum.detach().clone().cpu().double()
                                    ).item() / (window.steps * config.grad_accum * world)
    if not math.isfinite(loss):
        raise BabelError(f"training loss became {loss} at step {state.step}; lower "
                         "optimizer.lr or raise schedule warmup")
    tps = window.steps * run.global_batch * config.seq_len / max(window.seconds, 1e-9)
    run.metrics.log({"kind": "train", "step": state.step, "tokens": state.tokens_seen,
                     "loss": round(loss, 6), "lr": run.scheduler.get_last_lr()[0],
                     "grad_norm": float(window.grad_norm), "tokens_per_s": round(tps, 1),
                     "mfu": round(mfu(run.flops_per_token, tps, run.peak_flops, world), 5),
                     "elapsed_s": round(time.perf_counter() - window.started, 3)})
    window.loss_sum.zero_()
    window.steps, window.seconds, window.started = 0, 0.0, time.perf_counter()
    return loss, tps
