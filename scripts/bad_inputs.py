"""Every babeltower command x every kind of bad input, through the CLI's own entry point.

    PYTHONPATH=src:tests python scripts/bad_inputs.py [--markdown docs/failures.md]

Runs each case in this process (``babeltower.cli.main``, the same error boundary as the
console script) and prints a markdown table: exit code and the first line of stderr.
A case fails the check when it exits 0, prints more than one line, or reaches the
boundary as an unexpected error (exit 1, "internal error"); the script exits 1 then.
A second table runs the hostile cases (``hostile_cases``: options out of range, FIFOs
and /dev/zero as inputs, outputs that cannot be written, duplicate problem names), each
of which must be exit 2 and one line; a case that does not answer within 120 s is a
hang (SIGALRM). ``--hostile-only`` runs just those (~20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ["missing", "directory", "binary", "non-UTF-8", "empty", "broken YAML",
          "unknown language", "wrong-typed option"]


def make_inputs(base: Path) -> dict[str, Path]:
    """One file (or non-file) per kind of bad input."""
    files = {"missing": base / "does-not-exist", "directory": base / "a-directory",
             "binary": base / "binary.bin", "non-UTF-8": base / "latin1.txt",
             "empty": base / "empty.yaml", "broken YAML": base / "broken.yaml"}
    files["directory"].mkdir()
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["non-UTF-8"].write_bytes("x = 'café'\nname: crème\n".encode("latin-1"))
    files["empty"].write_bytes(b"")
    files["broken YAML"].write_text("model: [nano\n  data: {unclosed: \n- - :\n")
    return files


def make_run(base: Path) -> Path:
    """A valid tiny checkpoint series, so language/option cases are not stopped earlier."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_probes_helpers import save_run

    return save_run(base, "llama", steps=(0,))


