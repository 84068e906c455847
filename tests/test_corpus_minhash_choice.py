"""Why the build does not use datatrove's ``MinhashDedup*`` stages, pinned on real calls
to them: their shingles are word 5-grams of ``simplify_text`` (lower-cased, punctuation
removed, digits set to 0), so two programs that differ in every operator, or two data
tables that differ in every number, are the same document to them (every one of their 14
buckets agrees: one cluster, one file dropped) while they share almost no code-token
5-gram - and our build keeps both (docs/corpus.md, "Why not datatrove's MinhashDedup").

Their default hash (``xxhash``) fails on str input with xxhash 4.x (datatrove 0.10.1), and
their word tokenizers need spaCy; so this calls their signature step with the ``sha1``
hash and a whitespace word splitter, which is what their tokenizer does to
punctuation-free text.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig, EngineConfig
from babeltower.corpus.scan import minhash_signature


def _programs(rng: random.Random) -> tuple[str, str]:
    lines = []
    for _ in range(80):
        a, b, c, d = (f"v{rng.randrange(1000)}" for _ in range(4))
        lines.append(f"    {a} = {b} + {c} * {d} - {a}")
    x = "def update(state):\n" + "\n".join(lines) + "\n    return state\n"
    # every + becomes -, every - becomes +, every * becomes /: another program
    y = x.translate(str.maketrans({"+": "-", "-": "+", "*": "/"}))
    return x, y


def _tables(rng: random.Random) -> tuple[str, str]:
    def table():
        rows = "".join(f"    ({rng.randrange(10**6)}, {rng.randrange(10**6)}),\n"
                       for _ in range(200))
        return f"DECODING_TABLE = (\n{rows})\n"
    return table(), table()


def _code_5gram_jaccard(x: str, y: str) -> float:
    """Jaccard of the two texts' code-token 5-gram sets, computed here, not by the build."""
    def grams(t):
        toks = re.findall(r"\w+|[^\w\s]", t)
        return {tuple(toks[i:i + 5]) for i in range(len(toks) - 4)}
    gx, gy = grams(x), grams(y)
    return len(gx & gy) / len(gx | gy)


@pytest.fixture(scope="module")
def their_signature(tmp_path_factory):
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceWords(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    step = MinhashDedupSignature(output_folder=str(tmp_path_factory.mktemp("sig")),
                                 config=MinhashConfig(hash_config=HashConfig(hash_fc="sha1")),
                                 language=WhitespaceWords())
    return lambda text: step.get_signature(step.get_shingles(text))


@pytest.mark.parametrize("pair", [_programs, _tables], ids=["operators", "numbers"])
def test_datatrove_minhash_merges_what_the_build_keeps_apart(their_signature, tmp_path, pair):
    x, y = pair(random.Random(0))
    assert x != y and _code_5gram_jaccard(x, y) < 0.2
    theirs = [a == b for a, b in zip(their_signature(x), their_signature(y))]
    assert len(theirs) == 14 and all(theirs)        # one cluster for datatrove's stages
    ours = (minhash_signature(x, 128, 5) == minhash_signature(y, 128, 5)).mean()
    assert ours < 0.2                                # far below the 0.7 threshold
    src = tmp_path / "src"
    for name, text in (("a", x), ("b", y)):
        (src / name).mkdir(parents=True)
        (src / name / "m.py").write_text(text)
    out = build_corpus([src], tmp_path / "out", BuildConfig(languages=["python"]),
                       EngineConfig(tasks=1), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["kept"] == 2 and m["dropped"] == {}
