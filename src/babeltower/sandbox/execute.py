"""Compile and run one complete program in the sandbox: ``run_program(language, source)``.

A program *passes* when it exits with code 0 (the HumanEval / MultiPL-E convention: the
tests are asserts appended to the program). Per language:

============  ==============================================================================
python        ``python3 main.py``
javascript    ``node main.js``
php           ``php main.php``
cpp           ``g++ -std=c++17 -O0 main.cpp -o main`` then ``./main``
rust          ``rustc --edition 2021 -o main main.rs`` then ``./main``
java          ``javac`` then ``java -ea <MainClass>`` (assertions on, as MultiPL-E runs them).
              The file is named after the ``public class`` if there is one (javac requires
              it), else ``Main.java``; the class run is the one declaring
              ``public static void main`` (MultiPL-E's ``class Problem``, or ``Main``).
go            ``go build -o main main.go`` then ``./main`` for a ``package main`` with
              ``func main``; a file with ``func Test...(t *testing.T)`` and no ``main``
              (MultiPL-E's Go shape) is run with ``go test`` as ``main_test.go``.
              ``GOCACHE``/``GOPATH`` live inside the sandbox directory, ``GOFLAGS=-mod=mod``
              is not set and ``GOPROXY=off``: nothing is fetched.
============  ==============================================================================

Compilation runs in the same sandbox (own directory, no network, limits, own process
group, read-only host) and as the same unprivileged sandbox uid as the program: a
``include_str!("/etc/shadow")`` or ``#include "/etc/shadow"`` fails to compile. A
toolchain in a directory that uid may not enter (rustup's under ``/root``, mode 0700) is
bind-mounted read-only into the sandbox's private ``/tmp`` and run from there - nothing on
the host is copied or has its permissions changed (``fences.py``). The compiler's
directory is writable (the binary must survive for the run step); the program's run sees
it as a copy-on-write overlay whose writes are capped and discarded. The JVM, node and the
Go toolchain reserve large virtual address ranges at start, so for them ``RLIMIT_AS`` is
off; the memory cgroup (root) or ``RLIMIT_DATA`` (which counts committed memory only) plus
their own caps (``-Xmx``, ``--max-old-space-size``, ``GOMEMLIMIT``) bound memory - for
compilers too.

A language whose toolchain is not installed gives status ``missing_toolchain`` with the
Debian package to install (``scripts/install-toolchains.sh``).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from babeltower.errors import BabelError
from babeltower.sandbox.fences import TOOLCHAIN_MOUNT_ROOT
from babeltower.sandbox.run import (Limits, SandboxResult, new_sandbox_dir,
                                         remove_dir_later, run_sandboxed)
from babeltower.languages import get_language

SUPPORTED = ("python", "javascript", "php", "cpp", "rust", "java", "go")


@dataclass
class ExecResult(SandboxResult):
    language: str = ""
    compile_time: float | None = None   # seconds spent compiling (None: interpreted)


def _world_accessible(path: Path) -> bool:
    """True when an unprivileged user can execute ``path`` (every parent o+x)."""
    try:
        p = path.resolve()
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return False
        for parent in p.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def find_tool(name: str) -> tuple[str, bool] | None:
    """(absolute path, usable by the unprivileged sandbox user) of an executable, or None.

    Prefers a world-accessible copy on PATH. A rustup proxy is replaced by the real
    ``rustc`` of its active toolchain, which needs no ``RUSTUP_HOME`` in the scrubbed
    environment.
    """
    found: list[Path] = []
    for d in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        cand = Path(d or ".") / name
        try:
            if cand.is_file() and os.access(cand, os.X_OK):
                found.append(cand)
        except OSError:  # a PATH entry we may not look into (e.g. /root/... when not root)
            pass
    for extra in (Path("/usr/local/bin") / name, Path("/usr/bin") / name):
        try:
            if extra.is_file() and extra not in found:
                found.append(extra)
        except OSError:
            pass
    if not found:
        return None
    if name == "rustc":
        try:
            sysroot = subprocess.run([str(found[0]), "--print", "sysroot"], capture_output=True,
                                     text=True, timeout=30).stdout.strip()
            real = Path(sysroot) / "bin" / "rustc"
            if real.is_file():
                return str(real), _world_accessible(real)
        except (OSError, subprocess.SubprocessError):
            pass
    for cand in found:
        if _world_accessible(cand):
            return str(cand), True
    return str(found[0]), False


def toolchain_status(language: str) -> dict[str, str | None]:
    """{executable: resolved path or None} for a language's toolchain."""
    lang = get_language(language)
    return {t: (find_tool(t) or (None,))[0] for t in lang.toolchain}


