"""Knowledge-transfer share (the paper's probe of the translation stage).

Three kinds of per-problem results, all on the SAME problems (ids shared across
languages):

* the *primary-only* model (e.g. trained on Python only) on the primary-language problems;
* the *new-language-only* model (trained only on the new language) on the new-language
  problems;
* every checkpoint of a continual run on the new-language problems.

The **primary-specific subset** is the problems the primary-only model solves in the
primary language but the new-language-only model fails in the new language: knowledge
that can only have come from the primary language. At a checkpoint, the **share** is
the fraction of its solved new-language problems that lie in that subset (the paper:
about 60% early in continual training, near 0% late). A problem absent from either
reference result is left out of the subset (it cannot be classified).

Problem ids: names are matched after ``problem_key`` (``HumanEval/0``,
``HumanEval_0_has_close_elements`` -> ``HumanEval_0``; other names as they are), so
HumanEval and MultiPL-E files line up; pass ``key=`` for other conventions.

*Solved*: at least one sample passes (``solved_if="any"``), or a pass fraction at or
above a threshold (``solved_if=0.5``). The share comes with a Wilson 95% interval
(binomial over the solved problems) - with a handful of solved problems it is wide, and
the table says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

from babeltower.analysis.statistics import wilson_interval
from babeltower.errors import BabelError
from babeltower.io import read_text_file

_BENCH_ID = re.compile(r"^(HumanEval|MBPP|mbpp|MBXP|mbxp)[/_](\d+)")


def problem_key(name: str) -> str:
    """Language-independent id of a problem name (see the module docstring)."""
    m = _BENCH_ID.match(name)
    return f"{m.group(1)}_{m.group(2)}" if m else name


def _solved(correct: int, n: int, solved_if) -> bool:
    if n == 0:
        return False
    if solved_if == "any":
        return correct > 0
    return correct / n >= float(solved_if)


def load_results(path: str | Path, solved_if="any", key: Callable[[str], str] = problem_key
                 ) -> dict[str, bool]:
    """{problem id: solved} from a pass@k output: a checkpoint dir, its summary.json or
    samples.jsonl; or a JSON mapping {problem: bool} / list of {problem, solved}."""
    p = Path(path)
    if not p.is_dir():
        read_text_file(p, "pass@k results")  # missing, binary or non-UTF-8: one line
    if p.is_dir():
        if (p / "summary.json").exists() and "per_problem" in json.loads(
                (p / "summary.json").read_text()):
            p = p / "summary.json"
        elif (p / "samples.jsonl").exists():
            p = p / "samples.jsonl"
        else:
            raise BabelError(f"no pass@k results (summary.json / samples.jsonl) in {p}")
    if not p.exists():
        raise BabelError(f"results not found: {p}")
    try:
        if p.suffix == ".jsonl":
            counts: dict[str, list[int]] = {}
            for line in p.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    c = counts.setdefault(key(r["problem"]), [0, 0])
                    c[0] += r["status"] == "pass"
                    c[1] += 1
            return {k: _solved(c, n, solved_if) for k, (c, n) in counts.items()}
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, KeyError) as e:
        raise BabelError(f"cannot read results {p}: {e}") from e
    if isinstance(obj, dict) and "per_problem" in obj:
        return {key(r["problem"]): _solved(r["correct"], r["n"], solved_if)
                for r in obj["per_problem"]}
    if isinstance(obj, dict):
        return {key(k): bool(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return {key(r["problem"]): bool(r["solved"]) for r in obj}
    raise BabelError(f"unrecognised results format: {p}")


def load_series(out_dir: str | Path, solved_if="any", key=problem_key
                ) -> list[tuple[str, int | None, dict[str, bool]]]:
    """[(checkpoint, step, {problem: solved})] of a ``pass_at_k`` output directory, in order."""
    d = Path(out_dir)
    top = d / "summary.json"
    if not top.exists():
        raise BabelError(f"not a pass@k output directory (no summary.json): {d}")
    rows = json.loads(top.read_text()).get("checkpoints")
    if not rows:
        raise BabelError(f"{top} lists no checkpoints")
    return [(r["checkpoint"], r.get("step"), load_results(d / r["checkpoint"], solved_if, key))
            for r in rows]


def primary_specific_subset(primary_only: Mapping[str, bool], new_only: Mapping[str, bool]
                            ) -> set[str]:
    """Solved by the primary-only model, failed by the new-language-only model."""
    return {p for p, ok in primary_only.items() if ok and p in new_only and not new_only[p]}


def transfer_share(subset: set[str], solved: Mapping[str, bool]) -> dict:
    """Share of a checkpoint's solved problems that lie in the primary-specific subset."""
    won = {p for p, ok in solved.items() if ok}
    inside = len(won & subset)
    lo, hi = wilson_interval(inside, len(won))
    return {"solved": len(won), "solved_in_subset": inside,
            "share": inside / len(won) if won else None, "share_lo95": lo, "share_hi95": hi}


def knowledge_transfer(primary_only: Mapping[str, bool], new_only: Mapping[str, bool],
                       checkpoints: Iterable[tuple]):
    """One row per checkpoint: solved, solved_in_subset, share (+ Wilson 95%), subset size.

    ``checkpoints``: ``(name, {problem: solved})`` or ``(name, step, {problem: solved})``.
    """
    import pandas as pd

    subset = primary_specific_subset(primary_only, new_only)
    rows = []
    for item in checkpoints:
        name, step, solved = item if len(item) == 3 else (item[0], None, item[1])
        rows.append({"checkpoint": name, "step": step, **transfer_share(subset, solved),
                     "problems": len(solved), "subset_size": len(subset)})
    return pd.DataFrame(rows)
