"""Hostile programs through pass@k's own execution path: each contained, each its status.

Every program here is a "completion" run by ``passk.execute_samples`` (the path generated
code takes: ``run_program`` -> compile as the sandbox uid -> run), in Python, C++ and Rust.
Each program *succeeds* (exit 0) only if its attack worked, so a ``pass`` would be an
escape; the right status per attack is listed with it. The host is checked afterwards as
well (no file left, no process left, no connection accepted). CI runs it as root (own
uid, cgroups) and again as an unprivileged user (user namespace, same uid, rlimits) -
``.ci/run``; every test asserts on both paths.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from babeltower.evaluate.passk import Problem, execute_samples
from sandbox_fixtures import loopback_listener, require_toolchain, world_writable_dirs

pytestmark = [pytest.mark.slow]
LANGUAGES = ("python", "cpp", "rust")
SECRET = "/etc/shadow"


def run(language: str, source: str, timeout: float = 10.0, memory_bytes: int = 512 << 20):
    p = Problem(name=f"hostile-{language}", language=language, prompt=source, tests="")
    (row,) = execute_samples([p], {0: [""]}, workers=1, timeout=timeout, progress=False,
                             memory_bytes=memory_bytes)
    return row


def c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module", autouse=True)
def _secret_is_root_only():
    st = os.stat(SECRET)
    assert st.st_uid == 0 and not st.st_mode & stat.S_IROTH  # what makes the test mean it


# --- root-only file read ------------------------------------------------------------------
READ_AT_COMPILE = {
    "cpp": f'#include <cstdio>\nconst char* s =\n#include {c_string(SECRET)}\n;\n'
           'int main(){ puts(s); }\n',
    "rust": f'fn main() {{ print!("{{}}", include_str!({c_string(SECRET)})); }}\n',
}
READ_AT_RUN = {
    "python": f"print(open({SECRET!r}).read())\n",
    "cpp": f'#include <fstream>\n#include <iostream>\nint main(){{ std::ifstream f({c_string(SECRET)});'
           ' if (!f) return 1; std::cout << f.rdbuf(); }\n',
    "rust": f'fn main() {{ print!("{{}}", std::fs::read_to_string({c_string(SECRET)}).unwrap()); }}\n',
}


@pytest.mark.parametrize("language", sorted(READ_AT_COMPILE))
def test_root_only_file_at_compile_time_is_a_compile_error(language):
    require_toolchain(language)
    row = run(language, READ_AT_COMPILE[language])
    assert row["status"] == "compile_error", row
    assert "Permission denied" in row["stderr"] and "root:" not in row["stderr"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_root_only_file_at_run_time_fails(language):
    require_toolchain(language)
    row = run(language, READ_AT_RUN[language])
    assert row["status"] == "fail", row
    assert "root:" not in row["stderr"]


# --- writes to the host ---------------------------------------------------------------------
def write_everywhere(language: str, dirs: list[str], name: str) -> str:
    """Writes ``name`` into every dir; exits 0 if any host write got through."""
    if language == "python":
        return (f"import sys\nok = 0\nfor d in {dirs!r}:\n    try:\n"
                f"        open(d + '/{name}', 'w').write('x'); ok += d not in "
                "('/tmp', '/var/tmp', '/dev/shm')\n    except OSError as e:\n"
                "        print('refused', d, e.strerror, file=sys.stderr)\nsys.exit(0 if ok else 1)\n")
    arr = ", ".join(c_string(d) for d in dirs)
    if language == "cpp":
        return ("#include <cstdio>\n#include <cstring>\n#include <string>\n"
                f"const char* dirs[] = {{{arr}}};\nint main(){{ int ok = 0;\n"
                " for (const char* d : dirs) { std::string p = std::string(d) + "
                f"\"/{name}\"; FILE* f = fopen(p.c_str(), \"w\");\n"
                "  if (f) { fputs(\"x\", f); fclose(f); ok += strcmp(d, \"/tmp\") &&"
                " strcmp(d, \"/var/tmp\") && strcmp(d, \"/dev/shm\"); }\n"
                "  else fprintf(stderr, \"refused %s\\n\", d); }\n return ok ? 0 : 1; }\n")
    return (f"fn main() {{ let dirs = [{arr}]; let mut ok = 0;\n"
            f" for d in dirs {{ match std::fs::write(format!(\"{{}}/{name}\", d), \"x\") {{\n"
            "  Ok(_) => { if !matches!(d, \"/tmp\" | \"/var/tmp\" | \"/dev/shm\") { ok += 1 } }\n"
            "  Err(e) => eprintln!(\"refused {} {}\", d, e) } }\n"
            " std::process::exit(if ok > 0 { 0 } else { 1 }); }\n")


@pytest.mark.parametrize("language", LANGUAGES)
def test_writes_to_every_world_writable_host_dir_are_refused(language):
    require_toolchain(language)
    dirs = list(world_writable_dirs())
    assert "/run/lock" in dirs or not Path("/run/lock").exists() \
        or not os.stat("/run/lock").st_mode & stat.S_IWOTH
    name = f"bt-pwned-{secrets.token_hex(4)}"
    row = run(language, write_everywhere(language, dirs, name))
    assert row["status"] == "fail", row
    leaked = [d for d in dirs if os.path.lexists(f"{d}/{name}")]
    assert leaked == []


# --- disk fill ------------------------------------------------------------------------------
DISK_FILL = {
    "python": "b = b'x' * (1 << 20)\nwith open('fill', 'wb') as f:\n"
              "    while True:\n        f.write(b); f.flush()\n",
    "cpp": "#include <cstdio>\nint main(){ static char b[1 << 20]; FILE* f = fopen(\"fill\", \"w\");"
           " while (fwrite(b, 1, sizeof b, f) == sizeof b && fflush(f) == 0) {}"
           " perror(\"write\"); return 1; }\n",
    "rust": "use std::io::Write;\nfn main() { let b = vec![1u8; 1 << 20];"
            " let mut f = std::fs::File::create(\"fill\").unwrap();"
            " loop { f.write_all(&b).unwrap(); } }\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_disk_fill_is_capped_and_reported_as_disk(language):
    require_toolchain(language)
    row = run(language, DISK_FILL[language], timeout=20)
    assert row["status"] == "disk", row


# --- processes ------------------------------------------------------------------------------
FORK_BOMB = {
    "python": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "cpp": "#include <unistd.h>\nint main(){ for(;;) fork(); }\n",
    "rust": "fn main() { loop { let _ = std::process::Command::new(\"/proc/self/exe\").spawn(); } }\n",
}
DAEMON = {  # a child that leaves the group (setsid) and would outlive the program: it
    # becomes `sleep 60.MARK`; the program prints "running" once it sees that command line
    # in /proc, and the test then looks for it on the host
    "python": "import os, time\nc = os.fork()\nif c == 0:\n    os.setsid()\n"
              "    os.execv('/bin/sleep', ['sleep', '60.MARK'])\ntime.sleep(0.3)\n"
              "if b'60.MARK' in open(f'/proc/{c}/cmdline', 'rb').read():\n"
              "    os.write(2, b'running\\n')\n",
    "cpp": "#include <unistd.h>\n#include <cstdio>\n#include <cstring>\n#include <string>\n"
           "int main(){ pid_t c = fork(); if (c == 0) { setsid();"
           " execl(\"/bin/sleep\", \"sleep\", \"60.MARK\", (char*)0); } usleep(300000);"
           " std::string p = \"/proc/\" + std::to_string(c) + \"/cmdline\"; char b[64] = {0};"
           " FILE* f = fopen(p.c_str(), \"r\"); if (f) { fread(b, 1, 63, f); fclose(f); }"
           " if (!strcmp(b + 6, \"60.MARK\")) fputs(\"running\\n\", stderr); return 0; }\n",
    "rust": "fn main() { let c = std::process::Command::new(\"/bin/sleep\").arg(\"60.MARK\")"
            ".spawn().unwrap(); std::thread::sleep(std::time::Duration::from_millis(300));"
            " let b = std::fs::read(format!(\"/proc/{}/cmdline\", c.id())).unwrap();"
            " if String::from_utf8_lossy(&b).contains(\"60.MARK\") { eprintln!(\"running\"); } }\n",
}


def _running_with(marker: str) -> list[int]:
    """Live (non-zombie) processes on the host whose command line holds ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(pid))
    return found


