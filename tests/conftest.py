"""Shared test settings."""

import os
import sys

# As train.py does: offscreen EGL rendering on a headless Linux machine (MuJoCo picks its GL
# backend at import, so before any test imports it).
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# The tests use tiny networks, for which one thread is fastest, and a second thread only
# contends with other work on a 2-core CI machine (measured: an 800-parameter Hessian-vector
# product takes 0.8 ms on 1 thread and 8 ms on 2 under load).
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_download_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty data set download cache, whatever the developer has cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), started once for the tests that use it and stopped
    after them; yields the RAY_ADDRESS that reaches it."""
    import shutil
    import subprocess
    from pathlib import Path

    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "the ray extra is installed by make test"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--include-dashboard",
                              "false", "--disable-usage-stats"], env=env, capture_output=True,
                             text=True, timeout=180)  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield "auto"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=180)
