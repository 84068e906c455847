"""Per-language evaluation: held-out loss / bits-per-byte, cloze accuracy, pass@k, transfer.

* ``loss.evaluate_loss(source_or_model, data, languages, max_tokens_per_language)``
* ``cloze.evaluate_cloze(model, tokenizer, suites)`` / ``cloze.evaluate_cloze_series``
* ``passk.pass_at_k(source, problems, out=..., n=..., k=[...])`` (+ ``references=True``)
* ``run_program(language, source, timeout=...)`` -> ``ExecResult``: sandboxed, from
  ``babeltower.sandbox`` (the containment lives there)
* ``transfer.knowledge_transfer(primary_only, new_only, checkpoints)``

Names are imported lazily, so ``import babeltower.evaluate`` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "evaluate_loss": "loss", "LossConfig": "loss",
    "evaluate_cloze": "cloze", "evaluate_cloze_series": "cloze",
    "pass_at_k": "passk", "PassKConfig": "passk", "Problem": "passk",
    "estimate_pass_at_k": "passk", "load_problem_set": "passk",
    "run_program": "babeltower.sandbox.execute", "ExecResult": "babeltower.sandbox.execute",
    "run_sandboxed": "babeltower.sandbox.run", "Limits": "babeltower.sandbox.fences",
    "SandboxUnavailable": "babeltower.sandbox.run",
    "knowledge_transfer": "transfer", "load_humaneval": "humaneval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        mod = _EXPORTS[name]
        return getattr(import_module(mod if "." in mod else f"babeltower.evaluate.{mod}"), name)
    raise AttributeError(f"module 'babeltower.evaluate' has no attribute {name!r}")
