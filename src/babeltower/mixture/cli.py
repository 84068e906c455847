"""CLI: ``babeltower mixture`` (baseline mixtures), ``babeltower optimize`` (Algorithm 1)
and ``babeltower stages detect`` (the stage test on CPT metrics), which ``stages_app``
groups with ``babeltower.analysis.cli``'s ``stages power``.

All are thin: they call ``make_baseline`` / ``algorithm1`` / ``detect_stages`` and write
a MixtureSpec YAML and/or a JSON of every number with provenance, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from babeltower.analysis.cli import app as power_app, power_command, power_items_command
from babeltower.errors import BabelError
from babeltower.io import refuse_existing
from babeltower.options import output_file


def _available(data: Optional[Path], available: Optional[str], split: str) -> dict[str, int]:
    """Tokens per language: from a packed DATA dir, or 'python=1000,php=2000'."""
    if (data is None) == (available is None):
        raise BabelError("give exactly one of --data DATA (packed corpus) or --available "
                         "'lang=tokens,...'")
    if data is not None:
        from babeltower.corpus.shards import TokenShards
        from babeltower.mixture.sampler import available_tokens

        out = available_tokens(TokenShards(data), split)
        if not out:
            raise BabelError(f"{data} has no {split!r} split for any language")
        return out
    out = {}
    for part in available.split(","):
        if not part.strip():
            continue
        lang, sep, n = part.partition("=")
        try:
            out[lang.strip()] = int(float(n))
        except ValueError:
            sep = ""
        if not sep:
            raise BabelError(f"--available expects lang=tokens pairs, got {part.strip()!r}")
    return out




def mixture_command(
    generator: str = typer.Argument(..., help="natural, uniform, unimax or temperature-<tau>"),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="Mixture YAML to write."),
    data: Optional[Path] = typer.Option(None, "--data", help="Packed corpus directory."),
    available: Optional[str] = typer.Option(None, "--available",
                                            help="Instead of --data: 'python=1000,php=2000'."),
    total_tokens: Optional[int] = typer.Option(None, "--total-tokens", "-n",
                                               help="Token budget (default: all data / uniform: "
                                                    "n_languages x smallest)."),
    max_epochs: float = typer.Option(1.0, "--max-epochs", help="Cap per language, in epochs."),
    split: str = typer.Option("train", "--split"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Write a baseline mixture (natural / uniform / temperature-<tau> / UniMax) as YAML."""
    from babeltower.io import provenance
    from babeltower.mixture.generators import make_baseline

    refuse_existing(out, overwrite)
    avail = _available(data, available, split)
    spec = make_baseline(generator, avail, total_tokens, max_epochs)
    spec.meta["provenance"] = provenance(
        config={"generator": generator, "total_tokens": total_tokens, "max_epochs": max_epochs,
                "split": split, "data": str(data) if data else None},
        data_hashes=_data_hashes(data))
    spec.to_yaml(out)
    _print_budgets(spec)
    typer.echo(str(out))


def _data_hashes(data: Optional[Path]) -> dict | None:
    if data is None:
        return None
    from babeltower.io import sha256_file

    return {"manifest.json": sha256_file(Path(data) / "manifest.json")}


def _print_budgets(spec) -> None:
    from rich.console import Console
    from rich.table import Table

    total = sum(spec.budgets.values())
    t = Table(title=f"mixture {spec.name}")
    for col in ("language", "tokens", "share"):
        t.add_column(col, justify="right" if col != "language" else "left")
    for lang, b in sorted(spec.budgets.items()):
        t.add_row(lang, f"{int(b):,}", f"{b / total:.3f}")
    Console(stderr=True).print(t)


