"""CLI: babeltower eval ... (thin: every command calls a library function)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from babeltower.options import output_dir, output_file, seconds, solved_if as solved_if_rule

app = typer.Typer(help="Evaluate per language: loss/bpb, cloze, pass@k, knowledge transfer.",
                  no_args_is_help=True)


def _split(values: Optional[List[str]]) -> Optional[list[str]]:
    """Accept both ``--x a --x b`` and ``--x a,b``."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


_UNSAFE_HELP = ("Run programs even where a layer of isolation (user/network/mount/IPC/PID "
                "namespaces, read-only host, dropped capabilities, the seccomp filter) cannot "
                "be set up. Without it such a host refuses, naming what is missing.")


def _escaped(text: str) -> str:
    """Program output made safe for a terminal: control characters other than newline and
    tab (ESC of a clear-screen or an OSC 52 clipboard write, BEL, backspace, carriage
    return, C1 controls) are shown as escapes instead of acting on the terminal."""
    return "".join(c if c in "\n\t" or (" " <= c < "\x7f") or c > "\x9f"
                   else repr(c)[1:-1] for c in text)


def _print_table(df, title: str, columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    t = Table(title=title)
    for c in cols:
        t.add_column(str(c))
    for _, r in df.iterrows():
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in (r[c] for c in cols)])
    Console(stderr=False).print(t)


