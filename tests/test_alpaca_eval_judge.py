"""The official AlpacaEval judge through the real alpaca_eval library, against a local OpenAI-compatible server.

A small fake of the chat-completions endpoint on 127.0.0.1 answers each judge request the way GPT-4-turbo is asked
to (one token, ``m`` or ``M``, with top logprobs), from a rule the test can compute on its own: the longer output
wins with probability sigmoid(length difference / 500). The evaluation runs in a subprocess (alpaca_eval reads its
endpoint and key from the environment at import) on the tiny-hub world, so the annotations and the win rate come
back through alpaca_eval's prompt template, order randomisation and logprob parser, and the run store. The API key
must reach the server's Authorization header and nothing else: no log line, stored file or cache.
"""

import json
import math
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from simplemix import tinyhub


KEY = "sk-fake-judge-key-0123456789abcdef"
OUTPUT = re.compile(r'"model_identifier": "(m|M)",\s*"output": """(.*?)"""\n', re.S)


def p_first(first: str, second: str) -> float:
    """The fake judge's probability that the output shown as ``m`` is the better one."""
    return 1.0 / (1.0 + math.exp(-(len(first) - len(second)) / 500.0))


class FakeOpenAI(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = "".join(m["content"] for m in body["messages"])
        outputs = dict(OUTPUT.findall(prompt))
        p = p_first(outputs["m"], outputs["M"])
        top = [{"token": "m", "bytes": [109], "logprob": math.log(p)},
               {"token": "M", "bytes": [77], "logprob": math.log1p(-p)}]
        answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "length",
                               "message": {"role": "assistant", "content": "m" if p >= 0.5 else "M"},
                               "logprobs": {"content": [{**max(top, key=lambda t: t["logprob"]), "top_logprobs": top}]}}],
                  "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1,
                            "total_tokens": len(prompt) // 4 + 1}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test's output quiet
        pass


SCRIPT = """
import json, sys
from simplemix import config, experiments, world
prof = config.load_profile("tiny-hub", {"evaluation.judge": "alpaca_eval_gpt4_turbo", "evaluation.num_prompts": 12})
w = world.resolve(prof, sys.argv[1])
result = experiments.run_method(w, w.cell(), None, "SFT")
print(json.dumps({"win_rate": result.win_rate, "path": str(result.evaluation.path)}))
"""


@pytest.fixture
def server():
    FakeOpenAI.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_annotations_and_win_rate_come_back_through_alpaca_eval_and_the_key_goes_nowhere(server, tmp_path):
    import os

    import alpaca_eval  # the eval extra: make install installs it

    from simplemix import evaluation

    tinyhub.build()
    package = Path(alpaca_eval.__file__).parent
    before = {p: p.stat().st_mtime for p in package.rglob("*.json")}
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server, "OPENAI_API_BASE": server,
           "OPENAI_MAX_CONCURRENCY": "2", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    # every request went to the chat endpoint with the key, once per prompt
    assert len(FakeOpenAI.seen) == 12 and {s["path"] for s in FakeOpenAI.seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in FakeOpenAI.seen} == {f"Bearer {KEY}"}
    assert all(s["body"]["max_tokens"] == 1 and s["body"]["logprobs"] for s in FakeOpenAI.seen)

    # the annotations are the fake judge's verdicts mapped back to (baseline, model), whatever order it saw them in
    table = evaluation.load_annotations(Path(got["path"]) / "annotations.json")
    assert len(table) == 12
    expected = [1.0 + p_first(model, base) for base, model in zip(table["output_1"], table["output_2"])]
    assert table["preference"].tolist() == pytest.approx(expected, abs=1e-6)
    assert got["win_rate"] == pytest.approx(100.0 * (sum(expected) / len(expected) - 1.0), abs=1e-4)

    # the key is in no log line, no stored file, and alpaca_eval wrote no cache into its package
    assert KEY not in done.stdout and KEY not in done.stderr
    stored = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in stored)
    assert [p for p in stored if KEY.encode() in p.read_bytes()] == []
    after = {p: p.stat().st_mtime for p in package.rglob("*.json")}
    assert after == before
