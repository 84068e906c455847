"""``corpus fetch``: the offline default corpus, from real code shipped in packages.

Nothing is installed system-wide and no hub is contacted:

* Python: the CPython standard library on disk (tests, ``site-packages`` and IDLE
  left out), then - optionally - the running venv's ``site-packages``;
* Go, Java, PHP, C++, Rust: Debian packages, ``apt-get download`` + ``dpkg-deb -x`` into a
  cache directory (Java: a subset of modules of ``openjdk-17-source``'s ``src.zip``);
* JavaScript: ``npm pack NAME@VERSION`` into the cache, then untarred.

Every package is recorded in ``OUT/sources.json`` (language, package, version, license,
origin, file and byte counts); a package or a whole language that cannot be had is
recorded under ``skipped`` with the reason, never a crash. Downloads and extractions are
cached (``~/.cache/babeltower/fetch``), so a re-run is fast; an ``OUT`` fetched with the
same config is returned as it is.

The per-language cap takes packages in the listed order and, inside a package, files in
a seeded hash order, so a capped fetch is a deterministic, unbiased subset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from babeltower.corpus.config import DEFAULT_LANGUAGES, canonical_languages
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, provenance, sha256_json
from babeltower.languages import detect_language

FETCH_FORMAT = "babeltower-fetch/1"
SKIP_DIR_NAMES = {"test", "tests", "testing", "testdata", "idle_test", "__pycache__",
                  "site-packages", "ensurepip", "node_modules", "vendor", "third_party",
                  "examples", "example", "benchmarks", "docs"}


@dataclass(frozen=True)
class PackageSpec:
    language: str
    name: str
    kind: str                       # stdlib | site-packages | apt | npm
    subdirs: tuple[str, ...] = ()   # where the code lives inside the extracted package
    version: str | None = None      # npm: the pinned version


def _apt(lang: str, *names: str, subdirs: tuple[str, ...] = ()) -> list[PackageSpec]:
    return [PackageSpec(lang, n, "apt", subdirs) for n in names]


_SYMFONY = ("console", "http-foundation", "http-kernel", "dependency-injection", "routing",
            "yaml", "finder", "filesystem", "process", "event-dispatcher", "validator",
            "form", "serializer", "cache", "config", "string", "translation", "mime",
            "mailer", "messenger", "security-core", "options-resolver", "var-dumper",
            "property-access", "property-info", "dom-crawler", "css-selector",
            "expression-language", "error-handler", "lock")

# The default packages per language, in the order the per-language cap takes them.
DEFAULT_PACKAGES: dict[str, list[PackageSpec]] = {
    "python": [PackageSpec("python", "cpython-stdlib", "stdlib"),
               PackageSpec("python", "venv-site-packages", "site-packages")],
    "go": _apt("go", "golang-1.19-src", subdirs=("usr/share/go-1.19/src",))
          + _apt("go", "golang-golang-x-tools-dev", "golang-github-spf13-cobra-dev",
                 "golang-github-sirupsen-logrus-dev", "golang-github-gorilla-mux-dev",
                 subdirs=("usr/share/gocode/src",)),
    "java": _apt("java", "openjdk-17-source", subdirs=("java.base", "java.sql",
                                                      "java.net.http", "java.logging",
                                                      "java.xml")),
    "php": _apt("php", "php-twig", "php-guzzlehttp-psr7", "php-guzzlehttp-promises",
                "php-guzzlehttp-guzzle", "php-phpseclib3", "php-monolog",
                "php-doctrine-dbal", "php-doctrine-orm", "php-doctrine-collections",
                "php-doctrine-inflector", "php-doctrine-lexer", "php-league-commonmark",
                "php-composer-semver", "php-psr-log", "php-mockery",
                *[f"php-symfony-{c}" for c in _SYMFONY], subdirs=("usr/share/php",)),
    "cpp": _apt("cpp", "libfmt-dev", "nlohmann-json3-dev", "libspdlog-dev", "catch2",
                "libeigen3-dev", "libboost1.81-dev", subdirs=("usr/include",)),
    "rust": _apt("rust", *[f"librust-{c}-dev" for c in (
        "serde", "regex", "regex-syntax", "rand", "syn", "itertools", "nom", "rayon",
        "hashbrown", "indexmap", "smallvec", "memchr", "aho-corasick", "proc-macro2",
        "quote", "log", "bytes", "chrono", "url", "clap", "futures", "tokio", "hyper",
        "time", "num", "crossbeam")], subdirs=("usr/share/cargo/registry",)),
    "javascript": [PackageSpec("javascript", n, "npm", version=v) for n, v in (
        ("lodash", "4.17.21"), ("express", "4.18.2"), ("moment", "2.29.4"),
        ("underscore", "1.13.6"), ("async", "3.2.5"), ("commander", "11.1.0"),
        ("semver", "7.5.4"), ("ws", "8.14.2"), ("koa", "2.14.2"), ("bluebird", "3.7.2"),
        ("handlebars", "4.7.8"), ("acorn", "8.11.2"), ("esprima", "4.0.1"),
        ("yargs", "17.7.2"), ("jquery", "3.7.1"), ("q", "1.5.1"))],
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("BABELTOWER_CACHE", Path.home() / ".cache" / "babeltower")) / "fetch"


def parse_caps(spec: str | float | int | dict | None) -> dict[str, float | None]:
    """'16' / '8,python=40' / {'python': 40, '*': 8} -> {lang or '*': MB} (None = no cap)."""
    if spec is None or spec == "":
        return {"*": None}
    if isinstance(spec, (int, float)):
        return {"*": float(spec)}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            k, _, v = part.rpartition("=")
            items.append((k or "*", v))
    caps: dict[str, float | None] = {"*": None}
    for k, v in items:
        key = "*" if k in ("*", "default") else canonical_languages([k])[0]
        try:
            caps[key] = None if v in (None, "none", "") else float(v)
        except ValueError:
            raise BabelError(f"bad per-language cap {k}={v!r} (want megabytes)") from None
        if caps[key] is not None and caps[key] <= 0:
            raise BabelError(f"per-language cap must be > 0 MB, got {k}={v}")
    return caps


# ---------------------------------------------------------------- package materialisation

@dataclass
class _Materialised:
    root: Path                     # directory whose files are candidates
    version: str | None
    license: str | None
    origin: str
    files: list[Path] = field(default_factory=list)


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _debian_license(tree: Path, pkg: str) -> str | None:
    cp = tree / "usr/share/doc" / pkg / "copyright"
    if not cp.is_file():
        return None
    for line in cp.read_text(errors="replace").splitlines():
        if line.startswith("License:"):
            return line.split(":", 1)[1].strip() or None
    return None


class _AptCache:
    """apt-get download + dpkg-deb -x into ``cache/apt``; nothing installed."""

    def __init__(self, cache: Path, log):
        self.dir = cache / "apt"
        self.debs = self.dir / "debs"
        self.log = log
        self._updated = False

    def _candidates(self, names: list[str]) -> dict[str, str]:
        out = _run(["apt-cache", "policy", *names])
        found: dict[str, str] = {}
        current = None
        for line in out.stdout.splitlines():
            if line and not line.startswith(" ") and line.endswith(":"):
                current = line[:-1]
            elif current and line.strip().startswith("Candidate:"):
                v = line.split(":", 1)[1].strip()
                if v and v != "(none)":
                    found[current] = v
        return found

    def ensure(self, names: list[str]) -> dict[str, str]:
        """Download and extract what is not cached; {name: reason} for what failed."""
        failed: dict[str, str] = {}
        todo = [n for n in names if not (self.dir / "x" / n / ".done").exists()]
        if not todo:
            return failed
        if shutil.which("dpkg-deb") is None:
            return {n: "dpkg-deb not available on this machine" for n in todo}
        # a .deb already in the cache is extracted as it is: apt is asked only for the rest
        cached = [n for n in todo if self._deb_of(n)]
        ask = [n for n in todo if n not in cached]
        if ask and shutil.which("apt-get") is None:
            failed = {n: "apt-get not available on this machine" for n in ask}
            ask = []
        cands = self._candidates(ask) if ask else {}
        # no candidate at all = empty package lists (a fresh machine): update once. One
        # unknown name among known ones is just a missing package, not worth an update.
        if ask and not cands and not self._updated and os.geteuid() == 0:
            self.log("apt-cache knows none of these packages: running apt-get update once")
            _run(["apt-get", "update", "-qq"], timeout=900)
            self._updated = True
            cands = self._candidates(ask)
        for n in ask:
            if n not in cands:
                failed[n] = "no such Debian package (apt-cache policy: no candidate)"
        want = cached + [n for n in ask if n in cands]
        self.debs.mkdir(parents=True, exist_ok=True)
        missing = [n for n in want if not self._deb_of(n)]
        if missing:
            self.log(f"apt-get download {len(missing)} package(s)")
            res = _run(["apt-get", "download", *missing], cwd=self.debs)
            if res.returncode != 0:  # retry one by one, to tell which failed
                for n in missing:
                    if not self._deb_of(n):
                        r = _run(["apt-get", "download", n], cwd=self.debs)
                        if r.returncode != 0:
                            failed[n] = "apt-get download failed: " + (
                                r.stderr.strip().splitlines() or ["?"])[-1]
        for n in want:
            if n in failed:
                continue
            deb = self._deb_of(n)
            if deb is None:
                failed[n] = "apt-get download produced no .deb"
                continue
            dest = self.dir / "x" / n
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            r = _run(["dpkg-deb", "-x", str(deb), str(dest)])
            if r.returncode != 0:
                failed[n] = f"dpkg-deb -x failed: {r.stderr.strip()[:200]}"
                shutil.rmtree(dest, ignore_errors=True)
                continue
            version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
            (dest / ".done").write_text(json.dumps({
                "version": version, "license": _debian_license(dest, n), "deb": deb.name}))
        return failed

    def _deb_of(self, name: str) -> Path | None:
        hits = sorted(self.debs.glob(f"{name}_*.deb"))
        return hits[-1] if hits else None

    def tree(self, name: str) -> tuple[Path, dict]:
        d = self.dir / "x" / name
        return d, json.loads((d / ".done").read_text())


def debian_package_trees(names: list[str], cache_dir: str | os.PathLike | None = None,
                         progress: bool = False) -> dict[str, tuple[Path, dict]]:
    """Debian packages downloaded (``apt-get download``) and extracted (``dpkg-deb -x``)
    into the fetch cache, nothing installed: name -> (extracted tree, {version, license,
    deb}). Data that is not code (an English word list, documentation text) comes this
    way. A package that cannot be had is a BabelError naming it and why."""
    from rich.console import Console

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    apt = _AptCache(cache, Console(stderr=True, quiet=not progress).log)
    failed = apt.ensure(list(names))
    if failed:
        raise BabelError("cannot get Debian package(s): " + "; ".join(
            f"{n}: {why}" for n, why in failed.items()))
    return {n: apt.tree(n) for n in names}


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIR_NAMES and not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                yield p


def _java_tree(apt: _AptCache, spec: PackageSpec) -> Path:
    """Unzip the listed modules' .java files from openjdk's src.zip (once, cached)."""
    tree, _ = apt.tree(spec.name)
    out = tree / "babeltower-src"
    marker = out / ".done"
    if marker.exists():
        return out
    zips = sorted(tree.glob("usr/lib/jvm/*/lib/src.zip"))
    if not zips:
        raise BabelError(f"{spec.name}: no src.zip found in the package")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with zipfile.ZipFile(zips[0]) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith(".java") and name.split("/", 1)[0] in spec.subdirs:
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
    marker.write_text("ok")
    return out


def _npm_tree(cache: Path, spec: PackageSpec, log) -> tuple[Path, dict] | str:
    base = cache / "npm"
    dest = base / "x" / f"{spec.name}@{spec.version}"
    marker = dest / ".done"
    if marker.exists():
        return dest / "package", json.loads(marker.read_text())
    if shutil.which("npm") is None:
        return "npm is not available on this machine"
    (base / "tgz").mkdir(parents=True, exist_ok=True)
    r = _run(["npm", "pack", f"{spec.name}@{spec.version}" if spec.version else spec.name,
              "--json", "--silent", "--pack-destination", str(base / "tgz")], timeout=300)
    if r.returncode != 0:
        return "npm pack failed: " + ((r.stderr.strip().splitlines() or ["?"])[-1])[:200]
    try:
        info = json.loads(r.stdout)[0]
        tgz = base / "tgz" / info["filename"]
    except (json.JSONDecodeError, IndexError, KeyError):
        return "npm pack gave no file name"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(tgz) as tf:
        tf.extractall(dest, filter="data")
    meta = {}
    pj = dest / "package" / "package.json"
    if pj.is_file():
        try:
            meta = json.loads(pj.read_text())
        except json.JSONDecodeError:
            meta = {}
    lic = meta.get("license")
    if isinstance(lic, dict):
        lic = lic.get("type")
    rec = {"version": meta.get("version", spec.version), "license": lic, "tgz": tgz.name}
    marker.write_text(json.dumps(rec))
    return dest / "package", rec


def _python_specs(spec: PackageSpec) -> list[_Materialised]:
    if spec.kind == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return [_Materialised(root, sys.version.split()[0], "PSF-2.0",
                              f"CPython standard library at {root}")]
    # site-packages of the running interpreter: one entry per distribution's top-level dir
    from importlib import metadata

    root = Path(sysconfig.get_paths()["purelib"])
    dists = metadata.packages_distributions()
    out = []
    for top in sorted(p.name for p in root.iterdir() if p.is_dir()
                      and p.name.isidentifier() and not p.name.startswith("_")):
        dist = (dists.get(top) or [None])[0]
        version = lic = None
        if dist:
            try:
                md = metadata.metadata(dist)
                version = md.get("Version")
                lic = md.get("License-Expression") or md.get("License")
                if lic and len(lic) > 80:  # some put the whole licence text here
                    lic = lic.splitlines()[0][:80]
                if not lic:
                    cls = [c.split("::")[-1].strip() for c in md.get_all("Classifier") or []
                           if c.startswith("License ::")]
                    lic = cls[0] if cls else None
            except metadata.PackageNotFoundError:
                pass
        out.append(_Materialised(root / top, version, lic,
                                 f"site-packages of {sys.prefix} ({dist or top})"))
    return out


def _hash_order(paths: list[Path], root: Path, seed: int) -> list[Path]:
    def key(p: Path) -> bytes:
        return hashlib.blake2b(f"{seed}\0{p.relative_to(root).as_posix()}".encode(),
                               digest_size=8).digest()
    return sorted(paths, key=key)


# ---------------------------------------------------------------- the fetch

# long: one pass over languages and their package sources with the per-source accounting
# the manifest records; each source kind is already its own function
def fetch_corpus(out: str | os.PathLike, languages=None,
                 max_mb_per_language: str | float | dict | None = 16,
                 cache_dir: str | os.PathLike | None = None,
                 include_site_packages: bool = True, seed: int = 0,
                 packages: dict[str, list[PackageSpec]] | None = None,
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Gather real code per language into ``out/<lang>/<package>/...`` + ``sources.json``.

    Returns ``out``. If ``out`` already holds a fetch with the same settings it is
    returned as it is (cached); with other settings, ``overwrite=True`` replaces it.
    """
    langs = canonical_languages(languages) or list(DEFAULT_LANGUAGES)
    caps = parse_caps(max_mb_per_language)
    catalog = packages or DEFAULT_PACKAGES
    settings = {"languages": langs, "caps": caps, "include_site_packages": include_site_packages,
                "seed": seed, "packages": {k: [asdict(p) for p in catalog.get(k, [])]
                                           for k in langs}}
    key = sha256_json(settings)
    out = Path(out)
    index = out / "sources.json"
    if index.is_file():
        try:
            if json.loads(index.read_text()).get("settings_sha256") == key:
                return out
        except json.JSONDecodeError:
            pass
        if not overwrite:
            raise BabelError(f"{out} holds a fetch with other settings (pass --overwrite)")
    elif out.exists() and not overwrite:
        raise BabelError(f"output {out} already exists and is not a fetch (pass --overwrite)")

    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    log = console.log
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    apt = _AptCache(cache, log)
    sources: list[dict] = []
    skipped: list[dict] = []
    summary: dict[str, dict] = {}

    with atomic_dir(out, overwrite=True) as tmp:
        for lang in langs:
            specs = [s for s in catalog.get(lang, [])
                     if include_site_packages or s.kind != "site-packages"]
            if not specs:
                skipped.append({"language": lang, "package": None,
                                "reason": "no default packages for this language"})
                log(f"[yellow]{lang}: no default packages, skipped")
                continue
            cap = caps.get(lang, caps["*"])
            cap_bytes = None if cap is None else int(cap * 1e6)
            apt_failed = apt.ensure([s.name for s in specs if s.kind == "apt"])
            used = 0
            lang_sources: list[dict] = []
            for spec in specs:
                if cap_bytes is not None and used >= cap_bytes:
                    break
                try:
                    mats = _materialise(spec, apt, apt_failed, cache, log)
                except BabelError as e:
                    mats = str(e)
                if isinstance(mats, str):
                    skipped.append({"language": lang, "package": spec.name, "reason": mats})
                    log(f"[yellow]{lang}: {spec.name} skipped: {mats}")
                    continue
                for mat in mats:
                    if cap_bytes is not None and used >= cap_bytes:
                        break
                    pkg_name = spec.name if len(mats) == 1 else mat.root.name
                    dest_root = f"{lang}/{pkg_name}"
                    n_files = n_bytes = 0
                    full = False
                    for src in _hash_order(list(_candidate_files(mat.root, lang)), mat.root, seed):
                        size = src.stat().st_size
                        if cap_bytes is not None and used + size > cap_bytes:
                            full = True  # fill up from this package, then stop the language
                            continue
                        target = tmp / dest_root / src.relative_to(mat.root)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, target)
                        used += size
                        n_files += 1
                        n_bytes += size
                    if full:
                        used = cap_bytes
                    if n_files:
                        lang_sources.append({
                            "language": lang, "package": pkg_name, "version": mat.version,
                            "license": mat.license, "kind": spec.kind, "origin": mat.origin,
                            "root": dest_root, "files": n_files, "bytes": n_bytes})
            if lang_sources:
                sources.extend(lang_sources)
                summary[lang] = {"packages": len(lang_sources),
                                 "files": sum(s["files"] for s in lang_sources),
                                 "bytes": sum(s["bytes"] for s in lang_sources)}
                log(f"{lang}: {summary[lang]['files']} files, "
                    f"{summary[lang]['bytes'] / 1e6:.1f} MB from {len(lang_sources)} package(s)")
            else:
                skipped.append({"language": lang, "package": None,
                                "reason": "no source code could be had for this language"})
                log(f"[red]{lang}: no source code could be had; language left out")
        if not sources:
            raise BabelError("fetch found no source code for any language: " + "; ".join(
                f"{s['language']}/{s['package']}: {s['reason']}" for s in skipped[:5]))
        atomic_write_json(tmp / "sources.json", {
            "format": FETCH_FORMAT, "settings_sha256": key, "languages": summary,
            "sources": sources, "skipped": skipped,
            "provenance": provenance(config=settings, seed=seed, cache_dir=str(cache)),
        })
    return out


