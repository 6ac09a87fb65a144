"""`ember spot serve` with a client streaming over HTTP while an instance is preempted: run in a
loopback-only network namespace; prints JSON (per stream: the text deltas received, joined,
and how many events) on the last line."""

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n"]


def start_server(args: list[str]):
    """``ember spot serve ARGS`` on a free port; returns (process, url, its output lines so far
    and to come)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "ember", "spot", "serve", "--port", "0", "--no-access-log", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url, lines = None, []
    while url is None:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("server exited:\n" + "".join(lines[-50:]))
        lines.append(line)
        if m := re.search(r"listening on (http://\S+)", line):
            url = m.group(1)
    threading.Thread(target=lambda: [lines.append(x) for x in server.stdout], daemon=True).start()
    return server, url, lines


def stream_all(url: str, max_tokens: int, deltas: list[list[str]]) -> None:
    """Stream a greedy completion of each prompt at once; ``deltas[i]`` fills as they come."""

    def stream(i: int) -> None:
        body = {"model": "ember-tiny", "prompt": PROMPTS[i], "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}  # fmt: skip
        for _ in range(600):  # the first replicas may still be loading
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
                if response.status_code == 503:
                    time.sleep(0.2)
                    continue
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        deltas[i].append(json.loads(line[6:])["choices"][0]["text"])
                break

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(max_tokens: int) -> None:
    trace = Path(tempfile.mkdtemp()) / "trace.csv"
    # two instances; node1 is removed 12 s after the fleet serves, its notice comes 10 s before
    trace.write_text("0,add,node0\n0,add,node1\n12000,remove,node1\n")
    server, url, lines = start_server(
        ["--instances", "2", "--trace", str(trace), "--speedup", "1", "--grace-period", "10"]
    )
    deltas = [[] for _ in PROMPTS]
    stream_all(url, max_tokens, deltas)
    server.terminate()
    server.wait(60)
    decisions = [x.strip() for x in lines if "[spot]" in x]
    results = [{"text": "".join(d), "events": len(d)} for d in deltas]
    print(json.dumps({"streams": results, "decisions": decisions}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
