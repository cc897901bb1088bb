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


def pytest_collection_modifyitems(config, items):
    """The slow tests first: pytest-xdist hands tests to its workers in order, so a slow test
    collected late runs at the end with the other worker idle (make test's wall time)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _private_download_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty data set download cache, whatever the developer has cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), started once for the tests that use it and stopped
    after them; yields the environment (RAY_ADDRESS and the authentication mode) that reaches
    it. It is this test session's own: its own free port and temporary directory, so that a
    cluster left running on the machine (or the last one's address in /tmp/ray) is never
    joined or collided with, and it is stopped by stopping its own process group, not with
    `ray stop`, which would stop every Ray cluster on the machine. The authentication mode is
    set, not left to whether ~/.ray/auth_token exists (Ray 2.60 turns token authentication on
    for `ray start` when it does, and a driver given an address never does)."""
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "the ray extra is installed by make test"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Short, under /tmp: Ray's unix sockets live in it and their paths have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="ray-test-", dir="/tmp")
    reach = {"RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **reach, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([ray, "start", "--head", "--block", "--port", str(port),
                             "--temp-dir", temp_dir, "--num-cpus", "2", "--include-dashboard",
                             "false", "--disable-usage-stats"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        printed = []
        for line in head.stdout:  # --block prints this once the cluster is up
            printed.append(line)
            if "block forever" in line:
                break
        assert head.poll() is None, "".join(printed)[-2000:]
        # The head writes the address it listens at (the node's IP and our port) here.
        address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
        assert address.endswith(f":{port}"), address
        yield {**reach, "RAY_ADDRESS": address}
    finally:
        # SIGKILL, not SIGTERM: on SIGTERM a Ray head drains its node for up to 30 s before it
        # stops (measured: 30 s of every test session). This cluster is the session's own, with
        # its own temporary directory, so there is nothing to keep; its processes leave no
        # shared memory behind (checked in /dev/shm).
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
