"""The GPU check's install-and-run path, proven here on the CPU with the network blocked.

A Python holding only what the GPU machine's has (torch, numpy, scipy, matplotlib, pytest,
imageio, pandas, pip) stands in for it, linked from this environment; benchmarks/gpu_wheels.py
prepares the wheel folder for this machine's Python, and benchmarks/gpu_check.sh --dry-run installs from that folder alone and
runs every part at tiny sizes inside `unshare -rn` (a network namespace with no interface up:
nothing can be reached, not even the package index). What would break a GPU window (a missing
wheel, a part that does not run, a table that is not written) breaks this test first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_check import BUDGETS  # noqa: E402
from gpu_wheels import installed_closure  # noqa: E402

THE_GPU_MACHINES_PACKAGES = ["torch", "numpy", "scipy", "matplotlib", "pytest", "imageio", "pandas"]


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def stand_in_machine(base: Path) -> Path:
    """A venv holding only what the GPU machine's Python has (THE_GPU_MACHINES_PACKAGES, what
    they need, and pip), each package's top-level files linked from this environment's
    site-packages: the same files an install would unpack, without unpacking torch again or
    reaching a package index. Returns its python."""
    interpreter = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(base)], check=True)
    python = base / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    needed = installed_closure([*THE_GPU_MACHINES_PACKAGES, "pip"], markers={"extra": ""})
    for dist in needed.values():
        origin = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (origin / top).exists() and not (site / top).exists():
                (site / top).symlink_to(origin / top)
    return python


@pytest.mark.slow
@pytest.mark.skipif(not unshare_works(), reason="needs unshare -rn to block the network")
def test_the_gpu_check_installs_offline_from_its_folder_and_runs_every_part(tmp_path):
    python = stand_in_machine(tmp_path / "machine")
    # A PYTHONPATH of the caller's (the GPU machine's suite runs under one) would let the
    # stand-in see packages the GPU machine lacks.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    lacks = subprocess.run([python, "-c", "import gymnasium"], capture_output=True, env=env)
    assert lacks.returncode != 0, "the stand-in sees this environment's packages"

    wheels = tmp_path / "wheels"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    prepared = subprocess.run(
        [sys.executable, REPO / "benchmarks" / "gpu_wheels.py", "--python-version", version,
         "--out", wheels],
        capture_output=True, text=True,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert (wheels / "requirements.txt").exists()

    out = tmp_path / "out"
    checked = subprocess.run(
        ["unshare", "-rn", "env", f"WHEELS={wheels}", f"PYTHON={python}",
         REPO / "benchmarks" / "gpu_check.sh", out, "--dry-run"],
        cwd=REPO, capture_output=True, text=True, env=env,
        timeout=sum(dry for _, dry in BUDGETS.values()) + 300,  # each part's limit, and the install
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for part in (
        "gpu-tests",
        "rl-throughput",
        "supervised",
        "hessian",
        "ppo-1m",
        "batched-seeds",
        "seeds-runs",
        "suite",
    ):
        assert f"| {part} | ok |" in summary, summary
        assert (out / f"{part}.md").read_text().count("|") > 8, part
    # The packages came from the folder, not from the stand-in's own site-packages.
    assert (out / "site" / "gymnasium").is_dir() and (out / "site" / "wandb").is_dir()
    assert "passed" in (out / "gpu-tests.md").read_text()
    assert "| 1 | batched |" in (out / "batched-seeds.md").read_text()  # ER's step, batched


def test_an_unknown_part_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, REPO / "benchmarks" / "gpu_check.py", "run", "--out", tmp_path,
         "--parts", "gpu-tests,nope"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: unknown part(s) ['nope']; the parts are {list(BUDGETS)}"
    ]
    assert not (tmp_path / "summary.md").exists()
