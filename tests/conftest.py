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
