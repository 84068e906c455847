"""The house rules of src/babeltower, checked on the source so they stay true:

* no import cycle between modules (imports inside functions count: a lazy import still
  ties two modules together);
* lower layers never import the layers that use them: corpus, mixture, train, probes,
  evaluate, analysis and the shared top-level modules never import experiment or report;
* no module imports another module's private (``_name``) names, by ``from m import _x``
  or by ``m._x`` on an imported module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "babeltower"
HIGH = ("babeltower.experiment", "babeltower.report")
ENTRY = {"babeltower.cli", "babeltower.__main__"}   # the CLI assembles every layer


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]):
    """(importer, imported module, imported names or None, lineno) for every import."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("babeltower"):
                        yield mod, a.name, None, node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                if not target.startswith("babeltower"):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    yield mod, (sub if sub in mods else target), a.name, node.lineno


def _owner(name: str, mods: dict[str, Path]) -> str:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def test_no_import_cycles():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, target, _, _ in _imports(mods):
        tgt = _owner(target, mods)
        # a package's __init__ importing its own submodules is its public face, not a cycle
        if tgt and tgt != mod and not (tgt.startswith(mod + ".") and mods[mod].name == "__init__.py"):
            graph[mod].add(tgt)
    # a module importing anything inside its own package from its __init__ is fine too;
    # find strongly connected components (Tarjan)
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not comps, f"import cycles: {comps}"


def test_lower_layers_never_import_experiment_or_report():
    mods = _modules()
    bad = [f"{mod}:{line} imports {target}" for mod, target, _, line in _imports(mods)
           if mod not in ENTRY and not mod.startswith(HIGH) and target.startswith(HIGH)]
    assert not bad, "\n".join(bad)


def test_report_never_imports_experiment():
    mods = _modules()
    bad = [f"{mod}:{line} imports {target}" for mod, target, _, line in _imports(mods)
           if mod.startswith("babeltower.report") and target.startswith("babeltower.experiment")]
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    mods = _modules()
    bad = []
    for mod, target, name, line in _imports(mods):
        owner = _owner(target, mods)
        if name and name.startswith("_") and not name.startswith("__") and owner != mod:
            bad.append(f"{mod}:{line} imports {name} from {owner}")
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("babeltower"):
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases[node.value.id] != mod):
                bad.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


MAX_LINES = 80


def test_no_function_longer_than_80_lines_without_a_reason():
    """A function over 80 lines must say why in a comment starting with '# long:' in the
    comment block above its ``def`` or on its first body line."""
    bad = []
    for mod, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n <= MAX_LINES:
                    continue
                # the comment block right above the def (or decorators), or the first body line
                i = start - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    i -= 1
                around = lines[i + 1: start - 1] + [lines[node.body[0].lineno - 1]]
                if not any(line.strip().startswith("# long:") for line in around):
                    bad.append(f"{mod}.{node.name} ({n} lines, {path.name}:{node.lineno})")
    assert not bad, "functions over 80 lines without a '# long:' reason:\n" + "\n".join(bad)


# Interval arithmetic (quantiles of replicates, distribution quantiles, z = 1.96) lives in
# analysis/statistics.py only, so there is one definition of every interval. What else may
# call such a function, and why it is not an interval:
INTERVAL_CALLS = {"quantile", "nanquantile", "percentile", "nanpercentile", "ppf", "isf"}
NOT_INTERVALS = {
    # the threshold model's latent: the normal quantile of each checkpoint's mean accuracy
    ("babeltower.analysis.item_power", "ppf"),
    # quartiles that describe a distribution of LAPE entropies (a summary, not an interval)
    ("babeltower.probes.lape_applicability", "quantile"),
}


def _interval_uses(mods: dict[str, Path]) -> list[str]:
    found = []
    for mod, path in mods.items():
        if mod == "babeltower.analysis.statistics":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name not in INTERVAL_CALLS or (mod, name) in NOT_INTERVALS:
                    continue
            elif (isinstance(node, ast.Constant) and isinstance(node.value, float)
                  and abs(node.value - 1.96) < 1e-3):
                name = str(node.value)     # z of a 95% interval, however rounded
            else:
                continue
            found.append(f"{mod}:{node.lineno} {name}")
    return found


def test_intervals_are_computed_in_analysis_statistics_only():
    found = _interval_uses(_modules())
    assert not found, ("intervals computed outside analysis/statistics.py (use Estimate, "
                       "wilson_interval, t_interval, percentile_interval):\n" + "\n".join(found))


def test_experiment_and_report_compute_no_measure():
    """The experiment composes the library's measures and the report shows them: neither
    imports torch or transformers (a forward pass there would be a second way to measure)."""
    bad = []
    for mod, path in _modules().items():
        if not mod.startswith(HIGH):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{mod}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in ("torch", "transformers")]
    assert not bad, bad


def test_interval_rule_catches_a_planted_interval(tmp_path):
    pkg = tmp_path / "babeltower"
    (pkg / "evaluate").mkdir(parents=True)
    (pkg / "evaluate" / "x.py").write_text(
        "import numpy as np\nlo = np.quantile([1, 2], 0.025)\nz = 1.96\n")
    mods = {"babeltower.evaluate.x": pkg / "evaluate" / "x.py"}
    assert len(_interval_uses(mods)) == 2


@pytest.mark.parametrize("rule", [test_no_import_cycles, test_no_private_names_across_modules])
def test_rules_catch_a_planted_violation(rule, tmp_path, monkeypatch):
    """The checks can fail: a planted cycle and a planted private import are found."""
    pkg = tmp_path / "babeltower"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from babeltower.b import _hidden\n")
    (pkg / "b.py").write_text("import babeltower.a\n_hidden = 1\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    with pytest.raises(AssertionError):
        rule()
