"""Functional correctness: generate completions, run them in the sandbox, estimate pass@k.

Problems have the HumanEval / MultiPL-E JSONL shape::

    {"name": ..., "language": ..., "prompt": ..., "tests": ..., "stop_tokens": [...],
     "canonical_solution": ... (optional)}

The program executed for a completion is ``prompt + completion + "\\n" + tests``; exit
code 0 = pass (``execute.run_program``). A completion is the generated text cut at the
first stop token (MultiPL-E / Codex convention).

Generation (``generate_completions``): transformers ``generate``, batched with left
padding, greedy (``temperature=0``; one generation copied to the n samples, since it is
deterministic) or sampled (``temperature``, ``top_p``), ``max_new_tokens``, stop strings
end a row early. Sampling is seeded per batch from ``(seed, index of its first sample)``,
so an interrupted run resumes to the same samples.

pass@k is the unbiased estimator of Chen et al. (2021), in its numerically stable product
form: ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (= ``1 - C(n-c, k) / C(n, k)``).

Outputs (``pass_at_k(..., out=DIR)``), one sub-directory per checkpoint of the source::

    DIR/<checkpoint>/samples.jsonl   # one row per sample: problem, sample, completion, status, time
    DIR/<checkpoint>/summary.json    # pass@k, per-problem n/c, status counts, provenance
    DIR/summary.json                 # one row per checkpoint + provenance

Samples are appended to ``DIR/.partial/<checkpoint>/samples.partial.jsonl`` as problems
finish; a rerun resumes from it. A checkpoint's directory is written as one unit (a
temporary directory renamed into place, ``io.atomic_dir``) only when it is complete, so
``DIR/<checkpoint>/`` either holds both files or does not exist.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from babeltower.analysis.statistics import percentile_interval
from babeltower.errors import BabelError
from babeltower.sandbox.execute import run_program
from babeltower.evaluate.humaneval import load_humaneval
from babeltower.evaluate.problems import load_problems
from babeltower.sandbox.run import isolation_line
from babeltower.io import (PartialRows, atomic_dir, atomic_write_json, atomic_write_text,
                           provenance, sha256_json)
from babeltower.languages import canonical
from babeltower.series import SeriesOptions, run_series


class Problem(BaseModel):
    """One problem row (HumanEval / MultiPL-E shape); extra fields are kept."""

    model_config = {"extra": "allow"}

    name: str
    language: str
    prompt: str
    tests: str
    stop_tokens: list[str] = Field(default_factory=list)
    canonical_solution: str | None = None

    @field_validator("language")
    @classmethod
    def _known_language(cls, v: str) -> str:
        return canonical(v)

    def program(self, completion: str) -> str:
        return self.prompt + completion + "\n" + self.tests


class PassKConfig(BaseModel):
    """How a pass@k evaluation is run (recorded in every summary)."""

    problems: str = "humaneval"          # a file, builtin:<lang>, <lang>, or humaneval
    n: int = Field(1, ge=1)               # samples per problem
    k: list[int] = Field(default_factory=lambda: [1])

    @field_validator("k")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("every k must be >= 1")
        return v
    temperature: float = Field(0.0, ge=0.0)   # 0 = greedy
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    workers: int = Field(2, ge=1)         # parallel sandboxed executions
    timeout: float = Field(10.0, gt=0)    # seconds per program run
    seed: int = 0
    references: bool = False              # run canonical solutions instead of generating
    limit: int | None = Field(None, ge=1) # first N problems only
    unsafe: bool = False                  # run even where isolation is incomplete


# --------------------------------------------------------------------------- problems
def read_problems_file(path: str | os.PathLike) -> list[Problem]:
    """Problems from a JSONL (or .jsonl.gz) file; a malformed row names its line."""
    p = Path(path)
    if not p.exists():
        raise BabelError(f"problems file not found: {p}")
    if not p.is_file():
        raise BabelError(f"problems file is not a file: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    out: list[Problem] = []
    lines: dict[str, int] = {}   # name -> line: results are kept per problem name
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    out.append(_problem_row(p, i, line))
                    if out[-1].name in lines:
                        raise BabelError(f"{p}:{i}: problem name {out[-1].name!r} is already "
                                         f"used on line {lines[out[-1].name]}; names must be "
                                         "unique")
                    lines[out[-1].name] = i
    except UnicodeDecodeError as e:
        raise BabelError(f"{p}: not a UTF-8 JSONL file ({e.reason} at byte {e.start})") from e
    except (OSError, EOFError) as e:  # unreadable, or a broken .gz
        raise BabelError(f"{p}: cannot read problems ({e})") from e
    if not out:
        raise BabelError(f"no problems in {p}")
    return out


def _problem_row(p: Path, i: int, line: str) -> Problem:
    try:
        return Problem.model_validate(json.loads(line))
    except json.JSONDecodeError as e:
        raise BabelError(f"{p}:{i}: not JSON ({e.msg})") from e
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "row"
        raise BabelError(f"{p}:{i}: bad problem row ({where}: {err['msg']})") from e
    except BabelError as e:
        raise BabelError(f"{p}:{i}: {e}") from e


def passk_config(**values) -> PassKConfig:
    """A validated PassKConfig; a bad value is one line naming the option."""
    try:
        return PassKConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise BabelError(f"pass@k: bad --{where.replace('_', '-')}: {err['msg']} "
                         f"(got {err.get('input')!r})") from e


def load_problem_set(spec: str) -> list[Problem]:
    """``humaneval``, ``builtin:<lang>`` / ``<lang>`` (our multilingual set), or a file."""
    if spec == "humaneval":
        return [Problem.model_validate(r) for r in load_humaneval()]
    if Path(spec).exists():
        return read_problems_file(spec)
    lang = spec.split(":", 1)[1] if spec.startswith("builtin:") else spec
    if not spec.startswith("builtin:") and ("/" in spec or spec.endswith(".jsonl")):
        raise BabelError(f"problems file not found: {spec}")
    rows = load_problems(f"builtin:{lang}")
    return [Problem.model_validate(r) for r in rows]


# --------------------------------------------------------------------------- estimator
def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c pass (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def truncate_at_stop(text: str, stop_tokens: Iterable[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop token."""
    cut = len(text)
    for s in stop_tokens:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# --------------------------------------------------------------------------- generation
