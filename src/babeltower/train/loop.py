"""The training loop: ``train(config) -> run_dir``.

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
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from babeltower.architectures import blocks as model_blocks
from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.io import atomic_write_json, atomic_write_text, provenance
from babeltower.train import checkpointing as ck
from babeltower.train.config import TrainConfig
from babeltower.train.presets import count_parameters, flops_per_token, model_config


# ---------------------------------------------------------------------------------------
# distributed setup
# ---------------------------------------------------------------------------------------

class Dist:
    """Rank, world size, device and strategy of this process."""

    def __init__(self, config: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        strategy = config.strategy
        if strategy == "auto":
            strategy = "ddp" if self.world > 1 else "single"
        if strategy == "single" and self.world > 1:
            raise BabelError("strategy: single cannot run under torchrun with WORLD_SIZE > 1")
        self.strategy = strategy
        want = config.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise BabelError("device: cuda requested but CUDA is not available")
        self.device = torch.device(f"cuda:{self.local_rank}" if want == "cuda" else "cpu")
        self.initialized_here = False
        if strategy in ("ddp", "fsdp"):
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                if "MASTER_ADDR" not in os.environ:   # a lone process (no torchrun)
                    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                dist.init_process_group(backend, rank=self.rank, world_size=self.world)
                self.initialized_here = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.strategy in ("ddp", "fsdp")

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of a CPU tensor (moved to the GPU and back under NCCL)."""
        if self.distributed and self.world > 1:
            import torch.distributed as dist
            red = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
            if self.device.type == "cuda":
                moved = t.to(self.device)
                dist.all_reduce(moved, op=red)
                t.copy_(moved.cpu())
            else:
                dist.all_reduce(t, op=red)
        return t

    def agree(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` on every rank (so all ranks fail together)."""
        if not (self.distributed and self.world > 1):
            return ok
        t = torch.tensor([0.0 if ok else 1.0])
        return self.all_reduce_(t, "max").item() == 0.0

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------
# pieces (each usable on its own from a notebook)
# ---------------------------------------------------------------------------------------

def measure_peak_flops(device: torch.device | str = "cpu", n: int = 1024,
                       seconds: float = 0.5) -> float:
    """Achievable fp32 matmul FLOP/s of this device with the current thread setting.

    The MFU denominator: n x n matmuls timed in short bursts for ``seconds``; the best
    burst counts (CPU vendors' peak numbers are not reachable by any framework, and on a
    shared machine the least disturbed burst is the closest to what the hardware does).
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):   # warm up
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(2):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        best = max(best, 2 * 2.0 * n ** 3 / (t1 - t0))
        if t1 >= t_end:
            return best


_PEAK_CACHE: dict[str, float] = {}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _peak_flops_cached(device: torch.device) -> float:
    """Best fp32 matmul FLOP/s ever measured for this CPU/GPU model and thread count.

    Measured at the start of a run and recorded in ``BABELTOWER_CACHE/peak_flops.json``
    (default ``~/.cache/babeltower``); the recorded value is the maximum over all
    measurements, so a measurement taken while other processes load the machine does not
    inflate MFU. Set ``peak_flops`` in the config to fix the denominator instead.
    """
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model())
    key = f"{device.type}|{name}|threads={torch.get_num_threads()}"
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    root = Path(os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower")
    path = root / "peak_flops.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        recorded = {}
    best = max(float(recorded.get(key, 0.0)), measure_peak_flops(device))
    if best > float(recorded.get(key, 0.0)):
        try:
            atomic_write_json(path, {**recorded, key: best})
        except BabelError:
            pass   # a read-only home is no reason to stop training
    _PEAK_CACHE[key] = best
    return best


def resolve_mixture(config: TrainConfig, shards: TokenShards):
    """The run's ``MixtureSpec``: the configured one, or natural over all training data."""
    from babeltower.mixture.generators import natural
    from babeltower.mixture.sampler import available_tokens
    from babeltower.mixture.spec import MixtureSpec

    if config.mixture is None:
        return natural(available_tokens(shards, "train"))
    return MixtureSpec.from_any(config.mixture)


def lr_at(step: int, config: TrainConfig, max_steps: int) -> float:
    """Learning rate after ``step`` updates: linear warmup, then cosine/linear/constant."""
    lr = config.optimizer.lr
    sch = config.schedule
    min_lr = sch.min_lr if sch.min_lr is not None else 0.1 * lr
    warmup = sch.warmup_steps if sch.warmup_steps is not None else int(
        round(sch.warmup_fraction * max_steps))
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if sch.decay == "constant" or max_steps <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if sch.decay == "linear":
        return min_lr + (lr - min_lr) * (1.0 - frac)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool | None = None):
    """AdamW with weight decay on matrices only; fused kernel where torch has one."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    oc = config.optimizer
    groups = [{"params": decay, "weight_decay": oc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, **kw)


def validation_windows(shards: TokenShards, languages: list[str], seq_len: int,
                       tokens_per_language: int, split: str = "validation",
                       ) -> dict[str, torch.Tensor]:
    """Fixed evaluation windows per language, spread evenly over the split.

    ``tokens_per_language // seq_len`` non-overlapping windows of ``seq_len + 1`` tokens
    (fewer if the split is short). The same windows at every evaluation, so the
    per-checkpoint curve measures the model, not the sample.
    """
    out = {}
    for lang in languages:
        if not shards.has(lang, split):
            continue
        tokens = shards.split(lang, split).tokens
        win = seq_len + 1
        have = len(tokens) // win
        n = min(have, max(1, tokens_per_language // seq_len))
        if have == 0 or n == 0:
            continue
        idx = np.unique(np.linspace(0, have - 1, n).round().astype(np.int64))
        out[lang] = torch.from_numpy(np.stack([
            np.asarray(tokens[i * win:(i + 1) * win], dtype=np.int64) for i in idx]))
    return out


@torch.no_grad()
def evaluate_loss(model, windows: dict[str, torch.Tensor], device, batch_size: int = 16,
                  autocast=contextlib.nullcontext) -> dict[str, float]:
    """Mean next-token cross-entropy (nats/token) per language over fixed windows."""
    was_training = model.training
    model.eval()
    out = {}
    for lang, w in windows.items():
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for i in range(0, w.shape[0], batch_size):
            b = w[i:i + batch_size].to(device)
            with autocast():
                logits = model(input_ids=b[:, :-1]).logits
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                     b[:, 1:].reshape(-1), reduction="sum").double()
            count += b[:, 1:].numel()
        out[lang] = float(total.item() / max(1, count))
    model.train(was_training)
    return out


def _tokenizer_vocab(path: Path) -> dict | None:
    f = path / "tokenizer.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text()).get("model", {}).get("vocab")
    except (json.JSONDecodeError, AttributeError):
        return None


def build_model(config: TrainConfig, shards: TokenShards):
    """Fresh model from a preset/config (seeded init) or weights from ``init_from``."""
    from transformers import AutoModelForCausalLM

    from babeltower.checkpoints import convert_gguf, list_checkpoints, verify_checkpoint

    torch.manual_seed(config.seed)
    if config.init_from:
        ref = list_checkpoints(config.init_from)[-1]   # a run dir: its last checkpoint
        kw = {}
        if ref.gguf_file:
            path = convert_gguf(Path(ref.path) / ref.gguf_file)
        elif ref.revision is not None:
            path, kw = ref.path, {"revision": ref.revision}
        else:
            path = Path(ref.path)
            verify_checkpoint(path)   # sha256 of the weights against its manifest
        try:
            with ck._quiet_hf():
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
        except (OSError, ValueError, RuntimeError) as e:
            raise BabelError(f"cannot load init_from {path}: {str(e).splitlines()[0]}") from None
        if model.config.vocab_size != shards.vocab_size:
            raise BabelError(f"init_from {ref.path} has vocab_size {model.config.vocab_size} but "
                             f"the data's tokenizer has {shards.vocab_size} ids")
        theirs = _tokenizer_vocab(Path(ref.path))
        ours = _tokenizer_vocab(shards.tokenizer_dir)
        if theirs is not None and ours is not None and theirs != ours:
            raise BabelError(f"init_from {ref.path} was trained with a different tokenizer than "
                             f"the data in {shards.root} (same size, different vocabulary)")
        model.train()
        return model, {"init_from": str(ref.path), "init_step": ref.step}
    bos = shards.manifest.get("bos_id")
    cfg = model_config(config.model, shards.vocab_size, config.seq_len,
                       bos_token_id=bos,
                       eos_token_id=shards.eos_id)
    if getattr(cfg, "n_positions", None) is not None and cfg.n_positions < config.seq_len:
        raise BabelError(f"model {config.model} has n_positions {cfg.n_positions} < "
                         f"seq_len {config.seq_len}")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    return model, {"init_from": None}


def _find_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, the FSDP sharding unit (from the architecture table)."""
    return model_blocks(model)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------

class _Metrics:
    """metrics.jsonl (+ TensorBoard if asked and installed), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what was logged after the checkpoint we resume from (it is redone)
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _line_step(ln) <= resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self.f = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("babeltower: tensorboard is not installed; logging to metrics.jsonl only",
                      file=sys.stderr)

    def log(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            step = rec["step"]
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{rec['kind']}/{k}", v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        self.tb.add_scalar(f"{rec['kind']}/{k}/{kk}", vv, step)

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62


def plan_steps(config: TrainConfig, n_sequences: int, world: int = 1) -> int:
    """Optimizer steps of the run: max_steps, or the token budget, or one mixture pass."""
    per_step = config.micro_batch_size * config.grad_accum * world
    if config.max_steps is not None:
        return config.max_steps
    if config.tokens is not None:
        return max(1, math.ceil(config.tokens / (per_step * config.seq_len)))
    return max(1, n_sequences // per_step)


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
    dist_ = Dist(config)
    try:
        return _train(config, dist_, force)
    finally:
        dist_.close()
        # leave the caller's process as it was (the orchestrator trains many runs)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill_memory


def _train(config: TrainConfig, dist_: Dist, force: bool) -> Path:
    from babeltower.mixture.sampler import MixtureSampler

    run_dir = Path(config.out_dir)
    device = dist_.device
    if config.deterministic:
        # warn_only: ops without a deterministic kernel warn instead of failing;
        # NaN-filling new memory is a debugging aid we do not need
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    use_bf16 = config.dtype == "bf16" or (config.dtype == "auto" and device.type == "cuda"
                                          and torch.cuda.is_bf16_supported())
    if config.dtype == "bf16" and device.type == "cpu":
        raise BabelError("dtype: bf16 is for GPUs; use fp32 on CPU")

    def autocast():
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- data -----------------------------------------------------------------------
    shards = TokenShards(config.data)
    spec = resolve_mixture(config, shards)
    sampler = MixtureSampler(shards, spec, config.seq_len, seed=config.seed, split="train")
    world, rank = dist_.world, dist_.rank
    B, A = config.micro_batch_size, config.grad_accum
    global_batch = B * A * world
    max_steps = plan_steps(config, len(sampler), world)
    ckpt_steps = set(ck.checkpoint_steps(config.checkpoints, max_steps))
    from babeltower.languages import canonical
    eval_langs = ([canonical(x) for x in config.eval.languages] if config.eval.languages
                  else shards.languages)
    if config.eval.languages and config.eval.tokens_per_language > 0:
        missing = [x for x in eval_langs if not shards.has(x, config.eval.split)]
        if missing:
            raise BabelError(f"eval.languages: {', '.join(missing)} has no "
                             f"{config.eval.split!r} split in {shards.root}")
    windows = (validation_windows(shards, eval_langs, config.seq_len,
                                  config.eval.tokens_per_language, config.eval.split)
               if config.eval.tokens_per_language > 0 else {})

    # ---- resume? --------------------------------------------------------------------
    config_sha = config.sha256()
    resume_from = None
    if run_dir.exists():
        if dist_.is_main:
            ck.clean_partial(run_dir)
        dist_.barrier()
        resume_from = ck.latest_checkpoint(run_dir)
    state = None
    if resume_from is not None:
        mf = json.loads((resume_from / ck.MANIFEST).read_text())
        if mf.get("config_sha256") != config_sha and not force:
            raise BabelError(f"{run_dir} holds a run with a different config (resuming from "
                             f"{resume_from.name}); use a new out_dir, or --force to continue it "
                             "with this config")
        state = ck.load_training_state(resume_from)
        if not force:   # same data stream (spec, seed, seq_len, shards) or a clear error
            sampler.load_state_dict(state["sampler"])
        saved_world = int(state.get("world_size", world))
        if saved_world != world and not force:
            raise BabelError(f"{resume_from.name} was written by {saved_world} process(es), this is "
                             f"{world}: the global batch would change; run with "
                             f"--nproc_per_node={saved_world}, or --force")

    # ---- model ----------------------------------------------------------------------
    if resume_from is not None:
        from transformers import AutoModelForCausalLM
        try:
            with ck._quiet_hf():
                model = AutoModelForCausalLM.from_pretrained(resume_from, dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            raise BabelError(f"cannot load {resume_from}: {str(e).splitlines()[0]}") from None
        model.train()
        init_info = state.get("init_info", {})
    else:
        model, init_info = build_model(config, shards)
    if model.config.vocab_size != shards.vocab_size:
        raise BabelError(f"model vocab_size {model.config.vocab_size} does not match the data's "
                         f"tokenizer ({shards.vocab_size} ids)")
    base_model = model            # the plain HF model (for save_pretrained)
    model.to(device)
    params = count_parameters(model)
    fpt = flops_per_token(model, config.seq_len)

    if dist_.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif dist_.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in _find_blocks(model):
            fully_shard(block)
        fully_shard(model)
    fused = device.type in ("cpu", "cuda") and dist_.strategy != "fsdp"
    optimizer = make_optimizer(model, config, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, config, max_steps) / config.optimizer.lr)
    step, tokens_seen = 0, 0
    lang_index = {lang: i for i, lang in enumerate(sampler.languages)}
    local_counts = [0] * len(lang_index)   # tokens trained on per language, this rank
    if state is not None:
        if dist_.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, set_optimizer_state_dict)
            set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ck.set_rng_state(state["rng"])
        step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
        if dist_.is_main:
            for lang, n in state["tokens_by_language"].items():
                if lang in lang_index:
                    local_counts[lang_index[lang]] = n
    train_model = torch.compile(model) if config.compile else model

    # ---- outputs --------------------------------------------------------------------
    peak = config.peak_flops or _peak_flops_cached(device)
    # token budgets count whole windows of seq_len+1 while training counts seq_len
    # predictions per window, so a tokens= budget equal to the mixture's total overshoots
    # one pass by ~1/seq_len: only a real repeat is worth a note
    if dist_.is_main and max_steps * global_batch > 1.01 * len(sampler) + global_batch:
        print(f"babeltower: note: {max_steps} steps x {global_batch} sequences exceed one pass "
              f"of the mixture ({len(sampler)} sequences); the data repeats in a new order",
              file=sys.stderr)
    if dist_.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(run_dir / "config.yaml")
        atomic_write_json(run_dir / "run.json", provenance(
            config=config, seed=config.seed,
            data_hashes={"data": shards.manifest.get("sha256") or sampler.data_fingerprint()},
            config_sha256_resume=config_sha, parameters=params, flops_per_token=fpt,
            peak_flops_per_device=peak, peak_flops_source=(
                "config" if config.peak_flops else
                "measured: best fp32 1024^3 matmul burst, max over recorded measurements"),
            world_size=world, strategy=dist_.strategy, device=str(device),
            dtype="bf16-autocast" if use_bf16 else "fp32", torch_threads=torch.get_num_threads(),
            max_steps=max_steps, global_batch_sequences=global_batch,
            tokens_per_step=global_batch * config.seq_len, sequences_per_pass=len(sampler),
            mixture=spec.model_dump(mode="json"), mixture_tokens=sampler.tokens_by_language,
            checkpoint_steps=sorted(ckpt_steps), resumed_from=str(resume_from) if resume_from
            else None, **init_info))
    dist_.barrier()
    metrics = _Metrics(run_dir, dist_.is_main, config.tensorboard,
                       int(state["step"]) if state is not None else None)

    def tokens_by_language() -> dict[str, int]:
        t = dist_.all_reduce_(torch.tensor(local_counts, dtype=torch.float64))
        return {lang: int(t[i].item()) for lang, i in lang_index.items()}

    def run_eval() -> dict[str, float]:
        if not windows:
            return {}
        eval_model = model.module if dist_.strategy == "ddp" else model
        return evaluate_loss(eval_model, windows, device, config.eval.batch_size, autocast)

    def save(val_loss: dict[str, float]) -> None:
        by_lang = tokens_by_language()
        sd = None
        osd = optimizer.state_dict() if dist_.strategy != "fsdp" else None
        if dist_.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, get_model_state_dict, get_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            sd = get_model_state_dict(model, options=opts)
            osd = get_optimizer_state_dict(model, optimizer, options=opts)
        ok, err = True, None
        if dist_.is_main:
            training_state = {
                "step": step, "tokens_seen": tokens_seen, "tokens_by_language": by_lang,
                "optimizer": osd, "scheduler": scheduler.state_dict(), "rng": ck.rng_state(),
                "sampler": sampler.state_dict(), "next_sequence": step * global_batch,
                "world_size": world,
                "config_sha256": config_sha, "init_info": init_info,
            }
            manifest = {
                "step": step, "tokens_seen": tokens_seen, "tokens_by_language": by_lang,
                "mixture": spec.model_dump(mode="json"), "config_sha256": config_sha,
                "val_loss": val_loss, "lr": scheduler.get_last_lr()[0],
                "provenance": provenance(config=config, seed=config.seed,
                                         data_hashes=sampler.state_dict()["data_sha256"]),
            }
            try:
                if sd is not None:
                    save_model = _unsharded_copy(base_model)
                    save_model.load_state_dict(sd)
                else:
                    save_model = base_model
                ck.save_checkpoint(run_dir, step, save_model, training_state, manifest,
                                   tokenizer_dir=shards.tokenizer_dir)
                ck.prune(run_dir, config.checkpoints.keep_last)
            except BabelError as e:
                ok, err = False, e
        if not dist_.agree(ok):
            raise err or BabelError(f"rank 0 failed to write checkpoint {ck.step_name(step)}")

    # ---- loop -----------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=step, disable=not (config.progress and dist_.is_main),
               unit="step", dynamic_ncols=True, file=sys.stderr)
    if state is None and 0 in ckpt_steps:
        val = run_eval()
        metrics.log({"kind": "eval", "step": 0, "tokens": 0, "val_loss": val})
        save(val)
    loss_sum = torch.zeros((), device=device)
    gnorm_last = torch.zeros((), device=device)
    window_steps, window_time, last_log = 0, 0.0, time.perf_counter()
    try:
        while step < max_steps:
            t0 = time.perf_counter()
            for micro in range(A):
                start = step * global_batch + (micro * world + rank) * B
                batch, langs = sampler.batch(start, B)
                for lang in langs:
                    local_counts[lang_index[lang]] += config.seq_len
                batch = batch.to(device, non_blocking=True)
                sync = micro == A - 1
                ctx = (model.no_sync() if dist_.strategy == "ddp" and not sync
                       else contextlib.nullcontext())
                if dist_.strategy == "fsdp":
                    model.set_requires_gradient_sync(sync)
                with ctx:
                    with autocast():
                        logits = train_model(input_ids=batch[:, :-1]).logits
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                           batch[:, 1:].reshape(-1))
                    (loss / A).backward()
                loss_sum += loss.detach()
            if config.grad_clip > 0:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                gnorm_last = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += global_batch * config.seq_len
            window_steps += 1
            window_time += time.perf_counter() - t0

            if step % config.log_interval == 0 or step == max_steps:
                loss_val = dist_.all_reduce_(loss_sum.detach().clone().cpu().double()
                                             ).item() / (window_steps * A * world)
                if not math.isfinite(loss_val):
                    raise BabelError(f"training loss became {loss_val} at step {step}; lower "
                                     "optimizer.lr or raise schedule warmup")
                tps = window_steps * global_batch * config.seq_len / max(window_time, 1e-9)
                rec = {"kind": "train", "step": step, "tokens": tokens_seen,
                       "loss": round(loss_val, 6), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(gnorm_last), "tokens_per_s": round(tps, 1),
                       "mfu": round(fpt * tps / (peak * world), 5),
                       "elapsed_s": round(time.perf_counter() - last_log, 3)}
                metrics.log(rec)
                bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                loss_sum.zero_()
                window_steps, window_time, last_log = 0, 0.0, time.perf_counter()
            bar.update(1)

            is_ckpt = step in ckpt_steps
            is_eval = bool(config.eval.interval) and step % config.eval.interval == 0
            if is_ckpt or is_eval:
                val = run_eval()
                metrics.log({"kind": "eval", "step": step, "tokens": tokens_seen,
                             "val_loss": val})
                if is_ckpt:
                    save(val)
    finally:
        bar.close()
        metrics.close()
    dist_.barrier()
    return run_dir


def _unsharded_copy(model):
    """A plain CPU model of the same config (FSDP saves go through it on rank 0)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