def _reachable_compiler(path: str, world_accessible: bool) -> tuple[str, list[tuple[str, str]]]:
    """(path to run inside the sandbox, binds) for a compiler the sandbox uid must run.

    A compiler the uid can reach runs from where it is. Otherwise its toolchain directory
    (the parent of its ``bin/``, e.g. rustup's sysroot) is bound read-only under the
    sandbox's private ``/tmp``: the toolchain finds its libraries relative to its own
    executable, and the host's permissions stay as they are.
    """
    if world_accessible:
        return path, []
    exe = Path(path)
    toolchain = exe.parent.parent
    inside = f"{TOOLCHAIN_MOUNT_ROOT}/{toolchain.name}"
    return f"{inside}/{exe.parent.name}/{exe.name}", [(str(toolchain), inside)]


def _missing(language: str, tools: list[str], t0: float) -> ExecResult:
    pkgs = " ".join(get_language(language).apt_packages) or "?"
    return ExecResult(status="missing_toolchain", exit_code=None, signal=None, stdout="",
                      stderr=f"{language}: toolchain not installed: {', '.join(tools)} "
                             f"(apt package: {pkgs}; see scripts/install-toolchains.sh)",
                      wall_time=time.monotonic() - t0, language=language)


_JAVA_PUBLIC = re.compile(r"^\s*public\s+(?:final\s+|abstract\s+)*class\s+(\w+)", re.M)
_JAVA_CLASS = re.compile(r"\bclass\s+(\w+)")
_JAVA_MAIN = re.compile(r"public\s+static\s+void\s+main\s*\(")


def java_class_names(source: str) -> tuple[str, str]:
    """(file stem, class to run): see the module docstring."""
    pub = _JAVA_PUBLIC.search(source)
    stem = pub.group(1) if pub else "Main"
    main_cls = None
    m = _JAVA_MAIN.search(source)
    if m:
        before = list(_JAVA_CLASS.finditer(source, 0, m.start()))
        if before:
            main_cls = before[-1].group(1)
    return stem, main_cls or stem


def _as_exec(r: SandboxResult, language: str, compile_time: float | None = None,
             status: str | None = None) -> ExecResult:
    d = r.to_dict()
    if status:
        d["status"] = status
    return ExecResult(**d, language=language, compile_time=compile_time)


