"""CLI: ``babeltower stages power`` (detection and false-positive rates of the stage test
for a schedule, an eval size and an effect) and ``stages power-items`` (the same for the
item-level test, simulated at item level). Thin: they call ``stage_power`` /
``item_power`` and print.

``babeltower stages detect`` reads CPT metrics files, which belong to ``mixture``
(a layer above this one), so it lives in ``babeltower.mixture.cli``, whose ``stages_app``
is the ``stages`` group: ``power`` from here, ``detect`` from there."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from babeltower.errors import BabelError
from babeltower.io import refuse_existing
from babeltower.options import output_file

app = typer.Typer(help="Stage test (docs/stages.md): detect stages, or compute its power.",
                  no_args_is_help=True)




def _sizes(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BabelError(f"expected comma-separated numbers, got {text!r}") from None


@app.command("power")
def power_command(
    checkpoints: Optional[int] = typer.Option(None, "--checkpoints", help="N checkpoints over "
                                              "CPT (with --spacing)."),
    schedule_file: Optional[Path] = typer.Option(None, "--schedule", help="Checkpoint positions "
                                                 "(tokens or steps, one a line, or JSON)."),
    spacing: str = typer.Option("even", "--spacing", help="even or dense-middle."),
    eval_size: Optional[int] = typer.Option(None, "--eval-size", help="Binomial n: prompts "
                                            "per checkpoint."),
    se: Optional[float] = typer.Option(None, "--se", help="Instead of --eval-size: standard "
                                       "error per checkpoint (loss/bpb)."),
    peak_at: float = typer.Option(0.2, "--peak-at", help="Peak position, fraction of CPT."),
    drop: float = typer.Option(0.3, "--drop", help="Drop: share of the peak (accuracy) or "
                                                   "of the rise (--se)."),
    base: float = typer.Option(0.4, "--base-acc", help="Peak level."),
    start: Optional[float] = typer.Option(None, "--start", help="Level at CPT start "
                                                               "(default base/2)."),
    transition: float = typer.Option(0.2, "--transition", help="Decline length, fraction "
                                                              "of CPT."),
    sims: int = typer.Option(500, "--sims", help="Simulated curves per kind."),
    n_bootstrap: int = typer.Option(99, "--bootstrap", help="Replicates per p-value."),
    alpha: float = typer.Option(0.05, "--alpha"),
    find: bool = typer.Option(False, "--find", help="Scan --find-checkpoints x --find-sizes "
                                                    "for the cheapest design that meets "
                                                    "--power with <= alpha false positives."),
    find_checkpoints: str = typer.Option("30,40,50", "--find-checkpoints"),
    find_sizes: str = typer.Option("100,200,400,800", "--find-sizes", help="Eval sizes (or "
                                   "standard errors with --se) to scan."),
    power: float = typer.Option(0.9, "--power", help="Target detection rate for --find."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=output_file,
                                       help="JSON of the results."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Detection rate of a rise-then-drop and false positives on monotone / flat curves."""
    # numpy / scipy load here, not at CLI start-up (`babeltower stages --help`)
    from babeltower.analysis.power import (Effect, describe, find_design, read_schedule,
                                           schedule, stage_power)
    from babeltower.analysis.stages import BinomialNoise, GaussianNoise, StageOptions
    from babeltower.io import atomic_write_json, provenance

    refuse_existing(out, overwrite)
    if (eval_size is None) == (se is None) and not find:
        raise BabelError("give exactly one of --eval-size (binomial n) or --se")
    effect = Effect(peak_at, drop, base, start, transition)
    opts = StageOptions(alpha=alpha, n_bootstrap=n_bootstrap)
    kind = "gaussian" if se is not None else "binomial"
    if find:
        results = find_design(effect, [int(c) for c in _sizes(find_checkpoints)],
                              _sizes(find_sizes), spacing, kind, sims, opts, seed, power, alpha)
    else:
        if (checkpoints is None) == (schedule_file is None):
            raise BabelError("give exactly one of --checkpoints N or --schedule FILE")
        x = read_schedule(schedule_file) if schedule_file else schedule(spacing, checkpoints)
        noise = GaussianNoise(se) if se is not None else BinomialNoise(eval_size)
        results = [stage_power(x, noise, effect, sims, opts, seed)]
    for r in results:
        typer.echo(describe(r) + ("  <- meets the target" if r.meets(power, alpha) else ""))
    if find and not results[-1].meets(power, alpha):
        typer.echo("no design in the grid meets the target: widen --find-checkpoints/--find-sizes")
    if out is not None:
        atomic_write_json(out, {"results": [r.to_dict() for r in results],
                                "provenance": provenance(config={"effect": effect.__dict__,
                                                                 "sims": sims, "find": find},
                                                         seed=seed)})
        typer.echo(str(out))


