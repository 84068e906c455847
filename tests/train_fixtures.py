"""Tiny packed corpora for the training tests: a real byte-level BPE tokenizer (HF
``tokenizers``) and real ``ShardWriter`` shards, built in a second or two."""

from __future__ import annotations

import json
import random
from pathlib import Path

from babeltower.corpus.shards import ShardWriter, dtype_for_vocab, write_manifest

_PY = ["def {f}({a}):\n    return len({a}) + {n}\n",
       "for {a} in range({n}):\n    print({a})\n",
       "class {F}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n",
       "if {a} is None:\n    raise ValueError('{f}')\n"]
_PHP = ["function {f}(${a}) {{\n    return strlen(${a}) + {n};\n}}\n",
        "for (${a} = 0; ${a} < {n}; ${a}++) {{\n    echo ${a};\n}}\n",
        "class {F} {{\n    public function __construct(${a}) {{ $this->{a} = ${a}; }}\n}}\n",
        "if (${a} === null) {{\n    throw new Exception('{f}');\n}}\n"]
_GO = ["func {f}({a} string) int {{\n    return len({a}) + {n}\n}}\n",
       "for {a} := 0; {a} < {n}; {a}++ {{\n    fmt.Println({a})\n}}\n"]
TEMPLATES = {"python": _PY, "php": _PHP, "go": _GO}


def _docs(lang: str, n_docs: int, seed: int) -> list[str]:
    rng = random.Random(f"{lang}-{seed}")
    names = ["alpha", "beta", "gamma", "delta", "items", "value", "count", "node", "key"]
    out = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(2, 5)):
            t = rng.choice(TEMPLATES[lang])
            f = rng.choice(names) + "_" + rng.choice(names)
            parts.append(t.format(f=f, F=f.title().replace("_", ""), a=rng.choice(names),
                                  n=rng.randint(0, 99)))
        out.append("".join(parts))
    return out


def make_packed(root: Path, languages=("python", "php"), docs_per_language: int = 120,
                vocab_size: int = 320, seed: int = 0) -> Path:
    """A packed data dir (manifest, tokenizer/, <lang>/<split>.bin/.docs.npy)."""
    from transformers import PreTrainedTokenizerFast

    from tokenizer_fixtures import byte_level_bpe

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    texts = {lang: _docs(lang, docs_per_language, seed) for lang in languages}
    tok = byte_level_bpe([t for ts in texts.values() for t in ts], vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(root / "tokenizer")
    eos = tok.token_to_id("<|endoftext|>")
    vocab = tok.get_vocab_size()
    dtype = dtype_for_vocab(vocab)
    langs: dict = {}
    for lang, docs in texts.items():
        n_val = max(8, len(docs) // 6)
        splits = {"train": docs[n_val:], "validation": docs[:n_val]}
        langs[lang] = {}
        for split, ds in splits.items():
            w = ShardWriter(root / lang / split, dtype, eos)
            for d in ds:
                w.add(tok.encode(d).ids, len(d.encode()))
            langs[lang][split] = w.close()
    write_manifest(root, {"languages": langs, "eos_id": eos, "vocab_size": vocab,
                          "dtype": dtype.name, "tokenizer": "tokenizer"})
    return root


def tokens_of(root: Path) -> dict:
    mf = json.loads((Path(root) / "manifest.json").read_text())
    return {lang: s["train"]["tokens_with_eos"] for lang, s in mf["languages"].items()}
