"""run_program compiles and runs complete programs per language inside the sandbox."""

import errno
import os

import pytest

from babeltower.errors import BabelError
from babeltower.sandbox.execute import SUPPORTED, java_class_names, run_program, sample_programs
from sandbox_fixtures import loopback_listener, require_toolchain

PROGRAMS = sample_programs()


@pytest.mark.parametrize("language", SUPPORTED)
def test_a_missing_toolchain_is_reported_with_its_package(language, monkeypatch):
    """What a machine without the toolchain gets: the status and the apt package, not a
    crash (simulated: an empty PATH and no fallback directories)."""
    from babeltower.sandbox import execute

    monkeypatch.setattr(execute, "find_tool", lambda name: None)
    r = run_program(language, PROGRAMS[language][0], timeout=5)
    assert r.status == "missing_toolchain" and "apt package" in r.stderr


@pytest.mark.parametrize("language", SUPPORTED)
def test_pass_and_fail_per_language(language):
    require_toolchain(language)
    good, bad = PROGRAMS[language]
    r = run_program(language, good, timeout=20)
    assert r.status == "pass", (r.status, r.stderr[-500:])
    assert r.stdout.strip() == "ok"
    assert r.language == language
    r = run_program(language, bad, timeout=20)
    assert r.status == "fail", (r.status, r.stderr[-500:])


@pytest.mark.parametrize("language,source", [
    ("cpp", "int main( { return 0; }"),
    ("rust", "fn main() { let x: i32 = \"no\"; }"),
    ("java", "class Problem { public static void main(String[] a) { int x = \"no\"; } }"),
    ("go", "package main\nfunc main() { var x int = \"no\" }\n"),
])
def test_compile_errors(language, source):
    require_toolchain(language)
    r = run_program(language, source, timeout=20)
    assert r.status == "compile_error", (r.status, r.stderr[-300:])
    assert r.compile_time is not None and r.stderr


def test_compiled_program_runs_unprivileged_and_offline():
    require_toolchain("cpp")
    with loopback_listener() as (port, accepted):
        src = ("#include <unistd.h>\n#include <cstdio>\n#include <sys/socket.h>\n"
               "#include <netinet/in.h>\n#include <arpa/inet.h>\n#include <cerrno>\n"
               "int main(){ int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{};"
               f" a.sin_family = AF_INET; a.sin_port = htons({port});"
               " inet_pton(AF_INET, \"127.0.0.1\", &a.sin_addr);"
               " int rc = connect(s, (sockaddr*)&a, sizeof a);"
               " printf(\"%d %d %d\\n\", (int)getuid(), rc, errno); }\n")
        r = run_program("cpp", src, timeout=10)
        assert accepted() == []
    assert r.status == "pass", r.stderr
    uid, rc, err = map(int, r.stdout.split())
    assert rc == -1 and err == errno.ENETUNREACH
    if os.geteuid() == 0:
        assert uid != 0


def test_timeout_in_a_compiled_language():
    require_toolchain("cpp")
    r = run_program("cpp", "int main(){ volatile int x = 0; for(;;) x++; }", timeout=1.5)
    assert r.status == "timeout"


def test_java_class_names():
    assert java_class_names("import x;\nclass Problem {\n public static void main(String[] a){} }") \
        == ("Main", "Problem")
    assert java_class_names("public class Foo { public static void main(String[] a) {} }") \
        == ("Foo", "Foo")
    src = "class Helper {}\npublic class Main { public static void main(String[] a){} }"
    assert java_class_names(src) == ("Main", "Main")


def test_unknown_and_unsupported_language():
    with pytest.raises(BabelError, match="unknown language"):
        run_program("cobol", "x")
    with pytest.raises(BabelError, match="no runner"):
        run_program("ruby", "puts 1")


GO_TEST_SHAPE = '''package add_test

import (
    "testing"
    "fmt"
)

func add(x int, y int) int {
    return x + y
}

func TestAdd(t *testing.T) {
  candidate := add
  type test struct { actual interface{}; expected interface{} }
  tests := []test{ { actual: candidate(0, 1), expected: 1 }, { actual: candidate(2, 3), expected: EXPECTED } }
  for i, tc := range tests {
    t.Run(fmt.Sprintf("test num %d", i), func(t *testing.T) {
      if fmt.Sprintf("%v", tc.actual) != fmt.Sprintf("%v", tc.expected) { t.Errorf("bad") }
    })
  }
}
'''


def test_go_multipl_e_test_file_shape():
    """MultiPL-E's Go programs are _test files run with `go test` (no func main)."""
    require_toolchain("go")
    ok = run_program("go", GO_TEST_SHAPE.replace("EXPECTED", "5"), timeout=20)
    assert ok.status == "pass", ok.stderr[-300:]
    bad = run_program("go", GO_TEST_SHAPE.replace("EXPECTED", "6"), timeout=20)
    assert bad.status == "fail" and "FAIL: TestAdd" in bad.stdout


MEMORY_HOGS = {  # each grows in steps and touches what it allocates
    "python": "b = []\nwhile True: b.append(bytearray(1 << 20))",
    "cpp": "#include <vector>\nint main(){ std::vector<std::vector<char>> v;"
           " for (;;) v.emplace_back(1 << 20, 1); }",
    "java": "import java.util.*;\nclass Problem { public static void main(String[] a) {"
            " List<long[]> l = new ArrayList<>(); while (true) l.add(new long[1 << 17]); } }",
    "rust": "fn main(){ let mut v: Vec<Vec<u8>> = Vec::new(); loop { v.push(vec![1u8; 1 << 20]); } }",
    "go": "package main\nimport \"fmt\"\nvar keep [][]byte\nfunc main(){ for {"
          " b := make([]byte, 1<<20); for i := range b { b[i] = 1 }; keep = append(keep, b) };"
          " fmt.Println(len(keep)) }",
    "javascript": "const a = []; while (true) { a.push(new Array(1e6).fill(1)); }",
    "php": "<?php $a = []; while (true) { $a[] = str_repeat('x', 1 << 20); }",
}


@pytest.mark.parametrize("language", sorted(MEMORY_HOGS))
def test_memory_exhaustion_is_reported_per_language(language):
    """Each runtime's way of running out (MemoryError, bad_alloc, OutOfMemoryError, Rust's
    abort, Go's fatal error, V8's heap limit, PHP's memory_limit, the cgroup's OOM kill) is
    'memory' - judged from the exit and the peak memory the sandbox saw, not the text."""
    require_toolchain(language)
    r = run_program(language, MEMORY_HOGS[language], timeout=20, memory_bytes=512 << 20)
    assert r.status == "memory", (r.status, r.exit_code, r.signal, r.stderr[-300:])