def generate_completions(model, tokenizer, prompts: list[str], stop_tokens: list[list[str]],
                         n: int = 1, temperature: float = 0.0, top_p: float = 0.95,
                         max_new_tokens: int = 256, batch_size: int = 8, seed: int = 0,
                         progress: bool = True, on_problem_done=None,
                         skip: set[int] | None = None) -> list[list[str]]:
    """n completions per prompt (cut at stop tokens), batched with left padding.

    ``on_problem_done(i, completions)`` is called as soon as all samples of prompt i are
    done (used to stream results to disk); prompts in ``skip`` are not generated.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    greedy = temperature == 0.0
    per_prompt = 1 if greedy else n
    work = [(i, s) for i in range(len(prompts)) if not (skip and i in skip)
            for s in range(per_prompt)]
    out: list[list[str]] = [[] for _ in prompts]
    pending = Counter(i for i, _ in work)
    device = next(model.parameters()).device
    bar = tqdm(total=len(work), desc="generate", unit="sample", disable=not progress)
    for b in range(0, len(work), batch_size):
        batch = work[b:b + batch_size]
        texts = [prompts[i] for i, _ in batch]
        stops = sorted({s for i, _ in batch for s in stop_tokens[i] if s})
        # the tokenizer's own convention (BOS or not), as the model saw text in training
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id)
        if greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            torch.manual_seed(seed * 1_000_003 + batch[0][0] * 1009 + batch[0][1])
        if stops:
            kw.update(stop_strings=stops, tokenizer=tokenizer)
        with torch.no_grad():
            gen = model.generate(**{k: v.to(device) for k, v in enc.items()}, **kw)
        new = gen[:, enc["input_ids"].shape[1]:]
        for (i, _), row in zip(batch, new):
            text = tokenizer.decode(row, skip_special_tokens=True)
            out[i].append(truncate_at_stop(text, stop_tokens[i]))
            pending[i] -= 1
            if pending[i] == 0:
                if greedy:
                    out[i] = out[i] * n
                if on_problem_done is not None:
                    on_problem_done(i, out[i])
        bar.update(len(batch))
    bar.close()
    return out


# --------------------------------------------------------------------------- execution
def execute_samples(problems: list[Problem], completions: dict[int, list[str]],
                    workers: int = 2, timeout: float = 10.0,
                    progress: bool = True, python_fork_server: bool = True,
                    memory_bytes: int = 2 << 30, unsafe: bool = False) -> list[dict]:
    """Run every (problem, sample) program in the sandbox; one result row each, with the
    isolation that was in force (``sandbox.isolation_line``). Where isolation cannot be
    set up this raises ``SandboxUnavailable`` before any program runs, unless ``unsafe``."""
    from tqdm.auto import tqdm

    jobs = [(pi, si, comp) for pi, comps in completions.items() for si, comp in enumerate(comps)]

    def one(job):
        pi, si, comp = job
        p = problems[pi]
        r = run_program(p.language, p.program(comp), timeout=timeout,
                        memory_bytes=memory_bytes, python_fork_server=python_fork_server,
                        unsafe=unsafe)
        return {"problem": p.name, "language": p.language, "sample": si, "completion": comp,
                "status": r.status, "exit_code": r.exit_code, "signal": r.signal,
                "time": round(r.wall_time + (r.compile_time or 0.0), 4),
                "stderr": r.stderr[-1000:], "isolation": isolation_line(r.isolation)}

    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for row in tqdm(ex.map(one, jobs), total=len(jobs), desc="execute", unit="program",
                        disable=not progress):
            rows.append(row)
    return rows


def summarize(problems: list[Problem], rows: list[dict], ks: list[int]) -> dict:
    """Per-problem n/c and pass@k, their means, and status counts."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["problem"], []).append(r)
    per_problem = []
    for p in problems:
        rs = by.get(p.name, [])
        n, c = len(rs), sum(r["status"] == "pass" for r in rs)
        rec = {"problem": p.name, "language": p.language, "n": n, "correct": c,
               "statuses": dict(Counter(r["status"] for r in rs))}
        for k in ks:
            rec[f"pass@{k}"] = estimate_pass_at_k(n, c, k) if n >= k else None
        per_problem.append(rec)
    summary: dict[str, Any] = {"problems": len(problems), "samples": len(rows)}
    rng = np.random.default_rng(0)
    for k in ks:
        vals = [r[f"pass@{k}"] for r in per_problem if r[f"pass@{k}"] is not None]
        complete = len(vals) == len(problems) and len(vals) > 0
        summary[f"pass@{k}"] = float(np.mean(vals)) if complete else None
        if complete:  # bootstrap over problems: how much another problem sample would move it
            v = np.asarray(vals)
            boots = v[rng.integers(0, len(v), size=(1000, len(v)))].mean(1)
            summary[f"pass@{k}_ci95"] = [float(b) for b in percentile_interval(boots)]
    summary["solved"] = sum(r["correct"] > 0 for r in per_problem)
    summary["statuses"] = dict(Counter(r["status"] for r in rows))
    # what the programs really ran under: one line each, with how many samples
    summary["isolation"] = dict(Counter(r.get("isolation", "not recorded") for r in rows))
    summary["per_problem"] = per_problem
    return summary