def cases(run: Path, out: Path) -> dict[str, dict[str, list[str] | None]]:
    """command -> {input kind -> argv with {X} for the bad path (None: not applicable)}."""
    X = "{X}"
    py = f"python={X}"
    nano = str(ROOT / "configs" / "train-nano.yaml")
    default = str(ROOT / "configs" / "default.yaml")
    o = str(out)
    oj = str(out.with_name(out.name + ".json"))   # for commands whose output is one file
    r = str(run)
    rows = {
        "train CONFIG": (["train", X], ["train", nano, "--set", "mixture.budgets={klingon: 1.0}"],
                         ["train", nano, "--set", "seq_len=abc"]),
        "experiment CONFIG": (["experiment", X, "--workdir", o],
                              ["experiment", default, "--set", "new_languages=[klingon]",
                               "--workdir", o],
                              ["experiment", default, "--set", "seed=abc", "--workdir", o]),
        "report WORKDIR": (["report", X], None, None),
        "mixture --data": (["mixture", "natural", "--data", X, "--out", oj],
                           ["mixture", "natural", "--available", "klingon=100", "--out", oj],
                           ["mixture", "natural", "--total-tokens", "abc", "--out", oj]),
        "optimize --runs": (["optimize", "--runs", X, "--primary", "python", "--out", oj],
                            ["optimize", "--runs", r, "--primary", "klingon", "--out", oj],
                            ["optimize", "--runs", r, "--primary", "python", "--beta", "abc",
                             "--out", oj]),
        "stages --runs": (["stages", "--runs", X], None,
                          ["stages", "--runs", r, "--k-noise", "abc"]),
        "corpus fetch": (None, ["corpus", "fetch", "--out", o, "--languages", "klingon"],
                         ["corpus", "fetch", "--out", o, "--seed", "abc"]),
        "corpus build --source": (["corpus", "build", "--source", X, "--out", o],
                                  ["corpus", "build", "--source", r, "--out", o,
                                   "--languages", "klingon"],
                                  ["corpus", "build", "--source", r, "--out", o,
                                   "--workers", "abc"]),
        "corpus build --config": (["corpus", "build", "--source", r, "--config", X, "--out", o],
                                  None, None),
        "corpus pack --corpus": (["corpus", "pack", "--corpus", X, "--tokenizer", X,
                                  "--out", o], None,
                                 ["corpus", "pack", "--corpus", r, "--tokenizer", r,
                                  "--out", o, "--workers", "abc"]),
        "corpus stats PATH": (["corpus", "stats", X], None, None),
        "tokenizer train --corpus": (["tokenizer", "train", "--corpus", X, "--out", o],
                                     ["tokenizer", "train", "--corpus", r, "--out", o,
                                      "--languages", "klingon"],
                                     ["tokenizer", "train", "--corpus", r, "--out", o,
                                      "--vocab-size", "abc"]),
        "probe suites --suite": (["probe", "suites", "--suite", X],
                                 ["probe", "suites", "--primary", "python", "--new", "klingon"],
                                 None),
        "probe lens SOURCE": (["probe", "lens", X, "--new", "php", "--out", o],
                              ["probe", "lens", r, "--new", "klingon", "--out", o],
                              ["probe", "lens", r, "--new", "php", "--out", o,
                               "--batch-size", "abc"]),
        "probe lens --suite": (["probe", "lens", r, "--new", "php", "--suite", X, "--out", o],
                               None, None),
        "probe neurons SOURCE": (["probe", "neurons", X, "--languages", "python,php",
                                  "--out", o],
                                 ["probe", "neurons", r, "--languages", "python,klingon",
                                  "--out", o],
                                 ["probe", "neurons", r, "--languages", "python,php",
                                  "--out", o, "--top-rate", "abc"]),
        "probe neurons --text": (["probe", "neurons", r, "--languages", "python,php",
                                  "--text", py, "--text", f"php={X}", "--out", o], None, None),
        "probe ablate --neurons": (["probe", "ablate", r, "--languages", "python,php",
                                    "--neurons", X, "--set", "python", "--out", o], None,
                                   None),
        "eval loss SOURCE": (["eval", "loss", X, "--out", oj],
                             ["eval", "loss", r, "--languages", "klingon", "--out", oj],
                             ["eval", "loss", r, "--max-tokens", "abc", "--out", oj]),
        "eval loss --text": (["eval", "loss", r, "--text", py, "--out", oj], None, None),
        "eval cloze SOURCE": (["eval", "cloze", X, "--out", oj], None,
                              ["eval", "cloze", r, "--batch-size", "abc", "--out", oj]),
        "eval pass-at-k --problems": (["eval", "pass-at-k", r, "--problems", X, "--out", o],
                                      None,
                                      ["eval", "pass-at-k", r, "--n", "0", "--out", o]),
        "eval transfer": (["eval", "transfer", "--primary-only", X, "--new-only", X,
                           "--out", oj], None, None),
        "eval run FILE": (["eval", "run", X, "--language", "python"],
                          ["eval", "run", X, "--language", "klingon"],
                          ["eval", "run", X, "--language", "python", "--timeout", "abc"]),
    }
    table = {}
    for name, (path_case, lang_case, type_case) in rows.items():
        row = {kind: path_case for kind in INPUTS[:6]}
        row["unknown language"] = lang_case
        row["wrong-typed option"] = type_case
        table[name] = row
    return table


def make_hostile(base: Path) -> dict[str, Path]:
    """Inputs that are not plain files or paths that cannot be written (issue 21)."""
    h = {"fifo": base / "a-fifo", "zero": Path("/dev/zero"), "file": base / "a-file.py",
         "tree": base / "tree-with-fifo", "dups": base / "dups.jsonl",
         "long": base / ("n" * 300), "proc": Path("/proc/babeltower-out")}
    os.mkfifo(h["fifo"])
    h["file"].write_text("def f(x):\n    return x + 1\n\nprint(f(1))\n")
    h["tree"].mkdir()
    os.mkfifo(h["tree"] / "pipe.py")
    row = {"language": "python", "prompt": "def f(x):\n", "tests": "assert f(1) == 2\n",
           "canonical_solution": "    return x + 1\n"}
    h["dups"].write_text("".join(json.dumps({**row, "name": "same"}) + "\n" for _ in range(2)))
    return h


