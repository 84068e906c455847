"""The language registry: how to recognise a language's files and how to run its code.

One table, used by the corpus (detection by extension, file name and shebang; comment
syntax for filters), by evaluation (toolchains for sandboxed execution) and by the
probes (language names in suites). Add a language by adding one ``Language`` entry.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Mapping, Sequence

from babeltower.errors import BabelError


@dataclass(frozen=True)
class Language:
    name: str                       # canonical id used everywhere (configs, dirs, tables)
    display: str
    extensions: tuple[str, ...]     # lower-case, with the dot
    filenames: tuple[str, ...] = () # exact file names (e.g. "Rakefile")
    shebangs: tuple[str, ...] = ()  # interpreter names found in a "#!" line
    line_comment: str | None = None
    block_comment: tuple[str, str] | None = None
    # Toolchain: executables needed to run a program, and the Debian packages that provide them.
    toolchain: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def toolchain_missing(self) -> list[str]:
        """Executables of the toolchain that are not on PATH."""
        return [t for t in self.toolchain if shutil.which(t) is None]


_C_COMMENTS = dict(line_comment="//", block_comment=("/*", "*/"))

LANGUAGES: dict[str, Language] = {
    lang.name: lang
    for lang in [
        Language("python", "Python", (".py", ".pyi"), shebangs=("python", "python3"),
                 line_comment="#", block_comment=('"""', '"""'), toolchain=("python3",),
                 apt_packages=("python3",), aliases=("py",)),
        Language("go", "Go", (".go",), toolchain=("go",), apt_packages=("golang-go",),
                 aliases=("golang",), **_C_COMMENTS),
        Language("java", "Java", (".java",), toolchain=("javac", "java"),
                 apt_packages=("default-jdk-headless",), **_C_COMMENTS),
        Language("php", "PHP", (".php", ".phpt", ".inc"), shebangs=("php",), toolchain=("php",),
                 apt_packages=("php-cli",), **_C_COMMENTS),
        Language("cpp", "C++", (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".ipp", ".tcc"),
                 toolchain=("g++",), apt_packages=("g++",), aliases=("c++", "cxx"),
                 **_C_COMMENTS),
        Language("c", "C", (".c", ".h"), toolchain=("gcc",), apt_packages=("gcc",),
                 **_C_COMMENTS),
        Language("csharp", "C#", (".cs",), toolchain=("dotnet",), aliases=("cs", "c#"),
                 **_C_COMMENTS),
        Language("rust", "Rust", (".rs",), toolchain=("rustc",), apt_packages=("rustc",),
                 aliases=("rs",), **_C_COMMENTS),
        Language("javascript", "JavaScript", (".js", ".mjs", ".cjs", ".jsx"),
                 shebangs=("node", "nodejs"), toolchain=("node",), apt_packages=("nodejs",),
                 aliases=("js",), **_C_COMMENTS),
        Language("typescript", "TypeScript", (".ts", ".tsx", ".mts", ".cts"),
                 shebangs=("ts-node", "deno"), toolchain=("tsc", "node"), aliases=("ts",),
                 **_C_COMMENTS),
        Language("ruby", "Ruby", (".rb",), filenames=("Rakefile", "Gemfile"),
                 shebangs=("ruby",), line_comment="#", toolchain=("ruby",),
                 apt_packages=("ruby",), aliases=("rb",)),
    ]
}

_ALIASES = {a: lang.name for lang in LANGUAGES.values() for a in (lang.name, *lang.aliases)}
_BY_EXT = {ext: lang.name for lang in LANGUAGES.values() for ext in lang.extensions}
_BY_NAME = {fn: lang.name for lang in LANGUAGES.values() for fn in lang.filenames}
# .h is ambiguous between C and C++: C wins by default; corpora from C++ packages may override.


def get_language(name: str) -> Language:
    """Look up a language by name or alias; an unknown name is a clear BabelError."""
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        known = ", ".join(sorted(LANGUAGES))
        raise BabelError(f"unknown language {name!r} (known: {known})")
    return LANGUAGES[key]


def canonical(name: str) -> str:
    return get_language(name).name


def declared_language(name: str, extensions: Sequence[str], display: str | None = None) -> Language:
    """A language a user declares in a file (e.g. a probe suite) without editing this table:
    a name and its file extensions. Not registered globally, so a declaration stays local
    to the file that makes it. A name that is already a built-in language is refused, so a
    declaration cannot silently change what a known name means."""
    key = str(name).strip().lower()
    if not key or not all(c.isalnum() or c in "_+#-" for c in key):
        raise BabelError(f"language name {name!r} must be a non-empty word "
                         "(letters, digits, _ + # -)")
    if key in _ALIASES:
        raise BabelError(f"language {key!r} is built in (as {_ALIASES[key]!r}); "
                         "do not declare it again")
    exts = tuple(str(e).strip().lower() for e in extensions)
    bad = [e for e in exts if not e.startswith(".") or len(e) < 2 or " " in e]
    if not exts or bad:
        raise BabelError(f"language {key!r}: extensions must be a non-empty list like "
                         f"['.kt', '.kts'] (got {list(extensions)!r})")
    return Language(key, display or key, exts)


def resolve_language(name: str, declared: Mapping[str, Language] | None = None) -> str:
    """Canonical id of ``name``: a language in ``declared`` (by its id) or a built-in one."""
    key = str(name).strip().lower()
    if declared and key in declared:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    known = sorted(set(LANGUAGES) | set(declared or {}))
    raise BabelError(f"unknown language {name!r} (known: {', '.join(known)}; a suite file "
                     "may declare more under 'languages:' with name and extensions)")


def detect_language(path: str, head: bytes | None = None) -> str | None:
    """Language of a file from its name, then its shebang line; None if unknown."""
    p = PurePath(path)
    if p.name in _BY_NAME:
        return _BY_NAME[p.name]
    lang = _BY_EXT.get(p.suffix.lower())
    if lang is not None:
        return lang
    if head and head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        words = first[2:].split()
        if not words:
            return None
        prog = words[0].rsplit("/", 1)[-1]
        if prog == "env":
            args = [w for w in words[1:] if not w.startswith("-")]
            prog = args[0].rsplit("/", 1)[-1] if args else ""
        prog = prog.rstrip("0123456789.")
        for lang in LANGUAGES.values():
            if prog in lang.shebangs:
                return lang.name
    return None