def optimize_command(
    runs: Path = typer.Option(..., "--runs", help="Per-checkpoint CPT metrics: CSV (language, "
                                                  "tokens, loss[, performance][, step][, trials]"
                                                  "[, performance_se][, loss_se]) or JSON."),
    primary: str = typer.Option(..., "--primary", help="Primary language (e.g. python)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="Optimized mixture YAML to write; the "
                                                      "numbers go to the same name with .json."),
    data: Optional[Path] = typer.Option(None, "--data", help="Packed corpus directory."),
    available: Optional[str] = typer.Option(None, "--available",
                                            help="Instead of --data: 'python=1000,php=2000'."),
    primary_tokens: Optional[int] = typer.Option(None, "--primary-tokens",
                                                 help="eta_p (default: all primary data)."),
    beta: str = typer.Option("fit_exp", "--beta", help="Converged loss: fit_exp (asymptote of "
                             "a + b exp(-c t)), tail (constant-LR tail), last_k or min."),
    beta_k: int = typer.Option(3, "--beta-k", help="Checkpoints averaged for beta=last_k."),
    beta_tail_from: Optional[float] = typer.Option(None, "--beta-tail-from",
                                                   help="beta=tail: tokens where the "
                                                        "constant-LR tail starts."),
    p_threshold: float = typer.Option(0.05, "--p-threshold", help="A stage call with a larger "
                                                                  "p-value keeps all data."),
    floor: float = typer.Option(0.05, "--floor", help="No language below this share of its "
                                                      "available tokens."),
    min_tokens: int = typer.Option(0, "--min-tokens", help="... nor below this many tokens."),
    split: str = typer.Option("train", "--split"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Algorithm 1: down-sample each new language to its best CPT stage; write YAML + JSON."""
    from babeltower.io import atomic_write_json, provenance, sha256_file
    from babeltower.mixture.curves import read_cpt_runs
    from babeltower.mixture.optimize import Algorithm1Options, algorithm1

    json_out = out.with_suffix(".json")
    refuse_existing(out, overwrite)
    refuse_existing(json_out, overwrite)
    cpt = read_cpt_runs(runs)
    avail = _available(data, available, split)
    opts = Algorithm1Options(beta=beta, beta_k=beta_k, beta_tail_from=beta_tail_from,
                             p_threshold=p_threshold, floor_fraction=floor, min_tokens=min_tokens)
    res = algorithm1(cpt, avail, primary, primary_tokens, opts)
    spec = res.to_mixture()
    hashes = {"runs": sha256_file(runs), **(_data_hashes(data) or {})}
    cfg = {"runs": str(runs), "primary": primary, "primary_tokens": primary_tokens,
           "algorithm1": res.params, "split": split,
           "data": str(data) if data else None, "available": avail}
    atomic_write_json(json_out, {**res.to_dict(), "mixture": spec.model_dump(mode="json"),
                                 "provenance": provenance(config=cfg, data_hashes=hashes)})
    spec.meta["numbers"] = json_out.name
    spec.to_yaml(out)

    from rich.console import Console
    from rich.table import Table

    t = Table(title="Algorithm 1")
    for col in ("language", "stage (p)", "P* [95%]", "available", "target [95%]", "reason"):
        t.add_column(col)
    for lang, d in res.decisions.items():
        stage = "-" if d.stage_call is None else f"{d.stage_call} ({d.stage_p_value:.3g})"
        p = "-" if d.p_star is None else f"{d.p_star:.3f}" + (
            "" if d.p_star_interval is None else " [{:.3f}, {:.3f}]".format(*d.p_star_interval))
        target = f"{d.target_tokens:,}" + (
            "" if d.target_interval is None else " [{:,}, {:,}]".format(*d.target_interval))
        t.add_row(lang, stage, p, f"{d.available:,}", target, d.reason)
    Console(stderr=True).print(t)
    typer.echo(str(out))


def stages_detect_command(
    runs: Path = typer.Option(..., "--runs", help="Per-checkpoint metrics (same format as "
                                                  "optimize --runs, with trials or "
                                                  "performance_se)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=output_file, help="JSON of every result."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the tests."),
    n_bootstrap: int = typer.Option(999, "--bootstrap", help="Replicates per p-value."),
    null: str = typer.Option("flat", "--null", help="Drop test's null curve: flat or isotonic."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Rise-then-drop / monotone / flat per language, with p-values (docs/stages.md)."""
    from rich.console import Console
    from rich.table import Table

    from babeltower.analysis.stages import StageOptions, detect_stages
    from babeltower.io import atomic_write_json, provenance, sha256_file
    from babeltower.mixture.curves import read_cpt_runs

    if out is not None:
        refuse_existing(out, overwrite)
    opts = StageOptions(alpha=alpha, n_bootstrap=n_bootstrap, null=null, seed=seed)
    results = {}
    for lang, c in read_cpt_runs(runs).items():
        noise = c.performance_noise()
        if noise is None:
            raise BabelError(f"{runs}: {lang} has no per-checkpoint uncertainty (add a 'trials' "
                             "or 'performance_se' column); the test needs the evaluation's own")
        results[lang] = detect_stages(c.tokens, c.performance, noise, options=opts,
                                      name=f"{lang} performance")
    t = Table(title="stages (performance; higher is better)")
    for col in ("language", "call", "drop p", "rise p", "peak tokens", "stable from", "drop"):
        t.add_column(col)
    for lang, r in results.items():
        t.add_row(lang, r.call, f"{r.p_value:.3g}", f"{r.rise_p_value:.3g}",
                  "-" if r.peak_x is None else f"{r.peak_x:,.0f}",
                  "-" if r.stable_x is None else f"{r.stable_x:,.0f}", f"{r.drop:.4g}")
    Console(stderr=True).print(t)
    if out is not None:
        cfg = {"runs": str(runs), "alpha": alpha, "n_bootstrap": n_bootstrap, "null": null}
        atomic_write_json(out, {"stages": {k: r.to_dict() for k, r in results.items()},
                                "provenance": provenance(config=cfg, seed=seed,
                                                         data_hashes={"runs": sha256_file(runs)})})
        typer.echo(str(out))


# The ``babeltower stages`` group: ``power`` (analysis) and ``detect`` (here).
stages_app = typer.Typer(help=power_app.info.help, no_args_is_help=True)
stages_app.command("power")(power_command)
stages_app.command("power-items")(power_items_command)
stages_app.command("detect")(stages_detect_command)
