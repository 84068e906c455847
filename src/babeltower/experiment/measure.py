"""Measure every checkpoint of a run: loss / bpb per language, cloze, logit lens, LAPE.

Each checkpoint is loaded once and every measure is taken on it (the library's
series runners ``evaluate_loss``, ``run_lens``, ``run_neurons`` would load it once per
measure). The rows are plain dicts, one per checkpoint, so they go into results.json
as they are:

    {"checkpoint", "step", "tokens",
     "loss": {lang: nats/token}, "bpb": {lang: bits/byte},
     "cloze_new": {lang: acc}, "cloze_primary": {lang: acc},      # final layer = model's logits
     "lens_new_share_last": {lang}, "lens_new_share_mean": {lang}, # share preferring new id
     "lens_layers": {lang: {"new_pref_share": [...], "logit_diff": [...], "control": [...],
                            "top1_new": [...], "top1_primary": [...]}},
     "specific_count": {lang: |S_lang|}, "transfer_count": {lang: |T|},
     "transfer_ratio": {lang: |T|/|S_new|}, "transfer_by_layer": {lang: [...]}}

Cloze accuracy is read at the lens's last layer, which reproduces the model's own
logits (tested to 1e-4), so the experiment needs one forward for both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from babeltower.experiment.config import ExperimentConfig


def corpus_summary(shards) -> dict:
    out = {}
    for lang in shards.languages:
        info = shards.manifest["languages"][lang]
        row = {}
        for split in ("train", "validation", "test"):
            if split in info:
                row[f"{split} tokens"] = info[split].get("tokens")
                row[f"{split} docs"] = info[split].get("documents")
        row["train bytes"] = info.get("train", {}).get("bytes")
        out[lang] = row
    return out


def _lens_row(item_df) -> dict:
    """Per-layer working-language measures of one suite: on its new-language prompts,
    plus cloze accuracy on both sides (the primary side is the mirrored prompt set)."""
    new = item_df[item_df.side == "new"]
    prim = item_df[item_df.side == "primary"]
    by = new.groupby(["measure", "layer"])["value"].mean()

    def per_layer(m):
        return [float(v) for v in by.loc[m].sort_index().to_numpy()] if m in by.index.levels[0] else []

    layers = {"new_pref_share": per_layer("prefers_new"), "logit_diff": per_layer("logp_diff"),
              "control": per_layer("primary_vs_control"), "top1_new": per_layer("top1_new"),
              "top1_primary": per_layer("top1_primary"), "n_prompts": int(new.prompt.nunique())}
    last_layer = int(item_df.layer.max())
    cloze_p = prim[(prim.measure == "top1_target") & (prim.layer == last_layer)]["value"]
    cloze_n = new[(new.measure == "top1_target") & (new.layer == last_layer)]["value"]
    return {"layers": layers,
            "share_last": layers["new_pref_share"][-1] if layers["new_pref_share"] else None,
            "share_mean": float(np.mean(layers["new_pref_share"])) if layers["new_pref_share"] else None,
            "cloze_new": float(cloze_n.mean()) if len(cloze_n) else None,
            "cloze_primary": float(cloze_p.mean()) if len(cloze_p) else None}


_CHECKED: dict[tuple, object] = {}


def checked_suite(primary: str, lang: str, tokenizer):
    """The probe suite tokenized for ``tokenizer`` (cached: every run of an experiment
    shares the data's tokenizer, and alignment costs seconds per suite)."""
    from babeltower.probes.suite import load_suite

    key = (primary, lang, getattr(tokenizer, "name_or_path", None), len(tokenizer))
    if key not in _CHECKED:
        _CHECKED[key] = load_suite(primary, lang).check(tokenizer)
    return _CHECKED[key]


def measure_series(run: str | Path, data_dir: str | Path, cfg: ExperimentConfig, *,
                   pair_languages: list[str], loss_languages: list[str], split: str,
                   final_only: bool = False, probes: bool = True) -> list[dict]:
    """One row per checkpoint of ``run`` (all checkpoints, or the last one)."""
    import torch
    from tqdm.auto import tqdm

    from babeltower.checkpoints import list_checkpoints
    from babeltower.corpus.shards import TokenShards
    from babeltower.evaluate.loss import LossConfig, documents_from_shards, evaluate_model_loss
    from babeltower.probes.lens import lens_items
    refs = list_checkpoints(run)
    if final_only:
        refs = refs[-1:]
    shards = TokenShards(data_dir)
    ev = cfg.evaluation
    docs = documents_from_shards(shards, loss_languages, split, ev.val_tokens_per_language)
    # score in windows of the training context: longer windows would test length
    # extrapolation (RoPE) rather than the language, and cost quadratically more
    loss_cfg = LossConfig(split=split, max_tokens_per_language=ev.val_tokens_per_language,
                          context=cfg.model.seq_len, batch_size=16)
    checked = None
    lape = None
    rows = []
    for ref in tqdm(refs, desc=f"measure {Path(run).name}", unit="ckpt", leave=False):
        model, tok = ref.load()
        row = {"checkpoint": ref.name, "step": ref.step,
               "tokens": int(ref.manifest.get("tokens_seen") or 0),
               "tokens_by_language": ref.manifest.get("tokens_by_language")}
        with torch.no_grad():
            lrows = evaluate_model_loss(model, docs, shards.eos_id, loss_cfg, progress=False)
        row["loss"] = {r["language"]: r["loss"] for r in lrows}
        row["bpb"] = {r["language"]: r["bits_per_byte"] for r in lrows}
        if pair_languages:
            if checked is None:
                checked = {lang: checked_suite(cfg.primary, lang, tok) for lang in pair_languages}
            for key in ("cloze_new", "cloze_primary", "lens_new_share_last",
                        "lens_new_share_mean", "lens_layers"):
                row[key] = {}
            for lang in pair_languages:
                lr = _lens_row(lens_items(model, tok, checked[lang], batch_size=32))
                row["cloze_new"][lang] = lr["cloze_new"]
                row["cloze_primary"][lang] = lr["cloze_primary"]
                if probes and cfg.probes.lens:
                    row["lens_new_share_last"][lang] = lr["share_last"]
                    row["lens_new_share_mean"][lang] = lr["share_mean"]
                    row["lens_layers"][lang] = lr["layers"]
        if probes and cfg.probes.neurons and pair_languages:
            if lape is None:
                lape = _lape_inputs(shards, cfg)
            row.update(_neuron_row(model, lape, cfg, pair_languages))
        rows.append(row)
        del model
    return rows


def _lape_inputs(shards, cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """Fixed held-out token windows per language for LAPE (validation split)."""
    from babeltower.evaluate.loss import documents_from_shards
    from babeltower.probes.neurons import windows_from_ids

    n = cfg.probes.neuron_tokens_per_language
    docs = documents_from_shards(shards, cfg.languages, "validation", n)
    return {lang: windows_from_ids(np.concatenate([d.tokens for d in ds]), n, cfg.model.seq_len)
            for lang, ds in docs.items()}


def _neuron_row(model, windows: dict, cfg: ExperimentConfig, pair_languages: list[str]) -> dict:
    """LAPE on one model: |S_l| per language, T = S_primary ∩ S_new per new language."""
    from babeltower.probes.neurons import collect_stats, lape_select

    stats = collect_stats(model, windows, batch_size=16)
    langs = list(windows)
    sel = lape_select(stats.probabilities(langs), langs, top_rate=cfg.probes.top_rate)
    out = {"specific_count": {lang: int(len(sel.sets[lang])) for lang in langs},
           "transfer_count": {}, "transfer_ratio": {}, "transfer_by_layer": {}}
    for lang in pair_languages:
        t = sel.transfer(cfg.primary, lang)
        n_new = len(sel.sets[lang])
        out["transfer_count"][lang] = int(len(t))
        out["transfer_ratio"][lang] = float(len(t) / n_new) if n_new else None
        out["transfer_by_layer"][lang] = np.bincount(t[:, 0], minlength=sel.n_layers).tolist() \
            if len(t) else [0] * sel.n_layers
    return out
