"""``babeltower experiment CONFIG``: the paper's whole study as cached, resumable steps.

    data -> primary-only pre-training -> continual pre-training on each new language
    (checkpoint series) -> loss / bpb / cloze / logit lens / LAPE at every checkpoint ->
    stages -> Algorithm 1 (+ calibration of Eq. 1) -> baseline mixtures + RegMix search
    -> from-scratch training on every mixture, several seeds, at equal tokens (and
    natural vs optimised at equal epochs) -> comparison with intervals -> report.

Every step is recorded in WORKDIR/steps/<name>.json; running again skips finished
steps, and training steps resume from their last complete checkpoint.

Protocol choices at our scale ([ours], all in the config):
* The "original corpus" of the from-scratch comparison is the natural distribution of
  the train split scaled to one epoch of ``scratch.tokens``; Algorithm 1 down-samples it.
* Equal tokens: every mixture's *proportions* are trained for ``scratch.tokens`` tokens,
  drawn without repetition from the (larger) train split - mixture proportions at equal
  compute, as RegMix / UniMax compare. Equal epochs: one epoch of the natural corpus
  (``scratch.tokens``) against one epoch of the optimised corpus (fewer tokens).
* Scores of the comparison are on the held-out TEST split (curves use VALIDATION).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from babeltower.checkpoints import last_checkpoint
from babeltower.corpus.config import BuildConfig, SplitConfig, TokenizerConfig
from babeltower.corpus.fetch import fetch_corpus
from babeltower.corpus.knowledge import KnowledgeConfig, load_facts, load_knowledge_config
from babeltower.corpus.prepare import PreparedData, prepare_data
from babeltower.corpus.shards import TokenShards
from babeltower.corpus.stats import corpus_stats, render_stats
from babeltower.errors import BabelError
from babeltower.experiment import analysis, measure
from babeltower.experiment.config import ExperimentConfig, PhaseSettings
from babeltower.experiment.steps import StepCache
from babeltower.io import atomic_write_json, provenance, sha256_file, sha256_json
from babeltower.mixture.exposures import fact_exposures
from babeltower.mixture.regmix import fit_regression, predict_best, sample_dirichlet_mixtures
from babeltower.mixture.sampler import available_tokens
from babeltower.mixture.spec import largest_remainder
from babeltower.report.study import write_report
from babeltower.results import RESULTS_VERSION
from babeltower.train.checkpointing import latest_checkpoint
from babeltower.train.config import (CheckpointSchedule, EvalConfig, OptimizerConfig,
                                     ScheduleConfig, TrainConfig)
from babeltower.train.loop import train


# ---------------------------------------------------------------------------- helpers
def _tokens_per_step(batch_size: int, seq_len: int) -> int:
    return batch_size * seq_len


@dataclass(frozen=True)
class RunSpec:
    """How long and how fast one training run goes, and where its checkpoints fall."""
    tokens: int
    lr: float
    batch_size: int
    warmup_tokens: int = 0
    min_lr_ratio: float = 0.1
    checkpoints: list[int] | str = "log"      # steps, "log" or "even"
    n_checkpoints: int = 16

    @classmethod
    def of_phase(cls, phase: PhaseSettings, **changes) -> "RunSpec":
        spec = cls(tokens=phase.tokens, lr=phase.lr, batch_size=phase.batch_size,
                   warmup_tokens=phase.warmup_tokens, min_lr_ratio=phase.min_lr_ratio,
                   checkpoints=phase.checkpoints, n_checkpoints=phase.n_checkpoints)
        return replace(spec, **changes)


def checkpoint_schedule(spec: RunSpec, steps: int):
    """The CheckpointSchedule of a run: log-spaced early (Pythia-like), evenly spaced, or
    the listed steps; step 0 (the starting point) is always saved."""
    if spec.checkpoints == "log":
        every = max(1, steps // max(1, spec.n_checkpoints // 2))
        return CheckpointSchedule(log_spaced=True, log_until=max(1, every), every=every, initial=True)
    if spec.checkpoints == "even":
        n = min(spec.n_checkpoints, steps)
        at = sorted({round(i * steps / n) for i in range(1, n + 1)})
        return CheckpointSchedule(log_spaced=False, steps=at, initial=True)
    return CheckpointSchedule(log_spaced=False, steps=[s for s in spec.checkpoints if s <= steps],
                              initial=True)


def train_config(cfg: ExperimentConfig, data_dir: Path, name: str, mixture: dict, spec: RunSpec,
                 seed: int, init_from: str | None = None, eval_languages: list[str] | None = None,
                 eval_tokens: int = 0) -> TrainConfig:
    """The TrainConfig of one run of the experiment (the same engine as ``babeltower train``)."""
    per_step = _tokens_per_step(spec.batch_size, cfg.model.seq_len)
    steps = max(1, math.ceil(spec.tokens / per_step))
    return TrainConfig(
        model=cfg.model.preset, init_from=init_from, data=str(data_dir), mixture=mixture,
        tokens=spec.tokens, seq_len=cfg.model.seq_len, micro_batch_size=spec.batch_size,
        optimizer=OptimizerConfig(lr=spec.lr),
        schedule=ScheduleConfig(warmup_steps=math.ceil(spec.warmup_tokens / per_step),
                                min_lr=spec.lr * spec.min_lr_ratio),
        seed=seed, device=cfg.device, out_dir=str(cfg.workdir / "runs" / name),
        checkpoints=checkpoint_schedule(spec, steps),
        eval=EvalConfig(tokens_per_language=eval_tokens, languages=eval_languages),
        log_interval=max(1, steps // 20), progress=True)


def _train(steps: StepCache, name: str, tc: TrainConfig, what: str) -> str:
    """Train (or resume) one run as a cached step.

    A run directory left by a *different* config of this step (the experiment config
    changed since) is stale: it is removed and the run starts over, so that a changed
    setting re-runs what it touches instead of stopping the experiment.
    """
    def go() -> str:
        _remove_stale_run(Path(tc.out_dir), tc.sha256(), steps.console)
        return str(train(tc))

    return steps.run(f"train-{name}", tc.identity(), go, what)


def _remove_stale_run(run_dir: Path, config_sha: str, console) -> None:
    if not run_dir.exists():
        return
    last = latest_checkpoint(run_dir)
    if last is None:
        return
    try:
        saved = json.loads((last / "manifest.json").read_text()).get("config_sha256")
    except (OSError, json.JSONDecodeError):
        saved = None
    if saved != config_sha:
        console.print(f"[yellow]{run_dir.name}: made with another config; starting it over[/yellow]")
        shutil.rmtree(run_dir)


def check_feasible(cfg: ExperimentConfig, available: dict[str, int]) -> None:
    """Budgets that the corpus cannot meet fail here, before any training."""
    for lang in cfg.languages:
        if available.get(lang, 0) <= 0:
            raise BabelError(f"the corpus has no {lang} training tokens (languages present: "
                             f"{', '.join(sorted(k for k, v in available.items() if v > 0))})")
    if cfg.primary_phase.tokens > available[cfg.primary]:
        raise BabelError(f"primary_phase.tokens={cfg.primary_phase.tokens} exceeds the "
                         f"{available[cfg.primary]} {cfg.primary} training tokens available")
    for lang in cfg.new_languages:
        if cfg.continual.tokens > available[lang]:
            raise BabelError(f"continual.tokens={cfg.continual.tokens} exceeds the "
                             f"{available[lang]} {lang} training tokens available")
    total = sum(available[lang] for lang in cfg.languages)
    if cfg.scratch.tokens > total:
        raise BabelError(f"scratch.tokens={cfg.scratch.tokens} exceeds the {total} training "
                         f"tokens of {', '.join(cfg.languages)}")


def original_corpus(cfg: ExperimentConfig, available: dict[str, int]) -> dict[str, int]:
    """The corpus Algorithm 1 down-samples, one epoch of scratch.tokens: the configured
    shares (``scratch.original``, the paper's shape) or the train split's natural
    distribution; never more of a language than the train split holds."""
    avail = {lang: available[lang] for lang in cfg.languages}
    shares = cfg.scratch.original or avail
    total = sum(shares.values())
    targets = {k: shares[k] * cfg.scratch.tokens / total for k in avail}
    short = {k: v for k, v in targets.items() if math.floor(v + 1e-9) > avail[k]}
    if short:
        raise BabelError("the original corpus (scratch.original x scratch.tokens) needs more than "
                         "the train split holds: " + ", ".join(
                             f"{k} {int(v)} > {avail[k]} tokens" for k, v in sorted(short.items())))
    return largest_remainder(targets, cfg.scratch.tokens, avail)


# ---------------------------------------------------------------------------- pipeline
def run_experiment(cfg: ExperimentConfig, console: Console | None = None) -> Path:
    """Run (or resume) the whole study; returns the path of report.html."""
    # in logs and pipes, do not squeeze the tables to 80 columns
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    t_start = time.time()
    cfg = cfg.model_copy(update={"workdir": Path(cfg.workdir).resolve()})
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(cfg.workdir / "config.yaml")
    steps = StepCache(cfg.workdir, console, total=_planned_steps(cfg))
    results: dict[str, Any] = {"version": RESULTS_VERSION, "name": cfg.name,
                               "config": cfg.model_dump(mode="json")}

    data_dir, available, corpus0, mixtures = data_step(cfg, steps, results)
    primary_ckpt = primary_step(cfg, steps, data_dir, results)
    results["cpt"] = cpt_step(cfg, steps, data_dir, primary_ckpt)
    for arm in cpt_arms(cfg)[1:]:
        results[f"cpt_{arm}"] = cpt_step(cfg, steps, data_dir, primary_ckpt, arm=arm)
    facts = facts_of(cfg, data_dir)
    items_meta = measure.knowledge_item_meta(facts, "validation") if facts else None
    results["knowledge_items"] = items_meta
    results["knowledge_answers"] = facts["answers"] if facts else None
    if cfg.continual.replay_share > 0:
        results["replay"] = analysis.replay_contrast(cfg, results["cpt"], {
            arm: results[f"cpt_{arm}"] for arm in cpt_arms(cfg)[1:]}, items_meta)
    analysed = steps.run("stages-algorithm1",
                         {"cpt": {k: [s["checkpoints"] for s in v["seeds"]]
                                  for k, v in results["cpt"].items()},
                          "corpus0": corpus0, "version": STAGES_VERSION},
                         lambda: analysis.analyse_cpt(cfg, results["cpt"], corpus0, items_meta),
                         "stage detection, Algorithm 1, calibration of Eq. 1")
    results.update(analysed)
    if items_meta:
        results["knowledge_controls"] = {
            lang: analysis.knowledge_controls(cfg, run, lang, items_meta, facts["answers"])
            for lang, run in results["cpt"].items()}
    results["seed_curves"] = analysis.all_seed_curves(cfg, {
        arm: results["cpt" if arm == "none" else f"cpt_{arm}"] for arm in cpt_arms(cfg)}, items_meta)
    mixtures["optimized"] = analysis.optimized_mixture(results["algorithm1"], corpus0)
    if "regmix" in cfg.scratch.mixtures:
        mixtures["regmix"] = _regmix(cfg, steps, data_dir, corpus0)
    results["mixtures"] = {k: v for k, v in mixtures.items() if k in cfg.scratch.mixtures
                           or k in ("natural", "optimized")}
    cut = analysis.cuts_anything(results["algorithm1"])
    if cfg.scratch.run_when == "always" or cut:
        results["scratch_runs"] = scratch_step(cfg, steps, data_dir, mixtures)
        results["comparison"] = analysis.compare(cfg, results["scratch_runs"])
    else:
        results["scratch_runs"] = []
        results["comparison"] = {"skipped": (
            "Algorithm 1 cut nothing, so the optimised corpus is the original one: "
            "from-scratch runs would compare a corpus with itself (scratch.run_when: cut)")}

    results["timings_seconds"] = {**steps.timings, "total_this_invocation": time.time() - t_start}
    results["provenance"] = provenance(config=cfg, seed=cfg.seed, data_hashes={
        "data_manifest": TokenShards(data_dir).manifest.get("sha256") or _manifest_hash(data_dir)})
    atomic_write_json(cfg.workdir / "results.json", _jsonable(results))
    report = write_report(results, cfg.workdir)
    console.print(f"[bold green]report:[/bold green] {report}")
    console.print(f"[bold green]results:[/bold green] {cfg.workdir / 'results.json'}")
    return report


def _planned_steps(cfg: ExperimentConfig) -> int:
    s = cfg.scratch
    n_scratch = len(s.mixtures) * len(s.seeds) + (2 * len(s.seeds) if s.equal_epochs else 0)
    arms = len(cpt_arms(cfg)) * len(cfg.continual.seeds)
    return (3 + 2 * arms * len(cfg.new_languages) + 2
            + (cfg.regmix.proxies + 1 if "regmix" in s.mixtures else 0) + 2 * n_scratch)


def data_step(cfg: ExperimentConfig, steps: StepCache, results: dict):
    """Fetch + build + tokenize + pack (cached), then the budgets every later step needs:
    tokens available per language, the original corpus, the baseline mixtures (a budget
    the corpus cannot meet fails here, before any training)."""
    data_key = {"corpus": cfg.corpus.model_dump(mode="json"), "languages": cfg.corpus_languages}
    data_dir = Path(steps.run("data", data_key, lambda: str(prepare_corpus(cfg)),
                              "fetch code from packages, build, tokenize, pack"))
    shards = TokenShards(data_dir)
    steps.console.print(render_stats(corpus_stats(data_dir), title=f"corpus: {data_dir}"))
    available = available_tokens(shards)
    check_feasible(cfg, available)
    corpus0 = original_corpus(cfg, available)
    mixtures = analysis.baseline_mixtures(cfg, available, corpus0)
    results["corpus"] = measure.corpus_summary(shards)
    results["original_corpus"] = corpus0
    return data_dir, available, corpus0, mixtures


def primary_step(cfg: ExperimentConfig, steps: StepCache, data_dir: Path, results: dict) -> str:
    """Pre-train on the primary language only; returns its final checkpoint."""
    p = cfg.primary_phase
    tc = train_config(cfg, data_dir, "primary", {"name": f"{cfg.primary}-only",
                      "budgets": {cfg.primary: p.tokens}}, RunSpec.of_phase(p, checkpoints=[]),
                      cfg.seed, eval_languages=cfg.languages, eval_tokens=4096)
    run = _train(steps, "primary", tc, f"{cfg.primary}-only, {p.tokens:,} tokens")
    results["primary_run"] = run
    last = last_checkpoint(run)
    results["primary_exposures"] = run_exposures(
        cfg, data_dir, tc.mixture, cfg.seed, [{"tokens": int(last.manifest.get("tokens_seen") or 0)}])
    return last_checkpoint(run).path


REPLAY_ARMS = {"none": "", "replay": "-replay", "replay_nofacts": "-replay-nofacts"}


def cpt_arms(cfg: ExperimentConfig) -> list[str]:
    """The continual arms: no replay; replay; replay without the fact documents."""
    arms = ["none"]
    if cfg.continual.replay_share > 0:
        arms.append("replay")
        if cfg.continual.replay_without_facts:
            arms.append("replay_nofacts")
    return arms


def cpt_step(cfg: ExperimentConfig, steps: StepCache, data_dir: Path, primary_ckpt: str,
             arm: str = "none") -> dict[str, dict]:
    """Continual pre-training on each new language from the primary model, one run per
    data-order seed (``continual.seeds``), measured at every checkpoint. ``arm``: "none";
    "replay", where ``continual.replay_share`` of the tokens are primary-language replay
    (same steps and learning rate); "replay_nofacts", the same replay without the
    injected fact documents (retention without re-exposure).

    Returns {lang: {"run", "checkpoints", "budgets", "seed", "seeds": [{"seed", "run",
    "checkpoints"}, ...]}}: the first seed's run at the top (every probe), every seed's
    run (the first included) under "seeds"."""
    c = cfg.continual
    facts = facts_of(cfg, data_dir)
    out: dict[str, dict] = {}
    for lang in cfg.new_languages:
        replay = arm != "none"
        budgets = ({lang: round(c.tokens * (1 - c.replay_share)),
                    cfg.primary: round(c.tokens * c.replay_share)} if replay else {lang: c.tokens})
        seeds = []
        for i, seed in enumerate(c.seeds):
            first = i == 0
            # the first seed keeps the historical run names (cached runs stay valid)
            name = f"cpt-{lang}{REPLAY_ARMS[arm]}" + ("" if first else f"-s{seed}")
            mixture = {"name": name, "budgets": budgets}
            if arm == "replay_nofacts":
                mixture["exclude_knowledge"] = [cfg.primary]
            tc = train_config(cfg, data_dir, name, mixture, RunSpec.of_phase(c), seed,
                              init_from=primary_ckpt)
            what = (f"continual pre-training on {lang}"
                    + (f" + {c.replay_share:.0%} {cfg.primary} replay" if replay else "")
                    + (" without the fact documents" if arm == "replay_nofacts" else "")
                    + f", {c.tokens:,} tokens, seed {seed}")
            run = _train(steps, name, tc, what)
            full = first and not replay
            key = {"run": tc.identity(), **_measure_key(cfg), "arm": arm, "full": full,
                   "knowledge_scope": "all" if full else "new_language"}
            # the first no-replay run gets every measure; every other run is read through
            # its knowledge items (every checkpoint), the first seed of an arm also through
            # its loss at the ends (the replay contrast reads the primary's bpb there)
            rows = steps.run(f"measure-{name}", key,
                             lambda run=run, lang=lang, key=key, name=name, full=full, first=first:
                             measure.measure_series(
                                 run, data_dir, cfg, pair_languages=[lang] if full else [],
                                 loss_languages=[cfg.primary, lang] if first else [],
                                 split="validation",
                                 facts=facts, probes=full, lape_every=cfg.probes.every,
                                 loss_every=({cfg.primary: cfg.evaluation.primary_loss_every}
                                             if full else LOSS_AT_ENDS),
                                 state=_series_state(cfg, f"measure-{name}", key),
                                 knowledge_scope="all" if full else "new_language"),
                             ("loss, bpb, knowledge, cloze, logit lens and LAPE at every checkpoint"
                              if full else "knowledge items at every checkpoint, loss / bpb at the ends"))
            seeds.append({"seed": seed, "run": run, "checkpoints": rows,
                          "exposures": run_exposures(cfg, data_dir, mixture, seed, rows)})
        out[lang] = {"run": seeds[0]["run"], "checkpoints": seeds[0]["checkpoints"],
                     "budgets": budgets, "seed": c.seeds[0], "arm": arm, "seeds": seeds}
    return out


def run_exposures(cfg: ExperimentConfig, data_dir: Path, mixture: dict, seed: int,
                  rows: list[dict]) -> dict | None:
    """How often the run's own sampler showed each class of injected facts by its last
    checkpoint (``mixture.exposures``: a fact counts when one training window holds its
    whole rendering): per class and per language x class, with min / median / max."""
    if cfg.corpus.knowledge is None or not rows:
        return None
    sequences = int(rows[-1]["tokens"]) // cfg.model.seq_len
    got = fact_exposures(data_dir, mixture, cfg.model.seq_len, seed=seed, sequences=sequences)
    return {"sequences": sequences, "rule": got.get("rule"),
            "by_class": got["summary"]["by_class"],
            "by_language_class": got["summary"]["by_language_class"]}


def _scratch_plan(cfg: ExperimentConfig, mixtures: dict) -> list[tuple[str, int, str, int]]:
    """(mixture, seed, protocol, tokens) of every from-scratch run: every mixture at equal
    tokens, and natural vs optimised at one epoch of their own corpus (equal epochs)."""
    s = cfg.scratch
    plan = [(m, seed, "equal_tokens", s.tokens) for m in s.mixtures for seed in s.seeds]
    if s.equal_epochs:
        opt_tokens = int(sum(mixtures["optimized"]["corpus_tokens"].values()))
        plan += [(m, seed, "equal_epochs", tok) for seed in s.seeds
                 for m, tok in (("natural", s.tokens), ("optimized", opt_tokens))]
    return plan


def scratch_step(cfg: ExperimentConfig, steps: StepCache, data_dir: Path, mixtures: dict) -> list[dict]:
    """Every mixture x seed trained from scratch and scored on the TEST split."""
    s = cfg.scratch
    facts = facts_of(cfg, data_dir)
    plan = _scratch_plan(cfg, mixtures)
    unique = {(tuple(sorted(_round_shares(mixtures[m]["shares"]).items())), seed, tok)
              for m, seed, _, tok in plan}
    steps.total = steps.count + 2 * len(unique)   # identical mixtures share their runs
    runs: list[dict] = []
    for mixture, seed, protocol, tokens in plan:
        name = f"scratch-{protocol.replace('_', '-')}-{mixture}-s{seed}"
        budgets = _round_shares(mixtures[mixture]["shares"])
        # the same shares, seed and tokens train the same model (e.g. Algorithm 1 kept
        # every language, or one epoch of natural = the equal-tokens natural run): reuse it
        same = next((r for r in runs if r["budgets"] == budgets and r["seed"] == seed
                     and r["tokens"] == tokens), None)
        if same is not None:
            runs.append({**same, "mixture": mixture, "protocol": protocol, "same_run_as": same["name"]})
            continue
        spec = {"name": mixture, "budgets": budgets, "total_tokens": tokens}
        track = seed == s.seeds[0] and mixture in ("natural", "optimized")
        tc = train_config(cfg, data_dir, name, spec,
                          RunSpec(tokens=tokens, lr=s.lr, batch_size=s.batch_size,
                                  checkpoints="log" if track else [], n_checkpoints=8), seed)
        run = _train(steps, name, tc, f"{mixture} mixture, seed {seed}, {tokens:,} tokens ({protocol})")
        key = {"run": tc.identity(), **_measure_key(cfg), "track": track}
        rows = steps.run(f"measure-{name}", key,
                         lambda run=run, track=track, key=key: measure.measure_series(
                             run, data_dir, cfg, pair_languages=cfg.new_languages,
                             loss_languages=cfg.languages, split="test", final_only=not track,
                             # a tracked run's figure reads the lens at every checkpoint;
                             # loss and LAPE are read at its ends (the comparison: the end)
                             facts=facts, lape_every=LOSS_AT_ENDS, loss_every=LOSS_AT_ENDS,
                             state=_series_state(cfg, f"measure-{name}", key)),
                         "test loss / bpb / cloze" + (" + internal states per checkpoint" if track else ""))
        runs.append({"name": name, "mixture": mixture, "seed": seed, "protocol": protocol,
                     "tokens": tokens, "budgets": budgets, "run": run, "checkpoints": rows})
    return runs


def prepare_corpus(cfg: ExperimentConfig) -> Path:
    """Fetch (optional) + extra sources -> build -> tokenizer -> packed shards."""
    sources = list(cfg.corpus.sources)
    if cfg.corpus.fetch:
        sources.insert(0, str(fetch_corpus(cfg.workdir / "sources", languages=cfg.corpus_languages,
                                           max_mb_per_language=cfg.corpus.max_mb_per_language,
                                           seed=cfg.corpus.seed, overwrite=True)))
    if not sources:
        raise BabelError("corpus.fetch is false and corpus.sources is empty: no code to train on")
    c = cfg.corpus
    build = BuildConfig(languages=cfg.corpus_languages, seed=c.seed,
                        split=SplitConfig(validation=c.validation, test=c.test))
    # the tokenizer learns the trained languages only: LAPE's held-out-only languages
    # (probes.lape_languages) are read as text the model never trained on
    tok = TokenizerConfig(vocab_size=c.vocab_size, languages=cfg.languages, seed=c.seed)
    return prepare_data(sources, cfg.workdir / "data", languages=cfg.corpus_languages,
                        vocab_size=c.vocab_size, seed=c.seed, build=build, tokenizer=tok,
                        knowledge=knowledge_config(cfg))


def knowledge_config(cfg: ExperimentConfig) -> KnowledgeConfig | None:
    """The benchmark's config: the experiment's languages and its knowledge settings."""
    k = cfg.corpus.knowledge
    if k is None:
        return None
    settings = {key: v for key, v in k.model_dump().items()
                if not (key == "mirror_threshold" and v is None)}
    return load_knowledge_config({"primary": cfg.primary, "languages": cfg.new_languages,
                                  **settings})


def facts_of(cfg: ExperimentConfig, data_dir: Path) -> dict | None:
    """The injected facts and their held-out queries (written next to the data dir)."""
    if cfg.corpus.knowledge is None:
        return None
    return load_facts(PreparedData.of_data_dir(data_dir).facts_path)


# bump when the stage analysis changes what it computes from the same rows
STAGES_VERSION = 3   # 3: split-sample seed test; noise chosen with the curve

# an interval larger than any series: loss / bpb (or LAPE) at the first and last
# checkpoints only
LOSS_AT_ENDS = 1 << 30


def _series_state(cfg: ExperimentConfig, step: str, key: dict) -> Path:
    """Where an unfinished measurement keeps its finished checkpoints (named by the
    step's key, so a changed config never resumes from rows made with another)."""
    return cfg.workdir / "series-state" / f"{step}-{sha256_json(key)[:16]}"


def _measure_key(cfg: ExperimentConfig) -> dict:
    return {"evaluation": cfg.evaluation.model_dump(mode="json"),
            "probes": cfg.probes.model_dump(mode="json"), "primary": cfg.primary}


def _manifest_hash(data_dir: Path) -> str:
    return sha256_file(Path(data_dir) / "manifest.json")


def _regmix(cfg: ExperimentConfig, steps: StepCache, data_dir: Path, corpus0: dict[str, int]) -> dict:
    """RegMix-style search: proxy runs on Dirichlet mixtures -> regression -> predicted best."""
    langs = cfg.languages
    weights = sample_dirichlet_mixtures(langs, cfg.regmix.proxies, alpha=cfg.regmix.dirichlet_alpha,
                                        seed=cfg.seed)
    s = cfg.scratch
    proxies = []
    for i, w in enumerate(np.asarray(weights)):
        shares = {lang: float(x) for lang, x in zip(langs, w)}
        spec = {"name": f"regmix-proxy-{i}", "budgets": _round_shares(shares),
                "total_tokens": cfg.regmix.proxy_tokens}
        tc = train_config(cfg, data_dir, f"regmix-proxy-{i}", spec,
                          RunSpec(tokens=cfg.regmix.proxy_tokens, lr=s.lr, batch_size=s.batch_size,
                                  checkpoints=[]), cfg.seed)
        run = _train(steps, f"regmix-proxy-{i}", tc, f"RegMix proxy {i + 1}/{cfg.regmix.proxies}")
        rows = measure.measure_series(run, data_dir, cfg, pair_languages=[], loss_languages=langs,
                                      split="validation", final_only=True, probes=False)
        score = float(np.mean([rows[-1]["bpb"][lang] for lang in langs]))
        proxies.append({"shares": shares, "mean_bpb": score, "run": run})
    X = np.array([[p["shares"][lang] for lang in langs] for p in proxies])
    y = np.array([-p["mean_bpb"] for p in proxies])   # higher is better
    # quadratic features need more proxies than a CPU budget allows: linear below that
    kind = "quadratic" if len(proxies) > len(langs) * (len(langs) + 3) // 2 else "linear"
    model = fit_regression(X, y, languages=langs, kind=kind)
    shares = predict_best(model, langs, seed=cfg.seed)
    out = analysis.mixture_record("regmix", _round_shares(shares), corpus0,
                                 {"generator": "regmix", "proxies": proxies,
                                  "regression": _describe(model)})
    return out


def _round_shares(shares: dict[str, float]) -> dict[str, float]:
    """Fractions that sum to exactly 1 (MixtureSpec requires it)."""
    total = sum(shares.values())
    keys = sorted(shares)
    vals = [round(shares[k] / total, 6) for k in keys]
    vals[-1] = round(1.0 - sum(vals[:-1]), 6)
    return dict(zip(keys, vals))


def _describe(model) -> dict:
    return {"kind": model.kind, "ridge": model.ridge, "r2_in_sample": model.r2,
            "n_samples": model.n_samples, "languages": model.languages}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x