# --------------------------------------------------------------------------- driver
def _read_partial(path: Path) -> dict[str, list[dict]]:
    return PartialRows(path, "problem").done


def partial_samples_path(out_dir: str | os.PathLike) -> Path:
    """Where the samples of an unfinished checkpoint ``out_dir`` accumulate (resume file)."""
    out_dir = Path(out_dir)
    return out_dir.parent / ".partial" / out_dir.name / "samples.partial.jsonl"


def _evaluate_one(problems: list[Problem], cfg: PassKConfig, out_dir: Path, model=None,
                  tokenizer=None, checkpoint: dict | None = None, progress: bool = True) -> dict:
    partial = partial_samples_path(out_dir)
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = _read_partial(partial)
    # only problems with all n samples count as done
    done = {k: v for k, v in done.items() if len(v) == cfg.n}
    # rewrite it with the complete problems only (drops a line cut by an interruption)
    atomic_write_text(partial, "".join(json.dumps(r) + "\n" for rs in done.values() for r in rs))
    todo = [i for i, p in enumerate(problems) if p.name not in done]
    t0 = time.time()

    def flush(rows: list[dict]) -> None:
        with open(partial, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()

    if cfg.references:
        missing = [problems[i].name for i in todo if problems[i].canonical_solution is None]
        if missing:
            raise BabelError(f"--references: {len(missing)} problems have no canonical_solution "
                             f"(first: {missing[0]})")
        comps = {i: [problems[i].canonical_solution] * cfg.n for i in todo}
        # execute in chunks so an interruption keeps finished problems
        chunk = max(1, cfg.workers * 8)
        for s in range(0, len(todo), chunk):
            part = {i: comps[i] for i in todo[s:s + chunk]}
            flush(execute_samples(problems, part, cfg.workers, cfg.timeout, progress,
                                  unsafe=cfg.unsafe))
    else:
        if model is None:
            raise BabelError("pass@k needs a model (or --references)")
        from concurrent.futures import Future

        pool = ThreadPoolExecutor(max_workers=1)   # execute while the next batch generates
        futures: list[Future] = []

        def on_done(i: int, completions: list[str]) -> None:
            futures.append(pool.submit(lambda: flush(execute_samples(
                problems, {i: completions}, cfg.workers, cfg.timeout, progress=False,
                unsafe=cfg.unsafe))))

        prompts = [p.prompt for p in problems]
        stops = [p.stop_tokens for p in problems]
        generate_completions(model, tokenizer, prompts, stops, n=cfg.n,
                             temperature=cfg.temperature, top_p=cfg.top_p,
                             max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                             seed=cfg.seed, progress=progress, on_problem_done=on_done,
                             skip={i for i, p in enumerate(problems) if p.name in done})
        for f in futures:
            f.result()
        pool.shutdown()
    rows_by = _read_partial(partial)
    order = {p.name: i for i, p in enumerate(problems)}
    rows = sorted((r for rs in rows_by.values() for r in rs[:cfg.n]),
                  key=lambda r: (order.get(r["problem"], 1 << 30), r["sample"]))
    summary = summarize(problems, rows, cfg.k)
    summary["seconds_this_run"] = round(time.time() - t0, 2)
    summary["checkpoint"] = checkpoint
    summary["provenance"] = provenance(
        config=cfg, seed=cfg.seed,
        data_hashes={"problems": sha256_json([p.model_dump() for p in problems])},
        checkpoint=checkpoint)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        atomic_write_text(tmp / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_json(tmp / "summary.json", summary)
    partial.unlink(missing_ok=True)
    for d in (partial.parent, partial.parent.parent):  # .partial/<checkpoint>, .partial
        try:
            d.rmdir()
        except OSError:
            pass
    return summary


def pass_at_k(source=None, problems: str | list[Problem] = "humaneval",
              out: str | os.PathLike | None = None, config: PassKConfig | None = None,
              model=None, tokenizer=None, progress: bool = True, **overrides) -> dict:
    """Evaluate pass@k for every checkpoint of ``source`` (or a given model, or references).

    ``source``: anything ``babeltower.checkpoints.list_checkpoints`` accepts, or None with
    ``model``/``tokenizer`` given, or None with ``references=True``. Returns the top-level
    summary ``{"checkpoints": [...], "provenance": ...}``; with ``out`` every checkpoint's
    samples and summary are written there (see the module docstring).
    """
    import tempfile

    cfg = passk_config(**{**(config or PassKConfig()).model_dump(), **overrides})
    if isinstance(problems, str):
        cfg = cfg.model_copy(update={"problems": problems})
        probs = load_problem_set(problems)
    else:
        probs = [p if isinstance(p, Problem) else Problem.model_validate(p) for p in problems]
    if cfg.limit:
        probs = probs[:cfg.limit]
    bad_k = [k for k in cfg.k if k > cfg.n]
    if bad_k:
        raise BabelError(f"pass@{bad_k[0]} needs --n >= {bad_k[0]} samples (got --n {cfg.n})")
    out_root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="bt-passk-"))
    rows = []
    if cfg.references:
        s = _evaluate_one(probs, cfg, out_root / "references", progress=progress,
                          checkpoint={"name": "references"})
        rows.append({"checkpoint": "references", "step": None, **_headline(s, cfg)})
    elif model is not None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or "model"
        s = _evaluate_one(probs, cfg, out_root / "model", model, tokenizer, progress=progress,
                          checkpoint={"name": str(name)})
        rows.append({"checkpoint": "model", "step": None, **_headline(s, cfg)})
    else:
        if source is None:
            raise BabelError("pass@k needs a SOURCE (a checkpoint or run), a model, or --references")
        # one load per checkpoint through the series runner (torchrun-split; finished
        # checkpoints are skipped without loading, a half-sampled one resumes per sample)
        measure = PassKMeasure(probs, cfg, out_root, progress)
        res = run_series(source, [measure], state=out_root / ".series",
                         options=SeriesOptions(progress=False))
        rows += res.rows[measure.name]
        if not res.is_writer:
            return {"checkpoints": rows, "out": str(out_root)}
        res.close()
    top = {"checkpoints": rows, "provenance": provenance(
        config=cfg, seed=cfg.seed, source=str(source) if source is not None else None,
        data_hashes={"problems": sha256_json([p.model_dump() for p in probs])})}
    atomic_write_json(out_root / "summary.json", top)
    top["out"] = str(out_root)
    return top