@app.command("loss")
def loss_cmd(
    source: str = typer.Argument(..., help="Run dir, model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    data: Optional[Path] = typer.Option(None, help="Packed data dir (babeltower corpus pack)."),
    text: Optional[List[str]] = typer.Option(None, help="Raw text PATH or LANG=PATH (file or dir; LANG takes C/C++ headers with .h or no extension), scored with the model's own tokenizer; repeatable."),
    languages: Optional[List[str]] = typer.Option(None, "--languages", "-l", help="Languages (default: all in the data)."),
    split: str = typer.Option("validation", help="validation or test."),
    max_tokens: int = typer.Option(50_000, min=1, help="Token budget per language (whole documents, in order)."),
    max_docs: Optional[int] = typer.Option(None, min=1, help="At most this many documents per language."),
    context: Optional[int] = typer.Option(None, min=2, help="Window length (default: model max positions, capped at 1024)."),
    stride: Optional[int] = typer.Option(None, min=1, help="Window step (default: = context, non-overlapping)."),
    batch_size: int = typer.Option(8, min=1),
    revisions: Optional[List[str]] = typer.Option(None, help="Hub revisions of a hub:ORG/NAME source (repeat or comma-separate)."),
    out: Path = typer.Option(..., callback=output_file, help="Result JSON (rows + provenance)."),
):
    """Held-out loss (nats/token) and bits-per-byte per language, for every checkpoint."""
    from babeltower.evaluate.loss import LossConfig, evaluate_loss

    cfg = LossConfig(split=split, max_tokens_per_language=max_tokens, max_docs=max_docs,
                     context=context, stride=stride, batch_size=batch_size)
    df = evaluate_loss(source, data=data, languages=_split(languages), text=text or None,
                       config=cfg, out=out, revisions=_split(revisions))
    if "text_files" in df.attrs:
        typer.echo(df.attrs["text_files"], err=True)
    _print_table(df, f"held-out loss ({split}) -> {out}",
                 ["checkpoint", "step", "language", "loss", "bits_per_byte", "bpb_lo95",
                  "bpb_hi95", "tokens", "bytes", "documents"])


@app.command("cloze")
def cloze_cmd(
    source: str = typer.Argument(..., help="Run dir, model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    suite: List[str] = typer.Option(["python-php"], help="Probe suites as primary-new (repeat or comma-separate)."),
    batch_size: int = typer.Option(16, min=1),
    out: Path = typer.Option(..., callback=output_file, help="Result JSON (rows + provenance)."),
):
    """Cloze accuracy per language pair at the final layer (first-token attribution)."""
    from babeltower.evaluate.cloze import evaluate_cloze_series

    df = evaluate_cloze_series(source, _split(suite), out=out, batch_size=batch_size)
    _print_table(df[df.kind == "all"], f"cloze accuracy (first-token attribution) -> {out}",
                 ["checkpoint", "suite", "side", "n", "top1_acc", "exact_acc",
                  "beats_counterpart", "mean_logprob"])


@app.command("pass-at-k")
def passk_cmd(
    source: Optional[str] = typer.Argument(None, help="Checkpoint source (not needed with --references)."),
    problems: str = typer.Option("humaneval", help="A JSONL file, builtin:<lang>, or humaneval."),
    n: int = typer.Option(1, help="Samples per problem."),
    k: List[int] = typer.Option([1], help="k values (repeat), each <= n."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(0.95),
    max_new_tokens: int = typer.Option(256, min=1),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=1, help="Parallel sandboxed executions."),
    timeout: float = typer.Option(10.0, callback=seconds, help="Seconds per program run."),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, min=1, help="First N problems only."),
    references: bool = typer.Option(False, help="Run the canonical solutions instead of generating."),
    out: Path = typer.Option(..., callback=output_dir, help="Output dir (per checkpoint: samples.jsonl, summary.json)."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=_UNSAFE_HELP),
):
    """Functional correctness (pass@k) with sandboxed execution; resumable."""
    from babeltower.evaluate.passk import pass_at_k, passk_config

    cfg = passk_config(problems=problems, n=n, k=k, temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, workers=workers,
                      timeout=timeout, seed=seed, limit=limit, references=references,
                      unsafe=unsafe_no_sandbox)
    top = pass_at_k(source, problems, out=out, config=cfg)
    import pandas as pd

    df = pd.DataFrame(top["checkpoints"])
    _print_table(df.drop(columns=["isolation"], errors="ignore"),
                 f"pass@k on {problems} -> {out}")
    for row in top["checkpoints"]:  # what the programs really ran under
        typer.echo(f"{row['checkpoint']}: {row.get('isolation')}")


@app.command("transfer")
def transfer_cmd(
    primary_only: Path = typer.Option(..., help="pass@k results of the primary-only model on primary-language problems."),
    new_only: Path = typer.Option(..., help="pass@k results of the new-language-only model on new-language problems."),
    series: Optional[Path] = typer.Option(None, help="pass@k output dir of a continual run (new-language problems)."),
    checkpoint: Optional[List[Path]] = typer.Option(None, help="Or individual pass@k result dirs/files (repeat)."),
    solved_if: str = typer.Option("any", callback=solved_if_rule, help="'any' sample passes, or a pass fraction like 0.5."),
    out: Path = typer.Option(..., callback=output_file, help="Result JSON (rows + provenance)."),
):
    """Knowledge-transfer share per checkpoint (the paper's primary-specific subset)."""
    import json

    from babeltower.errors import BabelError
    from babeltower.evaluate.transfer import knowledge_transfer, load_results, load_series
    from babeltower.io import atomic_write_json, provenance

    rule = solved_if if solved_if == "any" else float(solved_if)
    prim = load_results(primary_only, rule)
    new = load_results(new_only, rule)
    if series is not None:
        items = load_series(series, rule)
    elif checkpoint:
        items = [(str(c), None, load_results(c, rule)) for c in checkpoint]
    else:
        raise BabelError("give --series DIR or at least one --checkpoint")
    df = knowledge_transfer(prim, new, items)
    atomic_write_json(out, {"metric": "knowledge-transfer share",
                            "rows": json.loads(df.to_json(orient="records")),
                            "provenance": provenance(config={"solved_if": solved_if},
                                                     primary_only=str(primary_only),
                                                     new_only=str(new_only),
                                                     series=str(series) if series else None)})
    _print_table(df, f"knowledge-transfer share -> {out}")


@app.command("run")
def run_cmd(
    file: Path = typer.Argument(..., help="A complete program to run in the sandbox."),
    language: Optional[str] = typer.Option(None, help="Language (default: from the file name)."),
    timeout: float = typer.Option(10.0, callback=seconds, help="Seconds for the run."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=_UNSAFE_HELP),
):
    """Run one program in the sandbox and print its status (exit 0 = pass, 1 = it ran and
    did not pass, 2 = bad input)."""
    from babeltower.errors import BabelError
    from babeltower.sandbox.execute import run_program
    from babeltower.sandbox.run import isolation_line
    from babeltower.io import read_text_file
    from babeltower.languages import canonical, detect_language

    source = read_text_file(file, "program")     # missing / directory / binary / non-UTF-8
    if not source.strip():
        raise BabelError(f"program {file} is empty")
    lang = canonical(language) if language else detect_language(str(file))
    if lang is None:
        raise BabelError(f"cannot tell the language of {file} (pass --language)")
    r = run_program(lang, source, timeout=timeout, unsafe=unsafe_no_sandbox)
    typer.echo(f"status: {r.status}  exit: {r.exit_code}  signal: {r.signal}  "
               f"time: {r.wall_time:.3f}s  compile: {r.compile_time}")
    typer.echo(isolation_line(r.isolation))
    # the program's output, escaped and each line marked as its own: it cannot clear the
    # screen, write to the clipboard or print a status line of ours
    for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
        if text:
            typer.echo(f"--- {name}\n" + "\n".join(
                "| " + line for line in _escaped(text.rstrip()).split("\n")))
    if r.status != "pass":
        typer.echo(f"babeltower: the program ran and did not pass (status {r.status})", err=True)
        raise typer.Exit(1)


@app.command("toolchains")
def toolchains_cmd():
    """Which languages can be executed here (missing ones: scripts/install-toolchains.sh)."""
    from babeltower.sandbox.execute import SUPPORTED, toolchain_status

    for lang in SUPPORTED:
        st = toolchain_status(lang)
        ok = all(v is not None for v in st.values())
        typer.echo(f"{lang:11s} {'ok' if ok else 'MISSING'}  " +
                   "  ".join(f"{k}={v or '-'}" for k, v in st.items()))


@app.command("knowledge")
def knowledge_cmd(
    source: str = typer.Argument(..., help="Run dir, model dir or dir of model dirs (every checkpoint)."),
    facts: Path = typer.Option(..., "--facts", help="facts.json of `babeltower corpus knowledge` (or its dir)."),
    out: Path = typer.Option(..., callback=output_file, help="Result JSON: items, curves, transfer shares + provenance."),
    split: Optional[str] = typer.Option(None, help="Query split: validation or test (default: both)."),
    batch_size: int = typer.Option(32, min=1),
    eos: bool = typer.Option(True, "--eos/--no-eos", help="EOS before each query, as before every training document."),
):
    """Knowledge accuracy per class x key x query language per checkpoint, nulls, per-fact
    agreement and the transfer share (docs/knowledge.md)."""
    from babeltower.evaluate.knowledge import evaluate_knowledge_series

    res = evaluate_knowledge_series(source, facts, out=out, batch_size=batch_size, split=split,
                                    eos=eos)
    _print_table(res["curves"], f"knowledge accuracy (chance = 1/answers) -> {out}",
                 ["checkpoint", "class", "target", "language", "key", "k", "n", "accuracy",
                  "lo95", "hi95"])
    _print_table(res["shares"], "knowledge-transfer share (primary-only among solved)",
                 ["checkpoint", "language", "key", "solved", "solved_primary_only", "share",
                  "share_lo95", "share_hi95", "share_at_chance"])
