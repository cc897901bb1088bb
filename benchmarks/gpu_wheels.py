"""Download the wheels the GPU machine lacks into one folder, for the GPU check to install offline.

The GPU machine has no network. Its Python (3.12) comes with torch, triton, numpy, scipy,
matplotlib, pytest, imageio and pandas (and their dependencies); everything else this project
imports must travel with the working tree, 64 MiB in all. This script takes the dependency
closure of the project's runtime requirements as installed in this environment (so the
versions are the ones the test suite ran with), leaves out what the GPU machine has, and
mujoco-studio (MuJoCo's GUI: headless rendering needs only mujoco-core), and downloads each
remaining package's wheel for the target Python and platform with --no-deps, pinned, together
with a requirements.txt the check installs from.

    make gpu-wheels                                            # .gpu-wheels/ for the GPU machine
    python benchmarks/gpu_wheels.py --python-version 3.11 --out /tmp/w   # for a dry run here

envpool (740 MB) and imageio-ffmpeg (70 MB) cannot travel: the GPU rows use the gymnasium
backend and no clips.

The GPU machine also lacks the GL loader libraries (libEGL and friends: its driver brings only
the vendor half), and with MUJOCO_GL=egl `import mujoco` then fails. With --gl-debs (on in
`make gpu-wheels`) Debian's loader packages are fetched with `apt-get download` into OUT/gl/,
~0.4 MiB, and the check unpacks them there before anything imports mujoco.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import tyro
from packaging.requirements import Requirement

ROOTS = ("gymnasium", "mujoco", "tyro", "wandb", "tqdm", "mlxtend", "scikit-learn")
"""the project's runtime requirements (pyproject.toml) that the GPU machine does not have"""
ON_THE_GPU_MACHINE = {
    "torch", "triton", "numpy", "scipy", "matplotlib", "pytest", "imageio", "pandas",
    # and what those depend on
    "pillow", "kiwisolver", "fonttools", "cycler", "contourpy", "packaging", "python-dateutil",
    "pyparsing", "pytz", "tzdata", "iniconfig", "pluggy", "filelock", "sympy", "networkx",
    "jinja2", "fsspec", "typing-extensions", "mpmath", "markupsafe", "six", "setuptools",
}  # fmt: skip
LEFT_OUT = {"mujoco-studio"}  # MuJoCo's GUI and web viewer: `import mujoco` does not need it


@dataclass
class Args:
    out: Path = Path(".gpu-wheels")
    """the folder to fill (emptied first)"""
    python_version: str = "3.12"
    """the target Python (the GPU machine's)"""
    platforms: tuple[str, ...] = (
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    )
    """platform tags pip may pick wheels for"""
    max_mib: float = 58.0
    """refuse a folder larger than this (the working tree and it travel in 64 MiB)"""
    gl_debs: bool = False
    """also fetch the GL loader packages the GPU machine lacks into OUT/gl (needs apt-get and
    a Debian/Ubuntu package index)"""


GL_LOADERS = ("libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2")
"""Debian's GL vendor-neutral loaders: with the driver's own libEGL_nvidia, EGL rendering works"""


def download_gl_debs(folder: Path) -> None:
    """The amd64 GL loader packages into `folder`, from a package list of their own (in a
    temporary folder) so the host's apt state is neither needed nor changed."""
    if shutil.which("apt-get") is None:
        raise SystemExit("error: --gl-debs needs apt-get (a Debian or Ubuntu machine)")
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as lists:
        (Path(lists) / "partial").mkdir()
        options = ["-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
                   "-o", f"Dir::State::Lists={lists}"]  # fmt: skip
        for command in (["update"], ["download", *GL_LOADERS]):
            result = subprocess.run(["apt-get", *options, *command], cwd=folder,
                                    capture_output=True, text=True)  # fmt: skip
            if result.returncode != 0:
                tail = " ".join(result.stderr.strip().splitlines()[-2:])
                raise SystemExit(f"error: apt-get {command[0]} failed: {tail}")
    print(f"GL loaders: {len(list(folder.glob('*.deb')))} packages into {folder}")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(
    roots: list[str], markers: dict[str, str], skip: Callable[[str], bool] = lambda name: False
) -> dict[str, metadata.Distribution]:
    """{canonical name: installed distribution} of everything `roots` need, theirs included;
    requirement markers are evaluated with `markers`, and a name `skip` accepts is left out
    (with what only it needs). tests/test_gpu_check.py builds its stand-in machine from it."""
    found: dict[str, metadata.Distribution] = {}
    stack = list(roots)
    while stack:
        name = canonical(stack.pop())
        if name in found or skip(name):
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(markers):
                stack.append(requirement.name)
    return found


def closure(python_version: str) -> dict[str, str]:
    """{package: installed version} of everything ROOTS need, for the target Python."""
    markers = {"python_version": python_version, "python_full_version": f"{python_version}.0",
               "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
               "implementation_name": "cpython", "os_name": "posix", "extra": ""}  # fmt: skip
    found = installed_closure(
        list(ROOTS), markers,
        skip=lambda name: name in ON_THE_GPU_MACHINE or name in LEFT_OUT or name.startswith("nvidia-"),
    )  # fmt: skip
    return {name: dist.version for name, dist in sorted(found.items())}


def main(args: Args) -> None:
    packages = closure(args.python_version)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    pins = [f"{name}=={version}" for name, version in packages.items()]
    platforms = [flag for platform in args.platforms for flag in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--implementation", "cp", "--python-version",
               args.python_version, *platforms, "--dest", str(args.out), *pins]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        raise SystemExit(f"error: pip download failed: {' '.join(lines[-3:])}")
    (args.out / "requirements.txt").write_text("\n".join(pins) + "\n")
    wheels = sorted(args.out.glob("*.whl"), key=lambda p: -p.stat().st_size)
    total = sum(p.stat().st_size for p in wheels) / 2**20
    print("| wheel | MiB |\n|---|---|")
    for wheel in wheels[:8]:
        print(f"| {wheel.name} | {wheel.stat().st_size / 2**20:.1f} |")
    print(f"| ... {len(wheels)} wheels in all for Python {args.python_version} | {total:.1f} |")
    if len(wheels) != len(pins):
        raise SystemExit(f"error: {len(pins)} packages but {len(wheels)} wheels in {args.out}")
    if total > args.max_mib:
        raise SystemExit(f"error: {args.out} holds {total:.1f} MiB, over --max-mib {args.max_mib}")
    if args.gl_debs:
        download_gl_debs(args.out / "gl")


if __name__ == "__main__":
    main(tyro.cli(Args))