class PassKMeasure:
    """pass@k as a series measure (``babeltower.series``): one headline row per
    checkpoint; samples, results and the summary go to ``out_root/<checkpoint>/``."""

    name = "pass_at_k"

    def __init__(self, problems: list[Problem], cfg: PassKConfig, out_root: Path,
                 progress: bool = True):
        self.problems, self.cfg, self.out_root, self.progress = problems, cfg, out_root, progress

    def config(self) -> dict:
        return self.cfg.model_dump(mode="json")

    def data_hashes(self) -> dict:
        return {"problems": sha256_json([p.model_dump() for p in self.problems])}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        sub = self.out_root / ref.name
        if (sub / "summary.json").exists():  # finished earlier: resume past it
            s = json.loads((sub / "summary.json").read_text())
        else:
            ck = {"name": ref.name, "path": ref.path, "step": ref.step, "tokens": ref.tokens}
            s = _evaluate_one(self.problems, self.cfg, sub, model, tokenizer, checkpoint=ck,
                              progress=self.progress)
        return [{"tokens": ref.tokens, **_headline(s, self.cfg)}]


def _headline(summary: dict, cfg: PassKConfig) -> dict:
    return {**{f"pass@{k}": summary.get(f"pass@{k}") for k in cfg.k},
            **{f"pass@{k}_ci95": summary.get(f"pass@{k}_ci95") for k in cfg.k},
            "solved": summary.get("solved"), "problems": summary.get("problems"),
            "statuses": summary.get("statuses"),
            "isolation": " | ".join(summary.get("isolation") or {}) or None}