def hostile_cases(run: Path, out: Path, h: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(what, argv): hostile options and non-file inputs, each refused in one line."""
    r, o, f = str(run), str(out), str(h["file"])
    nano = str(ROOT / "configs" / "train-nano.yaml")
    loss = ["eval", "loss", r, "--text", f"python={f}"]
    passk = ["eval", "pass-at-k", "--references", "--problems", "builtin:python", "--out", o]
    cases = [(f"eval loss {opt} {v}", [*loss, opt, v, "--out", o])
             for opt, v in [("--stride", "0"), ("--context", "0"), ("--context", "1"),
                            ("--batch-size", "0"), ("--max-tokens", "-1"),
                            ("--max-docs", "0")]]
    cases += [("eval cloze --batch-size 0", ["eval", "cloze", r, "--batch-size", "0",
                                             "--out", o]),
              ("eval knowledge --batch-size 0", ["eval", "knowledge", r, "--facts", f,
                                                 "--batch-size", "0", "--out", o]),
              ("eval transfer --solved-if abc", ["eval", "transfer", "--primary-only", f,
                                                 "--new-only", f, "--series", f,
                                                 "--solved-if", "abc", "--out", o]),
              ("eval transfer --solved-if 1.5", ["eval", "transfer", "--primary-only", f,
                                                 "--new-only", f, "--series", f,
                                                 "--solved-if", "1.5", "--out", o])]
    for v in ("inf", "nan", "-5", "0", "1e300"):
        cases.append((f"eval run --timeout {v}", ["eval", "run", f, "--timeout", v]))
        cases.append((f"eval pass-at-k --timeout {v}", [*passk, "--timeout", v]))
    cases += [("eval pass-at-k --workers 0", [*passk, "--workers", "0"]),
              ("eval pass-at-k: two problems, one name",
               ["eval", "pass-at-k", "--references", "--problems", str(h["dups"]),
                "--out", o])]
    bad_outs = {"FILE/sub": f"{f}/sub", "a 300-character name": str(h["long"]),
                "/proc/x": str(h["proc"]), "an existing directory": str(run)}
    for what, path in bad_outs.items():
        cases.append((f"eval loss --out {what}", [*loss, "--out", path]))
    for what in ("FILE/sub", "a 300-character name", "/proc/x"):
        cases += [(f"train -o {what}", ["train", nano, "-o", bad_outs[what]]),
                  (f"probe lens --out {what}", ["probe", "lens", r, "--new", "php",
                                                "--out", bad_outs[what]]),
                  (f"corpus build --out {what}", ["corpus", "build", "--source", r,
                                                  "--out", bad_outs[what]]),
                  (f"mixture --out {what}", ["mixture", "natural", "--available",
                                             "python=100", "--out", bad_outs[what]])]
    fifo, zero = str(h["fifo"]), str(h["zero"])
    for what, path in (("a FIFO", fifo), ("/dev/zero", zero)):
        cases += [(f"train {what}", ["train", path]),
                  (f"experiment {what}", ["experiment", path, "--workdir", o]),
                  (f"corpus build --config {what}", ["corpus", "build", "--source", r,
                                                     "--config", path, "--out", o]),
                  (f"probe lens --suite {what}", ["probe", "lens", r, "--new", "php",
                                                  "--suite", path, "--out", o]),
                  (f"eval run {what}", ["eval", "run", path, "--language", "python"]),
                  (f"eval pass-at-k --problems {what}",
                   ["eval", "pass-at-k", "--references", "--problems", path, "--out", o]),
                  (f"optimize --runs {what}", ["optimize", "--runs", path, "--primary",
                                               "python", "--out", o])]
    cases.append(("corpus build --source (a tree whose only file is a FIFO)",
                  ["corpus", "build", "--source", str(h["tree"]), "--out", o]))
    return cases


class Hang(BaseException):
    """A case ran past its time limit (raised by SIGALRM; not an Exception, so the CLI's
    boundary does not turn it into an internal error)."""


def run_case(argv: list[str], limit_s: int = 120) -> tuple[int, str]:
    import signal

    from babeltower.cli import main

    def hang(signum, frame):
        raise Hang()

    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(limit_s)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except Hang:
        return -1, f"HANG: no answer in {limit_s} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # progress bars (tqdm's "it/s]", "win/s]", ...) are not messages
    lines = [ln for ln in err.getvalue().splitlines()
             if ln.strip() and not re.search(r"\w/s\]", ln) and not ln.startswith("babeltower: note:")]
    return rc, "\n".join(lines)


def verdict(rc: int, err: str, name: str = "", kind: str = "") -> bool:
    one_line = len(err.splitlines()) == 1 and "Traceback" not in err
    if name.endswith("--text") and kind == "broken YAML" and rc == 0:
        # readable UTF-8 text that the user names as LANG=FILE is that language's text
        # (a YAML file is as good a text as any for LAPE or loss): a run, not bad input
        return "Traceback" not in err
    if name == "eval run FILE" and rc == 1:
        # a readable program that runs and fails (broken YAML run as Python) is not bad
        # input: `eval run` documents exit 1 = "it ran and did not pass", said in one line
        return one_line and "did not pass" in err
    return rc not in (0, 1) and one_line


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", help="also write the table into this file")
    ap.add_argument("--hostile-only", action="store_true",
                    help="only the hostile cases (a quick check; never writes --markdown)")
    args = ap.parse_args()
    os.environ.setdefault("BABELTOWER_LOG_DIR", tempfile.mkdtemp(prefix="bad-inputs-logs-"))
    base = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    files = make_inputs(base)
    run = make_run(base / "fixture")
    header = "| command | " + " | ".join(INPUTS) + " |"
    lines = [header, "|" + "---|" * (len(INPUTS) + 1)]
    n_cases = n_bad = n_exit2 = 0
    bad: list[str] = []
    for name, row in ({} if args.hostile_only else cases(run, base / "out")).items():
        cells = []
        for kind in INPUTS:
            template = row[kind]
            if template is None:
                cells.append("-")
                continue
            bad_path = files.get(kind, files["missing"])
            argv = [a.replace("{X}", str(bad_path)) for a in template]
            rc, err = run_case(argv)
            n_cases += 1
            ok = verdict(rc, err, name, kind)
            n_exit2 += ok and rc == 2
            first = (err.splitlines() or [""])[0].removeprefix("babeltower: error: ")
            first = re.sub(re.escape(str(base)), "…", first)[:90].replace("|", "\\|")
            cells.append(f"{rc}: {first}" + ("" if ok else " **(FAIL)**"))
            if not ok:
                n_bad += 1
                bad.append(f"{name} / {kind}: rc={rc} babeltower {' '.join(argv)}\n  {err[:300]}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{n_cases} cases: {n_exit2} one-line errors with exit 2, "
                 f"{n_cases - n_bad - n_exit2} documented runs (see above), "
                 f"{n_bad} failing.")
    # hostile options, non-file inputs and unwritable outputs: each must be exit 2, one line
    lines += ["", "Hostile options, inputs that are not regular files, outputs that cannot "
              "be written:", "", "| case | exit: first line of stderr |", "|---|---|"]
    h_cases = h_bad = h_hangs = 0
    hostile = make_hostile(base)
    for what, argv in hostile_cases(run, base / "hostile-out", hostile):
        rc, err = run_case(argv)
        h_cases += 1
        ok = rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
        h_hangs += rc == -1
        first = (err.splitlines() or [""])[0].removeprefix("babeltower: error: ")
        first = re.sub(re.escape(str(base)), "…", first)
        first = re.sub("n{20,}", "nnn…", first)[:110].replace("|", "\\|")
        lines.append(f"| `{what}` | {rc}: {first}" + ("" if ok else " **(FAIL)**") + " |")
        if not ok:
            h_bad += 1
            bad.append(f"{what}: rc={rc} babeltower {' '.join(argv)}\n  {err[:300]}")
    lines.append("")
    lines.append(f"{h_cases} hostile cases: {h_cases - h_bad} one-line errors with exit 2, "
                 f"{h_bad} failing ({h_hangs} hangs).")
    n_bad += h_bad
    text = "\n".join(lines) + "\n"
    print(text)
    for b in bad:
        print(b, file=sys.stderr)
    if args.markdown and not args.hostile_only:
        md = Path(args.markdown)
        doc = md.read_text()
        start, end = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
        head, _, rest = doc.partition(start)
        _, _, tail = rest.partition(end)
        md.write_text(f"{head}{start}\n{text}{end}{tail}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
