"""Run inside a network namespace that has only a loopback (``unshare -rn``; see
test_corpus_pack_pipeline): start a local Ray of 2 worker CPUs on 127.0.0.1 through the
pack's own ``executor: ray`` path and pack a corpus with it.

    python ray_loopback_pack.py CORPUS TOKENIZER OUT
"""

import socket
import subprocess
import sys

if __name__ == "__main__":
    # nothing but the loopback exists here: Ray cannot listen on, or send to, another address
    assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    from babeltower.corpus.config import EngineConfig
    from babeltower.corpus.pack import pack_corpus

    corpus, tokenizer, out = sys.argv[1:4]
    pack_corpus(corpus, tokenizer, out, progress=True, engine=EngineConfig.model_validate(
        {"executor": "ray", "tasks": 2, "ray": {"mem_per_cpu_gb": 0.25}}))
