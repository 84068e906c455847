"""Model FLOPs utilisation: the measured matmul peak (the denominator) and MFU itself.

MFU = FLOPs/token (``presets.flops_per_token``) x tokens/s / (peak x processes). The
peak is *measured* on this device, not taken from a data sheet: on CPUs the vendor's
number is out of reach of any framework, and on GPUs the dense bf16 rate a large matmul
actually reaches is the honest ceiling for a training step.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from babeltower.errors import BabelError
from babeltower.io import atomic_write_json

_PEAK_CACHE: dict[str, float] = {}


def measure_peak_flops(device: torch.device | str = "cpu", n: int = 1024,
                       seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """Achievable matmul FLOP/s of this device for ``dtype`` at the current thread setting.

    n x n matmuls timed in bursts of two for ``seconds``; the best burst counts (on a
    shared machine the least disturbed burst is the closest to what the hardware does).
    For a GPU's bf16 dense peak use e.g. ``n=8192, dtype=torch.bfloat16``.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):   # warm up
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(2):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        best = max(best, 2 * 2.0 * n ** 3 / (t1 - t0))
        if t1 >= t_end:
            return best


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cached_peak_flops(device: torch.device | str) -> float:
    """Best fp32 matmul FLOP/s ever measured for this CPU/GPU model and thread count.

    Measured at the start of a run and recorded in ``BABELTOWER_CACHE/peak_flops.json``
    (default ``~/.cache/babeltower``); the recorded value is the maximum over all
    measurements, so a measurement taken while other processes load the machine does not
    inflate MFU. Set ``peak_flops`` in the config to fix the denominator instead.
    """
    device = torch.device(device)
    key = f"{device.type}|{device_name(device)}|threads={torch.get_num_threads()}"
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


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, world: int = 1) -> float:
    """Model FLOPs utilisation of ``world`` devices of ``peak_flops`` each."""
    return flops_per_token * tokens_per_s / (peak_flops * world)
