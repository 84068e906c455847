"""Hostile programs through pass@k's own execution path: each contained, each its status.

Every program here is a "completion" run by ``passk.execute_samples`` (the path generated
code takes: ``run_program`` -> compile as the sandbox uid -> run), in Python, C++ and Rust.
Each program *succeeds* (exit 0) only if its attack worked, so a ``pass`` would be an
escape; the right status per attack is listed with it. The host is checked afterwards as
well (no file left, no process left, no connection accepted). Root: the suite needs the
per-sandbox uid and cgroups (CI runs it as root; the unprivileged path is covered by
``test_eval_sandbox.py`` run as a user).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from babeltower.evaluate.passk import Problem, execute_samples
from sandbox_fixtures import loopback_listener, require_toolchain, world_writable_dirs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (own uid, cgroups)")]
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
DAEMON = {  # a child that leaves the group (setsid) and would outlive the program
    "python": "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n"
              "    print('daemon', os.getpid(), file=sys.stderr, flush=True)\n    time.sleep(60)\n",
    "cpp": "#include <unistd.h>\n#include <cstdio>\nint main(){ if (fork() == 0) { setsid();"
           " fprintf(stderr, \"daemon %d\\n\", (int)getpid()); sleep(60); } return 0; }\n",
    "rust": "fn main() { if std::env::args().count() > 1 { eprintln!(\"daemon {}\", std::process::id());"
            " std::thread::sleep(std::time::Duration::from_secs(60)); return; }"
            " std::process::Command::new(\"/proc/self/exe\").arg(\"d\").spawn().unwrap();"
            " std::thread::sleep(std::time::Duration::from_millis(300)); }\n",
}


def _alive_as_sandbox_user(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return not fields["State"].strip().startswith("Z") and int(fields["Uid"].split()[0]) >= 1 << 20


@pytest.mark.parametrize("language", LANGUAGES)
def test_fork_bomb_times_out_and_is_killed(language):
    require_toolchain(language)
    row = run(language, FORK_BOMB[language], timeout=3)
    assert row["status"] == "timeout", row


@pytest.mark.parametrize("language", LANGUAGES)
def test_daemon_does_not_outlive_the_program(language):
    require_toolchain(language)
    row = run(language, DAEMON[language], timeout=5)
    assert row["status"] == "pass", row  # the program itself ended normally
    pids = [int(w.split()[1]) for w in row["stderr"].splitlines() if w.startswith("daemon ")]
    assert pids, row  # the daemon did start
    assert not any(_alive_as_sandbox_user(p) for p in pids)


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
