"""CLI: babeltower probe ... (thin: every command calls a library function)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from babeltower.options import output_dir

app = typer.Typer(help="Probe checkpoint series: logit lens and LAPE neurons.", no_args_is_help=True)


@app.command("suites")
def suites_cmd(
    primary: Optional[str] = typer.Option(None, help="Primary language of one suite to show."),
    new: Optional[str] = typer.Option(None, help="New language of one suite to show."),
    suite_path: Optional[Path] = typer.Option(None, "--suite", help="User suite file or directory."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer dir (or model dir) to check the suite against."),
):
    """List probe suites, or show one suite and how it tokenizes."""
    from rich.console import Console
    from rich.table import Table

    from babeltower.probes.suite import available_suites, load_suite

    console = Console()
    if primary is None and new is None:
        for name in available_suites(suite_path):
            console.print(name)
        return
    from babeltower.errors import BabelError

    if primary is None or new is None:
        raise BabelError("give both --primary and --new (or neither to list suites)")
    suite = load_suite(primary, new, path=suite_path)
    table = Table(title=f"{suite.name}: {len(suite.pairs)} pairs, {suite.n_prompts()} prompts")
    for col in ("pair", "kind", suite.primary, suite.new, "prompts"):
        table.add_column(col)
    for p in suite.pairs:
        table.add_row(p.id, p.kind, p.primary.identifier, p.new.identifier,
                      f"{len(p.primary.prompts)}+{len(p.new.prompts)}")
    console.print(table)
    if tokenizer is not None:
        from babeltower.probes.lens import load_tokenizer

        checked = suite.check(load_tokenizer(tokenizer))
        for k, v in checked.summary().items():
            console.print(f"{k}: {v}")
        for d in checked.dropped:
            console.print(f"dropped {d.pair_id} [{d.side}] {d.prompt!r}: {d.reason}")


def _revisions(revisions: Optional[str]):
    return [r.strip() for r in revisions.split(",") if r.strip()] if revisions else None


def _steps(steps: Optional[str]) -> list[int] | None:
    from babeltower.errors import BabelError

    if not steps:
        return None
    try:
        return [int(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise BabelError(f"--steps expects comma-separated integers, got {steps!r}") from None


@app.command("lens")
def lens_cmd(
    source: str = typer.Argument(..., help="Run dir, HF model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    primary: str = typer.Option("python", help="Primary language."),
    new: str = typer.Option(..., help="New language (suite <primary>-<new>)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir, help="Output directory."),
    suite_path: Optional[Path] = typer.Option(None, "--suite", help="User suite file or directory."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated hub revisions."),
    batch_size: int = typer.Option(16, min=1),
    padding_side: str = typer.Option("left", help="left | right (results are the same)."),
    packing: str = typer.Option("auto", help="auto | tree | padded: a prefix tree runs every "
                                "shared prompt prefix once (results are the same)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated steps of the checkpoints, "
                                        "in order (for directories without step names)."),
    plot: bool = typer.Option(True, help="Write heatmaps (PNG) next to the tables."),
    overwrite: bool = typer.Option(False, help="Recompute and replace existing results."),
):
    """Logit lens: per checkpoint and layer, does the model prefer the primary or the new identifier?"""
    from rich.console import Console

    from babeltower.probes.lens import run_lens, summarize_lens
    from babeltower.probes.plots import lens_heatmap

    df = run_lens(source, suite_path, primary=primary, new=new, revisions=_revisions(revisions),
                  out=out, batch_size=batch_size, padding_side=padding_side, overwrite=overwrite,
                  steps=_steps(steps), packing=packing)
    if os.environ.get("RANK", "0") != "0":
        return   # under torchrun every rank returns the whole series; rank 0 reports it
    if plot:
        for measure in ("logp_diff", "prefers_new", "top1_new"):
            lens_heatmap(df, out / f"heatmap_{measure}.png", measure=measure)
        # the mirrored primary-language prompts: the baseline to read the new side against
        lens_heatmap(df, out / "heatmap_logp_diff_mirrored.png", measure="logp_diff",
                     side="primary")
    console = Console()
    _print_frame(console, summarize_lens(df).drop(columns=["attribution"]),
                 "per checkpoint, new-language prompts (attribution: first-token)")
    console.print(f"wrote {out}/lens.parquet, lens.csv, summary.csv, provenance.json")


def _print_frame(console, df, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in df.columns:
        table.add_column(str(c), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def _languages(languages: str) -> list[str]:
    return [l.strip() for l in languages.split(",") if l.strip()]


def _data_arg(data: Optional[Path], text: Optional[list[str]]):
    from babeltower.errors import BabelError

    if (data is None) == (not text):
        raise BabelError("give either --data DATA_DIR or one or more --text LANG=PATH")
    if data is not None:
        return data
    out: dict[str, list[str]] = {}
    for t in text or []:
        if "=" not in t:
            raise BabelError(f"--text expects LANG=PATH, got {t!r}")
        lang, path = t.split("=", 1)
        out.setdefault(lang.strip(), []).append(path)
    return out


@app.command("neurons")
def neurons_cmd(
    source: str = typer.Argument(..., help="Run dir, HF model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    languages: str = typer.Option(..., help="Comma-separated languages, e.g. python,php,go."),
    primary: str = typer.Option("python", help="Primary language (T = S_primary ∩ S_new)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir, help="Output directory."),
    data: Optional[Path] = typer.Option(None, help="Packed DATA dir (its validation split)."),
    text: Optional[list[str]] = typer.Option(None, help="Raw text LANG=PATH (file or dir); repeatable."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated hub revisions."),
    n_tokens: int = typer.Option(65536, min=1, help="Tokens per language."),
    seq_len: int = typer.Option(256, min=2),
    batch_size: int = typer.Option(8, min=1),
    split: str = typer.Option("validation"),
    point: str = typer.Option("act_fn", help="act_fn (Tang et al.: act(gate_proj(x)); GELU "
                              "output for GPT-2) | down_proj_input (act(gate) * up)."),
    top_rate: float = typer.Option(0.01, help="Share of neurons kept by lowest entropy (Tang: 0.01-0.05)."),
    filter_rate: float = typer.Option(0.95, help="Quantile of ALL probabilities a kept neuron must exceed (strict)."),
    activation_bar_ratio: float = typer.Option(0.95, help="Quantile of ALL probabilities a language's "
                                               "probability must exceed (strict) to own a kept neuron."),
    assign: str = typer.Option("tang", help="tang (Tang et al.'s rule) | filter (the filter "
                               "bar) | selected (ours: quantile of the kept neurons, >=)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated steps of the checkpoints, "
                                        "in order (for directories without step names)."),
    min_languages: int = typer.Option(4, help="Fewer languages than this: LAPE is reported as "
                                      "not applicable (Tang et al. use 7)."),
    max_median_entropy: float = typer.Option(0.95, help="Kept neurons' median normalised "
                                             "entropy above this (1 = equal on every "
                                             "language): not applicable."),
    overwrite: bool = typer.Option(False),
):
    """LAPE language-specific neurons per checkpoint, and transferring neurons T = S_primary ∩ S_new.

    Every checkpoint is also marked applicable or not (too few languages, or kept neurons
    that are not language-specific by their entropy), with the reason."""
    from rich.console import Console

    from babeltower.probes.neurons import LapeOptions, run_neurons, summarize_neurons
    from babeltower.series import SeriesOptions

    from pydantic import ValidationError

    from babeltower.errors import BabelError

    try:
        options = LapeOptions(languages=_languages(languages), primary=primary,
                              n_tokens=n_tokens, seq_len=seq_len, batch_size=batch_size,
                              split=split, point=point, top_rate=top_rate,
                              filter_rate=filter_rate,
                              activation_bar_ratio=activation_bar_ratio, assign=assign,
                              min_languages=min_languages,
                              max_median_entropy=max_median_entropy)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "options"
        raise BabelError(f"LAPE option {where}: {err['msg']}") from None
    df = run_neurons(source, _data_arg(data, text), options, revisions=_revisions(revisions),
                     out=out, series=SeriesOptions(overwrite=overwrite), steps=_steps(steps))
    if "text_files" in df.attrs:
        typer.echo(df.attrs["text_files"], err=True)
    console = Console()
    summ = summarize_neurons(df)
    _print_frame(console, summ.drop(columns=["not_applicable_reason"], errors="ignore"),
                 "LAPE per checkpoint (all layers)")
    if "applicable" in summ:
        for ck, reason in summ[~summ.applicable.astype(bool)].groupby(
                "checkpoint", sort=False).not_applicable_reason.first().items():
            console.print(f"LAPE not applicable at {ck}: {reason}", soft_wrap=True)
    console.print(f"wrote {out}/neurons.parquet, neurons.csv, summary.csv, checkpoints/*.neurons.json")


@app.command("ablate")
def ablate_cmd(
    source: str = typer.Argument(..., help="Run dir, HF model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    languages: str = typer.Option(..., help="Comma-separated languages to measure loss on."),
    neurons: Path = typer.Option(..., help="A .neurons.json file or a 'probe neurons' output dir."),
    set_name: str = typer.Option(..., "--set", help="LANG (S_lang) or transfer:LANG (T)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir, help="Output directory."),
    layer: Optional[int] = typer.Option(None, help="Only this layer's neurons."),
    data: Optional[Path] = typer.Option(None, help="Packed DATA dir (its validation split)."),
    text: Optional[list[str]] = typer.Option(None, help="Raw text LANG=PATH; repeatable."),
    revisions: Optional[str] = typer.Option(None),
    n_tokens: int = typer.Option(32768, min=1),
    seq_len: int = typer.Option(256, min=2),
    batch_size: int = typer.Option(8, min=1),
    split: str = typer.Option("validation", help="Packed split to measure loss on (e.g. test, "
                              "to keep it apart from the text the neurons were chosen on)."),
    control_seed: int = typer.Option(0, help="Seed of the random same-size control set."),
    overwrite: bool = typer.Option(False),
):
    """Zero a neuron set and report the per-language change in validation loss (with a random control)."""
    from rich.console import Console

    from babeltower.probes.ablate import run_ablate

    df = run_ablate(source, _data_arg(data, text), _languages(languages), neurons, set_name,
                    layer=layer, revisions=_revisions(revisions), out=out, n_tokens=n_tokens,
                    seq_len=seq_len, batch_size=batch_size, split=split,
                    control_seed=control_seed,
                    overwrite=overwrite)
    table = df.pivot_table(index=["checkpoint", "language"], columns="condition",
                           values="delta", sort=False).reset_index()
    base = df[df.condition == "base"].set_index(["checkpoint", "language"]).loss
    table.insert(2, "base_loss", [base[(c, l)] for c, l in zip(table.checkpoint, table.language)])
    table = table.drop(columns=["base"]).rename(columns={"ablated": "delta_ablated",
                                                         "random": "delta_random"})
    _print_frame(Console(), table, f"zeroing {set_name}: change in loss (nats/token)")