@app.command("power-items")
def power_items_command(
    checkpoints: int = typer.Option(31, "--checkpoints", help="Checkpoints over CPT (even)."),
    items: int = typer.Option(150, "--items", help="Items scored at every checkpoint."),
    clusters: int = typer.Option(25, "--clusters", help="Clusters of items sharing churn "
                                                        "(e.g. answer tokens)."),
    seeds: int = typer.Option(3, "--seeds", help="Runs (data-order seeds) pooled."),
    churn: str = typer.Option("persistent churn", "--churn", help="A named world: independent, "
                              "persistent churn, template-shared churn, learn-and-stay, "
                              "seed-level shock (docs/stages.md)."),
    churn_from: Optional[Path] = typer.Option(None, "--churn-from", help="results.json of an "
                                              "experiment: its fitted churn (with --language)."),
    language: Optional[str] = typer.Option(None, "--language", help="New language whose "
                                           "fitted churn --churn-from reads."),
    peak_at: float = typer.Option(0.2, "--peak-at"),
    drop: float = typer.Option(0.3, "--drop", help="Drop as a share of the peak."),
    base: float = typer.Option(0.5, "--base-acc", help="Peak accuracy."),
    start: Optional[float] = typer.Option(None, "--start", help="Accuracy at CPT start "
                                                               "(default base/2)."),
    transition: float = typer.Option(0.2, "--transition"),
    curves: str = typer.Option("effect,monotone,flat", "--curves", help="Which mean curves "
                               "to simulate (effect = detection; monotone, flat = false positives)."),
    sims: int = typer.Option(1000, "--sims"),
    n_bootstrap: int = typer.Option(99, "--bootstrap"),
    alpha: float = typer.Option(0.05, "--alpha"),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=output_file,
                                       help="JSON of the results."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Item-level power: items re-scored at every checkpoint of several runs, with churn
    (docs/stages.md): detection and false positives of the per-run and the pooled test,
    next to the binomial-model test on the same curves."""
    import dataclasses
    import json

    from babeltower.analysis.item_power import SCENARIOS, ChurnModel, ItemDesign, item_power
    from babeltower.analysis.item_test import ItemTestOptions
    from babeltower.analysis.power import Effect, schedule
    from babeltower.io import atomic_write_json, provenance

    refuse_existing(out, overwrite)
    if churn_from is not None:
        if not language:
            raise BabelError("--churn-from needs --language (the new language of the fit)")
        try:
            res = json.loads(Path(churn_from).read_text())
            fitted = res["stages"][language]["power"]["fitted_churn"]["model"]
        except (OSError, json.JSONDecodeError) as e:
            raise BabelError(f"cannot read {churn_from}: {e}") from None
        except (KeyError, TypeError):
            raise BabelError(f"{churn_from} has no fitted churn for {language!r} (an experiment "
                             "with per-item knowledge outcomes)") from None
        model, name = ChurnModel(**fitted), f"fitted ({churn_from}, {language})"
    elif churn in SCENARIOS:
        model, name = SCENARIOS[churn], churn
    else:
        raise BabelError(f"--churn must be one of {', '.join(SCENARIOS)} (or use --churn-from)")
    picked = tuple(c.strip() for c in curves.split(",") if c.strip())
    if not picked or any(c not in ("effect", "monotone", "flat") for c in picked):
        raise BabelError(f"--curves takes effect, monotone, flat (got {curves!r})")
    if checkpoints < 6 or items < 2 or not 2 <= clusters <= items or seeds < 1 or sims < 1:
        raise BabelError("need >= 6 checkpoints, >= 2 items, 2 <= clusters <= items, "
                         ">= 1 seed and >= 1 simulation")
    design = ItemDesign(schedule("even", checkpoints), items, clusters, seeds)
    r = item_power(design, model, Effect(peak_at, drop, base, start, transition), sims,
                   ItemTestOptions(alpha=alpha, n_bootstrap=n_bootstrap), seed, picked)
    for c in picked:
        cells = ", ".join(f"{k} {v['rate']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                          for k, v in r[c].items())
        typer.echo(f"{name}: {c}: {cells}")
    if out is not None:
        atomic_write_json(out, {"world": name, "model": dataclasses.asdict(model), **r,
                                "provenance": provenance(config={"sims": sims, "curves": picked},
                                                         seed=seed)})
        typer.echo(str(out))