@pytest.mark.parametrize("language", LANGUAGES)
def test_fork_bomb_times_out_and_is_killed(language):
    require_toolchain(language)
    row = run(language, FORK_BOMB[language], timeout=3)
    assert row["status"] == "timeout", row


@pytest.mark.parametrize("language", LANGUAGES)
def test_daemon_does_not_outlive_the_program(language):
    require_toolchain(language)
    mark = str(secrets.randbelow(10**12))
    row = run(language, DAEMON[language].replace("MARK", mark), timeout=5)
    assert row["status"] == "pass", row  # the program itself ended normally
    assert row["stderr"].strip() == "running", row
    left = _running_with(f"60.{mark}")
    for pid in left:
        os.kill(pid, 9)
    assert left == []


# --- memory ---------------------------------------------------------------------------------
MALLOC_LOOP = {
    "python": "b = []\nwhile True:\n    b.append(bytearray(1 << 20))\n",
    # malloc returns NULL at RLIMIT_AS and memset(NULL) dies of SIGSEGV: still memory
    "cpp": "#include <cstdlib>\n#include <cstring>\nint main(){ for(;;) {"
           " char* p = (char*)malloc(1 << 20); memset(p, 1, 1 << 20); } }\n",
    "rust": "fn main() { let mut v: Vec<Vec<u8>> = Vec::new(); loop { v.push(vec![1u8; 1 << 20]); } }\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_malloc_loop_is_memory(language):
    require_toolchain(language)
    row = run(language, MALLOC_LOOP[language], timeout=20, memory_bytes=256 << 20)
    assert row["status"] == "memory", row


# --- network --------------------------------------------------------------------------------
def connect_to(language: str, port: int) -> str:
    if language == "python":
        return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
    if language == "cpp":
        return ("#include <sys/socket.h>\n#include <netinet/in.h>\n#include <arpa/inet.h>\n"
                "int main(){ int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{};"
                f" a.sin_family = AF_INET; a.sin_port = htons({port});"
                " inet_pton(AF_INET, \"127.0.0.1\", &a.sin_addr);"
                " return connect(s, (sockaddr*)&a, sizeof a) == 0 ? 0 : 1; }\n")
    return (f"fn main() {{ std::net::TcpStream::connect((\"127.0.0.1\", {port})).unwrap(); }}\n")


@pytest.mark.parametrize("language", LANGUAGES)
def test_loopback_connection_to_a_listener_fails(language):
    require_toolchain(language)
    with loopback_listener() as (port, accepted):
        row = run(language, connect_to(language, port))
        assert accepted() == []
    assert row["status"] == "fail", row


# --- issue 21: memory on both paths, compile-step writes, IPC between samples ---------------
MEMORY_BOMBS = {  # each touches what it allocates, in steps, until something stops it
    "go": ("go", "package main\nimport \"fmt\"\nvar keep [][]byte\nfunc main(){ for {"
                 " b := make([]byte, 1<<20); for i := range b { b[i] = 1 }; keep = append(keep, b)"
                 " }; fmt.Println(len(keep)) }\n"),
    "node-heap": ("javascript", "const a = []; while (true) { a.push(new Array(1e6).fill(1)); }\n"),
    "node-buffer": ("javascript", "const a = []; while (true) { a.push(Buffer.alloc(1 << 24, 1)); }\n"),
    # the compiler itself: g++ reads /dev/zero as a source file until it runs out
    "g++": ("cpp", "#include \"/dev/zero\"\nint main(){}\n"),
}


@pytest.mark.parametrize("name", sorted(MEMORY_BOMBS))
def test_memory_bombs_of_every_runtime_and_the_compiler_report_memory(name):
    """Go and node are not under RLIMIT_AS (they reserve large ranges); before issue 21
    they touched 3 GB against a 2 GiB limit without a cgroup and 'passed', and g++ grew
    until an outer cap killed it ('compile_error'). RLIMIT_DATA / the memory cgroup stop
    each, and the sandbox sees it (peak memory, the cgroup's OOM count)."""
    language, source = MEMORY_BOMBS[name]
    require_toolchain(language)
    row = run(language, source, timeout=30, memory_bytes=512 << 20)
    assert row["status"] == "memory", row


def test_ipc_objects_do_not_reach_the_next_sample():
    """A 0666 SysV segment left by one sample was reused by the next (samples could talk)
    and pinned host memory after the run: each run has its own IPC namespace."""
    key = 0x4243_0000 + secrets.randbelow(0xFFFF)
    make = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"s = libc.shmget({key}, 16 << 20, 0o1666)\n"
            "p = ctypes.c_void_p(libc.shmat(s, None, 0)) if s >= 0 else None\n"
            "libc.shmat.restype = ctypes.c_void_p\n"
            "raise SystemExit(0 if s >= 0 else 1)\n")
    assert run("python", make)["status"] == "pass"
    find = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"raise SystemExit(0 if libc.shmget({key}, 0, 0) >= 0 else 1)\n")
    assert run("python", find)["status"] == "fail"       # the next sample finds nothing
    assert str(key) not in Path("/proc/sysvipc/shm").read_text().split()