def _candidate_files(root: Path, lang: str) -> Iterator[Path]:
    hint = lang
    for p in _walk_files(root):
        detected = detect_language(p.name)
        if detected == "c" and hint == "cpp":
            detected = "cpp"
        if detected == lang:
            yield p


def _materialise(spec: PackageSpec, apt: _AptCache, apt_failed: dict, cache: Path,
                 log) -> list[_Materialised] | str:
    if spec.kind in ("stdlib", "site-packages"):
        return _python_specs(spec)
    if spec.kind == "npm":
        got = _npm_tree(cache, spec, log)
        if isinstance(got, str):
            return got
        root, meta = got
        return [_Materialised(root, meta.get("version"), meta.get("license"),
                              f"npm pack {spec.name}@{meta.get('version')}")]
    if spec.kind == "apt":
        if spec.name in apt_failed:
            return apt_failed[spec.name]
        tree, meta = apt.tree(spec.name)
        origin = f"Debian package {spec.name} {meta.get('version')}"
        if spec.name.startswith("openjdk-"):
            return [_Materialised(_java_tree(apt, spec), meta.get("version"),
                                  meta.get("license") or "GPL-2.0 with Classpath exception",
                                  origin)]
        # the first listed code directory that the package has (else the whole tree)
        root = next((tree / s for s in spec.subdirs if (tree / s).is_dir()), tree)
        return [_Materialised(root, meta.get("version"), meta.get("license"), origin)]
    return f"unknown package kind {spec.kind!r}"
