"""Run inside a network namespace that has only a loopback (``unshare -rn``; see
test_corpus_pipeline): start a local Ray of 2 worker CPUs on 127.0.0.1 through the
datatrove build's own ``executor: ray`` path and build a corpus with it.

    python ray_loopback_build.py OUT CONFIG_JSON SOURCE...
"""

import json
import socket
import subprocess
import sys

if __name__ == "__main__":
    # nothing but the loopback exists here: Ray cannot listen on, or send to, another address
    assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    from babeltower.corpus.config import BuildConfig, EngineConfig
    from babeltower.corpus.build import build_corpus

    out, cfg, sources = sys.argv[1], BuildConfig.model_validate_json(sys.argv[2]), sys.argv[3:]
    timings: dict = {}
    build_corpus(sources, out, cfg, EngineConfig.model_validate(
        {"executor": "ray", "tasks": 2, "ray": {"mem_per_cpu_gb": 0.25}}), progress=True,
        timings=timings)
    print(json.dumps(timings))