def _build_plan(lang: str, source: str, wd: Path, tools: dict, base: Limits,
                runtime: Limits) -> tuple[list[str], list[str], dict[str, str], Limits]:
    """(compile command, run command, extra environment, run limits) of a compiled
    language; writes the source file into ``wd`` under the name its compiler wants."""
    env: dict[str, str] = {}
    if lang == "cpp":
        (wd / "main.cpp").write_text(source, encoding="utf-8")
        compile_cmd = [tools["g++"][0], "-std=c++17", "-O0", "main.cpp", "-o", "main"]
        run_cmd = ["./main"]
    elif lang == "rust":
        (wd / "main.rs").write_text(source, encoding="utf-8")
        compile_cmd = [tools["rustc"][0], "--edition", "2021", "-C", "debuginfo=0",
                       "-o", "main", "main.rs"]
        run_cmd = ["./main"]
    elif lang == "java":
        stem, main_cls = java_class_names(source)
        (wd / f"{stem}.java").write_text(source, encoding="utf-8")
        heap = max(64, base.memory_bytes >> 21)
        compile_cmd = [tools["javac"][0], "-J-Xmx512m", "-J-XX:+UseSerialGC",
                       "-J-XX:TieredStopAtLevel=1", "-nowarn", "-encoding", "UTF-8",
                       "-d", ".", f"{stem}.java"]
        run_cmd = [tools["java"][0], f"-Xmx{heap}m", "-XX:+UseSerialGC",
                   "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-ea", "-cp", ".", main_cls]
        runtime = replace(runtime, max_processes=max(runtime.max_processes, 256),
                          heap_bytes=heap << 20)
    else:  # go
        env = {"GOCACHE": str(wd / ".gocache"), "GOPATH": str(wd / ".gopath"),
               "GOPROXY": "off", "GOFLAGS": "", "GO111MODULE": "off",
               "GOMAXPROCS": "2", "CGO_ENABLED": "0", "GOTELEMETRY": "off",
               # the runtime's soft limit: it collects harder near the sandbox's limit
               "GOMEMLIMIT": str(base.memory_bytes * 3 // 4)}
        is_test = "func main()" not in source and re.search(r"func Test\w*\(", source)
        if is_test:
            (wd / "main_test.go").write_text(source, encoding="utf-8")
            compile_cmd = [tools["go"][0], "test", "-c", "-o", "main.test", "main_test.go"]
            run_cmd = ["./main.test"]
        else:
            (wd / "main.go").write_text(source, encoding="utf-8")
            compile_cmd = [tools["go"][0], "build", "-o", "main", "main.go"]
            run_cmd = ["./main"]
    return compile_cmd, run_cmd, env, runtime


def run_program(language: str, source: str, timeout: float = 10.0,
                compile_timeout: float = 60.0, memory_bytes: int = 2 << 30,
                max_processes: int = 64, limits: Limits | None = None,
                files: dict[str, str] | None = None,
                python_fork_server: bool = True, unsafe: bool = False) -> ExecResult:
    """Compile (if needed) and run a complete program in the sandbox.

    ``timeout`` bounds the run, ``compile_timeout`` the compilation. ``limits`` overrides
    the other limit arguments. ``files`` are extra files written next to the program.
    ``python_fork_server``: Python programs run in a child of a small fork server rather
    than a fresh interpreter (same fences, ~25 ms less per program; see ``zygote.py``).
    Exit code 0 = ``pass``; a failed compilation = ``compile_error``. ``unsafe``: run even
    where a layer of isolation cannot be set up (``sandbox.run_sandboxed``); otherwise
    such a host raises ``SandboxUnavailable`` and nothing runs.
    """
    t0 = time.monotonic()
    lang = get_language(language).name
    if lang not in SUPPORTED:
        raise BabelError(f"no runner for language {lang!r} (supported: {', '.join(SUPPORTED)})")
    base = limits or Limits(timeout=timeout, memory_bytes=memory_bytes,
                            max_processes=max_processes)
    needed = {"python": ["python3"], "javascript": ["node"], "php": ["php"], "cpp": ["g++"],
              "rust": ["rustc"], "java": ["javac", "java"], "go": ["go"]}[lang]
    tools = {t: find_tool(t) for t in needed}
    missing = [t for t, v in tools.items() if v is None]
    if missing:
        return _missing(lang, missing, t0)

    wd = new_sandbox_dir()
    try:
        for name, text in (files or {}).items():
            (wd / name).write_text(text, encoding="utf-8")
        runtime = replace(base, address_space=lang not in ("javascript", "java", "go"))
        compiler_limits = replace(base, timeout=compile_timeout, address_space=False,
                                  cpu_seconds=int(compile_timeout) + 1,
                                  max_processes=max(base.max_processes, 256))
        if lang in ("python", "javascript", "php"):
            fname = {"python": "main.py", "javascript": "main.js", "php": "main.php"}[lang]
            (wd / fname).write_text(source, encoding="utf-8")
            exe = tools[needed[0]][0]
            cmd = {"python": [exe, "-B", fname],
                   "javascript": [exe, f"--max-old-space-size={max(64, base.memory_bytes >> 21)}",
                                  "--stack-size=4000", fname],
                   "php": [exe, "-d", f"memory_limit={max(64, base.memory_bytes >> 21)}M",
                           fname]}[lang]
            if lang == "javascript":
                runtime = replace(runtime, max_processes=max(runtime.max_processes, 64))
            if lang in ("javascript", "php"):  # their own heap cap, set above
                runtime = replace(runtime, heap_bytes=max(64, base.memory_bytes >> 21) << 20)
            return _as_exec(run_sandboxed(cmd, workdir=wd, limits=runtime,
                                          python_fork_server=python_fork_server
                                          and lang == "python", unsafe=unsafe), lang)

        compile_cmd, run_cmd, env, runtime = _build_plan(lang, source, wd, tools, base, runtime)
        compiler = tools[needed[0]]
        compile_cmd[0], binds = _reachable_compiler(compiler[0], compiler[1])
        c = run_sandboxed(compile_cmd, workdir=wd, limits=compiler_limits, env=env,
                          writable_workdir=True, binds=binds, unsafe=unsafe)
        compile_time = c.wall_time
        if c.status != "pass":
            # a compiler stopped by our limits is a timeout/memory/disk, not a compile error
            status = c.status if c.status in ("timeout", "memory", "disk") else "compile_error"
            return _as_exec(c, lang, compile_time, status=status)
        r = run_sandboxed(run_cmd, workdir=wd, limits=runtime, env=env, unsafe=unsafe)
        return _as_exec(r, lang, compile_time)
    finally:
        remove_dir_later(wd)


def check_toolchains(languages=SUPPORTED) -> dict[str, bool]:
    """{language: every executable of its toolchain present}."""
    return {lang: all(v is not None for v in toolchain_status(lang).values())
            for lang in languages}


def sample_programs() -> dict[str, tuple[str, str]]:
    """A tiny passing and failing program per language (used by tests and the doctor)."""
    return {
        "python": ("assert 1 + 1 == 2\nprint('ok')\n", "assert 1 + 1 == 3\n"),
        "javascript": ("const assert = require('assert');\nassert.deepEqual(1 + 1, 2);\n"
                       "console.log('ok');\n",
                       "const assert = require('assert');\nassert.deepEqual(1 + 1, 3);\n"),
        "php": ("<?php\nif (1 + 1 !== 2) { throw new Exception('bad'); }\necho 'ok';\n",
                "<?php\nif (1 + 1 !== 3) { throw new Exception('bad'); }\n"),
        "cpp": ("#include <cassert>\n#include <cstdio>\nint main(){ assert(1+1==2); "
                "puts(\"ok\"); }\n",
                "#include <cassert>\nint main(){ assert(1+1==3); }\n"),
        "rust": ("fn main() { assert_eq!(1 + 1, 2); println!(\"ok\"); }\n",
                 "fn main() { assert_eq!(1 + 1, 3); }\n"),
        "java": ("import java.util.*;\nclass Problem {\n  public static void main(String[] a) {\n"
                 "    assert 1 + 1 == 2;\n    System.out.println(\"ok\");\n  }\n}\n",
                 "class Problem {\n  public static void main(String[] a) {\n"
                 "    assert 1 + 1 == 3;\n  }\n}\n"),
        "go": ("package main\nimport \"fmt\"\nfunc main() {\n  if 1+1 != 2 { panic(\"bad\") }\n"
               "  fmt.Println(\"ok\")\n}\n",
               "package main\nfunc main() {\n  if 1+1 != 3 { panic(\"bad\") }\n}\n"),
    }
