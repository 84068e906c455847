"""Small real tokenizers built in-process, shared by the tests of several concerns."""


def char_tokenizer():
    """One token per printable ASCII character (+ newline); id 0 is EOS/UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<eos>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def byte_level_bpe(texts, vocab_size: int):
    """A GPT-2 style ByteLevel BPE ``tokenizers.Tokenizer`` trained on ``texts``, with
    ``<|endoftext|>`` as its one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def organic_python_php(root, n: int, seed: int):
    """``n`` small Python and PHP files of one package under ``root`` (real-looking code
    for a corpus that also holds injected fact documents); returns ``root``."""
    import random
    from pathlib import Path

    root = Path(root)
    rng = random.Random(seed)
    words = "alpha beta gamma delta parse render token buffer stream value".split()
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b = rng.sample(words, 2)
        (root / f"pkg/m{i}.py").write_text(
            f"def {a}_{i}({b}):\n    return {b} * {rng.randrange(1000)}\n\n"
            f"class {b.title()}{i}:\n    {a} = '{rng.choice(words)}'\n")
        (root / f"pkg/m{i}.php").write_text(
            f"<?php\nfunction {a}_{i}(${b}) {{\n    return ${b} . '{rng.choice(words)}{i}';\n}}\n")
    return root
