"""CLI: ``babeltower corpus fetch|build|pack|stats`` and ``babeltower tokenizer train``.

Thin: every command parses options into the step's config and calls one library
function (``babeltower.corpus``) that a notebook can call the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from babeltower.options import output_dir

app = typer.Typer(help="Build multilingual code corpora.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train the byte-level BPE tokenizer.", no_args_is_help=True)


def _load_yaml(path: Optional[Path], section: str | None = None) -> dict:
    """A config section from YAML (the whole file, or its matching top-level key)."""
    if path is None:
        return {}
    from babeltower.io import read_yaml_mapping

    data = read_yaml_mapping(path, "config")
    # a whole experiment-style file may keep the section under its own key
    return dict(data.get(section, data)) if section else data


def _validate(model, data: dict, where: str):
    from pydantic import ValidationError

    from babeltower.errors import validation_error

    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, where) from None


@app.command("fetch")
def fetch_command(
    out: Path = typer.Option(..., "--out", callback=output_dir,
                             help="Directory for the fetched code + sources.json."),
    languages: Optional[str] = typer.Option(
        None, "--languages", help="Comma-separated (default: python,go,java,php,cpp,rust,javascript)."),
    max_mb: str = typer.Option(
        "16", "--max-mb-per-language",
        help="Cap in MB: 'N' for every language, or e.g. '4,python=40'; 'none' = no cap."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="Download cache (default ~/.cache/babeltower/fetch)."),
    no_site_packages: bool = typer.Option(False, "--no-site-packages",
                                          help="Python: the standard library only."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Gather real code from the CPython stdlib, Debian packages and npm (nothing installed)."""
    from babeltower.corpus.fetch import fetch_corpus

    caps = None if max_mb.strip().lower() == "none" else max_mb
    path = fetch_corpus(out, languages, caps, cache_dir=cache_dir,
                        include_site_packages=not no_site_packages, seed=seed,
                        overwrite=overwrite)
    typer.echo(str(path))


