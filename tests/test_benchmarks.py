"""The prepared GPU check runs its own code at toy shapes on a CPU: every part reports, and says what it lacks."""

import json
import subprocess
import sys

from simplemix import resources


def test_gpu_check_runs_at_toy_shapes_and_reports_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(resources.CHECKOUT / "benchmarks" / "gpu_check.py"), "--tiny",
                           "--out", str(out), "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"backends", "qlora", "mfu"}
    assert report["backends"]["transformers"]["samples_per_s"] > 0
    assert "vllm" in report["backends"]  # measured on a GPU box, "not installed" here
    assert report["qlora"]["rc"] == 0 and any("tokens/s" in line for line in report["qlora"]["report"])
    mfu = report["mfu"]
    import torch

    assert mfu["tokens_per_s"] > 0 and mfu["parameters"] > 0
    if not torch.cuda.is_available():
        assert mfu["mfu"] is None  # MFU needs a GPU's peak
