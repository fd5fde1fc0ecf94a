"""Small helpers shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLAIN_LOAD = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = tok("Name three colors.", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
assert out.shape[1] > ids["input_ids"].shape[1], out.shape
print("GENERATED", out.shape[1] - ids["input_ids"].shape[1])
"""


def load_and_generate_plain(model_dir: str | Path) -> str:
    """Load an HF dir with plain transformers (no project code imported) in a fresh process, and generate."""
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(model_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd="/",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def can_bind_loopback() -> bool:
    """Whether this process may open a server socket on 127.0.0.1 (false in some sandboxes)."""
    import socket

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
        return True
    except OSError:
        return False


def needs_loopback():
    import pytest

    return pytest.mark.skipif(not can_bind_loopback(), reason="cannot bind 127.0.0.1")


def ray_held(grace_s: float = 30.0) -> list[str]:
    """What this process's Ray instance still holds: placement groups not removed, CPUs not free. Waits up to
    ``grace_s`` for killed actors to give their CPUs back (asynchronous); empty when clean."""
    import time

    import ray
    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + grace_s
    while True:
        held = [f"placement group {pid} ({info['state']})" for pid, info in placement_group_table().items()
                if info["state"] != "REMOVED"]
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        if free + 1e-6 < total:
            held.append(f"{total - free:g} of {total:g} CPUs still reserved")
        if not held or time.monotonic() >= deadline:
            return held
        time.sleep(0.5)