@app.command("build")
def build_command(
    source: List[str] = typer.Option(..., "--source",
                                     help="Directory, zip/tar archive, JSONL/Parquet rows, or hf:ORG/NAME."),
    out: Path = typer.Option(..., "--out", callback=output_dir),
    languages: Optional[str] = typer.Option(None, "--languages", help="Comma-separated; default all."),
    executor: Optional[str] = typer.Option(
        None, "--executor", help="datatrove executor: local (default), slurm or ray "
                                 "(their settings: an 'engine:' section of --config)."),
    tasks: Optional[int] = typer.Option(None, "--tasks",
                                        help="Tasks (ranks); default one per core (local)."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Local: tasks run at once (default: all cores)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", help="BuildConfig YAML."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Detect, filter, deduplicate (exact + MinHash LSH) and split code into a corpus dir.

    Interrupted, it leaves no corpus, only its work dir next to it: run the same command
    again and it resumes.
    """
    from babeltower.corpus.build import build_corpus
    from babeltower.corpus.config import BuildConfig
    from babeltower.corpus.engine import work_dir_of

    data = _load_yaml(config, "build")
    engine = _engine_options(config, data, executor, tasks, workers)
    if languages is not None:
        data["languages"] = languages
    if seed is not None:
        data["seed"] = seed
    cfg = _validate(BuildConfig, data, str(config or "build options"))
    path = build_corpus(source, out, cfg, engine, overwrite=overwrite)
    if engine.executor == "slurm":
        typer.echo(f"submitted; the corpus appears at {path} when the last job ends "
                   f"(task logs: {work_dir_of(path, engine) / 'logs'})", err=True)
    typer.echo(str(path))


def _engine_options(config: Optional[Path], data: dict, executor, tasks, workers):
    """The EngineConfig of a build or pack: the 'engine:' section of --config (inside the
    step's section or at the top level), then the command-line options."""
    engine_data = dict(data.pop("engine", None) or _load_yaml(config).get("engine") or {}) \
        if config else {}
    for key, value in (("executor", executor), ("tasks", tasks), ("workers", workers)):
        if value is not None:
            engine_data[key] = value
    from babeltower.corpus.config import EngineConfig

    return _validate(EngineConfig, engine_data, str(config or "engine options"))


@app.command("pack")
def pack_command(
    corpus: Path = typer.Option(..., "--corpus", help="A built corpus dir."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="A trained tokenizer dir."),
    out: Path = typer.Option(..., "--out", callback=output_dir),
    executor: Optional[str] = typer.Option(
        None, "--executor", help="datatrove executor: local (default), slurm or ray "
                                 "(their settings: an 'engine:' section of --config)."),
    tasks: Optional[int] = typer.Option(None, "--tasks",
                                        help="Tokenize tasks (ranks); default one per core (local)."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Local: tasks run at once (default: all cores)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PackConfig YAML."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Tokenize every language/split into token shards (TokenShards reads them).

    Interrupted, it leaves no data dir, only its work dir next to it: run the same
    command again and it resumes.
    """
    from babeltower.corpus.config import PackConfig
    from babeltower.corpus.engine import work_dir_of
    from babeltower.corpus.pack import pack_corpus
    from babeltower.errors import BabelError

    if not corpus.exists():
        raise BabelError(f"corpus not found: {corpus}")
    if not tokenizer.exists():
        raise BabelError(f"tokenizer not found: {tokenizer}")
    data = _load_yaml(config, "pack")
    engine = _engine_options(config, data, executor, tasks, workers)
    cfg = _validate(PackConfig, data, str(config or "pack options"))
    path = pack_corpus(corpus, tokenizer, out, cfg, overwrite=overwrite, engine=engine)
    if engine.executor == "slurm":
        typer.echo(f"submitted; the data dir appears at {path} when the last job ends "
                   f"(task logs: {work_dir_of(path, engine, 'datatrove-pack') / 'logs'})",
                   err=True)
    typer.echo(str(path))


@app.command("stats")
def stats_command(
    path: Path = typer.Argument(..., help="A built corpus dir or a packed data dir."),
) -> None:
    """A table per language: files, bytes, tokens and documents per split, drops by reason."""
    from babeltower.corpus.stats import print_stats

    print_stats(path)


@tokenizer_app.command("train")
def tokenizer_train_command(
    corpus: Path = typer.Option(..., "--corpus", help="A built corpus dir."),
    out: Path = typer.Option(..., "--out", callback=output_dir),
    vocab_size: int = typer.Option(4096, "--vocab-size"),
    sample_mb: float = typer.Option(8.0, "--sample-mb-per-language"),
    languages: Optional[str] = typer.Option(None, "--languages"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Byte-level BPE on a language-balanced sample; AutoTokenizer.from_pretrained(out) works."""
    from babeltower.corpus.config import TokenizerConfig
    from babeltower.corpus.tokenizer import train_tokenizer

    cfg = _validate(TokenizerConfig, {"vocab_size": vocab_size, "sample_mb_per_language": sample_mb,
                                      "languages": languages, "seed": seed}, "tokenizer options")
    typer.echo(str(train_tokenizer(corpus, out, cfg, overwrite=overwrite)))


@app.command("knowledge")
def knowledge_command(
    out: Path = typer.Option(..., "--out", callback=output_dir, help="Output dir: facts.json (queries) + source/ (documents)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML: a KnowledgeConfig, or a file with a 'knowledge:' section."),
    primary: Optional[str] = typer.Option(None, "--primary"),
    languages: Optional[str] = typer.Option(None, "--languages", help="New languages, comma-separated."),
    facts_per_class: Optional[int] = typer.Option(None, "--facts-per-class"),
    exposures: Optional[int] = typer.Option(None, "--exposures"),
    n_answers: Optional[int] = typer.Option(None, "--n-answers"),
    facts_per_document: Optional[int] = typer.Option(None, "--facts-per-document"),
    keys: Optional[str] = typer.Option(None, "--keys", help="Key variants, comma-separated: same,mapped."),
    bridge_keys: Optional[str] = typer.Option(None, "--bridge-keys", help="fresh or fixed: the key of a shared mapped fact's training renderings."),
    query_forms: Optional[str] = typer.Option(None, "--query-forms", help="Query forms, comma-separated (default: those below the mirror threshold)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Synthetic facts: injected documents (a corpus source) + held-out queries (docs/knowledge.md).

    Pass OUT/source to `corpus build --source` next to the real sources; evaluate with
    `babeltower eval knowledge RUN --facts OUT/facts.json`.
    """
    from babeltower.corpus.knowledge import load_knowledge_config, write_knowledge

    given = {"primary": primary, "languages": languages, "facts_per_class": facts_per_class,
             "exposures": exposures, "n_answers": n_answers,
             "facts_per_document": facts_per_document, "keys": keys, "bridge_keys": bridge_keys,
             "query_forms": query_forms, "seed": seed}
    cfg = load_knowledge_config({**_load_yaml(config, "knowledge"),
                                 **{k: v for k, v in given.items() if v is not None}})
    typer.echo(str(write_knowledge(cfg, out, overwrite=overwrite)))
