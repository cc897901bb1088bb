"""CleanRL's own scripts as the benchmarks' reference: taken from the cleanrl 1.2.0 wheel on the
package index, with only the edits gymnasium 1.x and this environment need, each applied
exactly once and printed by the benchmark that uses it.

The wheel's metadata says Python < 3.11, so pip fetches it for 3.10 without installing it:
    pip download cleanrl==1.2.0 --no-deps --python-version 3.10 --only-binary=:all:
(into benchmarks/.cleanrl/, once; a package index, local or not, must answer the first time).
The scripts themselves run on 3.11 under this project's environment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

WHEEL = "cleanrl==1.2.0"
CACHE = Path(__file__).resolve().parent / ".cleanrl"

# (text in the wheel's file, its replacement, why)
PPO_CONTINUOUS_EDITS = [
    (
        "from distutils.util import strtobool\n",
        "def strtobool(value):\n    return value.lower() in ('y', 'yes', 't', 'true', 'on', '1')\n",
        "distutils' strtobool defined in place (distutils is gone from Python 3.12)",
    ),
    (
        "from torch.utils.tensorboard import SummaryWriter\n",
        "class SummaryWriter:\n"
        "    def __init__(self, *args, **kwargs): pass\n"
        "    def add_scalar(self, *args, **kwargs): pass\n"
        "    def add_text(self, *args, **kwargs): pass\n"
        "    def close(self): pass\n",
        "TensorBoard's writer replaced by one that writes nothing (tensorboard is not installed; "
        "the benchmark reads the script's prints)",
    ),
    (
        "gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10))",
        "gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), "
        "env.observation_space)",
        "gymnasium 1.x's TransformObservation takes the observation space",
    ),
    (
        "[make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)]\n    )",
        "[make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)],\n"
        "        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,\n    )",
        "same-step autoreset, the semantics the script was written for (gymnasium 1.x's default "
        "inserts a reset transition after every episode end)",
    ),
    (
        "            for info in infos[\"final_info\"]:\n"
        "                # Skip the envs that are not done\n"
        "                if info is None:\n"
        "                    continue\n"
        "                print(f\"global_step={global_step}, episodic_return={info['episode']['r']}\")\n"
        "                writer.add_scalar(\"charts/episodic_return\", info[\"episode\"][\"r\"], global_step)\n"
        "                writer.add_scalar(\"charts/episodic_length\", info[\"episode\"][\"l\"], global_step)\n",
        "            final = infos[\"final_info\"]\n"
        "            for i in final[\"_episode\"].nonzero()[0]:\n"
        "                print(f\"global_step={global_step}, episodic_return={final['episode']['r'][i]}\")\n",
        "gymnasium 1.x gives the ended episodes' infos as arrays with a mask, not a list",
    ),
]  # fmt: skip


def wheel_file() -> Path:
    """The cleanrl wheel in CACHE, downloaded the first time."""
    found = sorted(CACHE.glob("cleanrl-1.2.0-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(exist_ok=True)
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--python-version", "3.10",
         "--only-binary=:all:", "--dest", str(CACHE), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    found = sorted(CACHE.glob("cleanrl-1.2.0-*.whl"))
    if fetched.returncode != 0 or not found:
        sys.exit(f"error: could not download {WHEEL} (a package index is needed once): "
                 f"{fetched.stderr.strip().splitlines()[-1:] or fetched.stdout[-200:]}")  # fmt: skip
    return found[0]


def apply_edits(text: str, edits: list[tuple[str, str, str]], what: str) -> str:
    """`text` with each (old, new, why) edit applied; one error line when an edit does not
    find its `old` exactly once (the other project's file has changed)."""
    for old, new, why in edits:
        if text.count(old) != 1:
            sys.exit(f"error: {what} differs from what the edit expects ({why})")
        text = text.replace(old, new)
    return text


def prepared_script(name: str, edits: list[tuple[str, str, str]], into: Path) -> Path:
    """cleanrl/<name> from the wheel, written into `into` with `edits` applied."""
    with zipfile.ZipFile(wheel_file()) as wheel:
        text = wheel.read(f"cleanrl/{name}").decode()
    script = into / name
    script.write_text(apply_edits(text, edits, f"{WHEEL}'s {name}"))
    return script


SPS = re.compile(r"^SPS: (\d+)")
EPISODE = re.compile(r"^global_step=(\d+), episodic_return=\[?([-0-9.e]+)")


def run_script(script: Path, argv: list[str], env: dict[str, str]) -> dict:
    """Run a CleanRL script; its last printed SPS (env steps / seconds since its training loop
    started), its episodes [(global_step, return)] and the whole call's wall seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), *argv], cwd=script.parent, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: CleanRL's {script.name} failed:\n{result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    sps = [int(m.group(1)) for m in map(SPS.match, lines) if m]
    episodes = [(int(m.group(1)), float(m.group(2))) for m in map(EPISODE.match, lines) if m]
    if not sps:
        sys.exit(f"error: CleanRL's {script.name} printed no SPS line")
    return {"sps": float(sps[-1]), "wall_s": wall, "episodes": episodes}
