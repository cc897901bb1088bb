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

# (text in the wheel's file, its replacement, why): what both scripts need
PYTHON_3_11_EDITS = [
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
]  # fmt: skip

PPO_CONTINUOUS_EDITS = PYTHON_3_11_EDITS + [
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


# CleanRL 1.2.0's SAC was written for gym 0.23 and Stable-Baselines3's replay buffer: SB3 comes
# from its own wheel (sb3_path), the rest are these edits.
SAC_CONTINUOUS_EDITS = PYTHON_3_11_EDITS + [
    ("import gym\n", "import gymnasium as gym\n", "gymnasium 1.x in place of gym 0.23"),
    (
        "        env.seed(seed)\n",
        "",
        "gymnasium seeds an env at its reset (the vector reset below takes the seed)",
    ),
    (
        "    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed, 0, args.capture_video, run_name)])\n",
        "    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed, 0, args.capture_video, run_name)],\n"
        "                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)\n",
        "same-step autoreset, the semantics gym 0.23's vector env had",
    ),
    ("    obs = envs.reset()\n", "    obs, _ = envs.reset(seed=args.seed)\n",
     "gymnasium's reset returns (obs, info) and takes the seed"),
    (
        "        next_obs, rewards, dones, infos = envs.step(actions)\n",
        "        next_obs, rewards, terminations, truncations, infos = envs.step(actions)\n"
        "        dones = terminations | truncations\n",
        "gymnasium's step returns terminated and truncated apart (gym 0.23's done was either)",
    ),
    (
        "        for info in infos:\n"
        "            if \"episode\" in info.keys():\n"
        "                print(f\"global_step={global_step}, episodic_return={info['episode']['r']}\")\n"
        "                writer.add_scalar(\"charts/episodic_return\", info[\"episode\"][\"r\"], global_step)\n"
        "                writer.add_scalar(\"charts/episodic_length\", info[\"episode\"][\"l\"], global_step)\n"
        "                break\n",
        "        if \"final_info\" in infos:\n"
        "            final = infos[\"final_info\"]\n"
        "            for i in final[\"_episode\"].nonzero()[0]:\n"
        "                print(f\"global_step={global_step}, episodic_return={final['episode']['r'][i]}\")\n"
        "                break\n",
        "gymnasium 1.x gives the ended episodes' statistics as arrays with a mask, not a list",
    ),
    (
        "                real_next_obs[idx] = infos[idx][\"terminal_observation\"]\n"
        "        rb.add(obs, real_next_obs, actions, rewards, dones, infos)\n",
        "                real_next_obs[idx] = infos[\"final_obs\"][idx]\n"
        "        rb.add(obs, real_next_obs, actions, rewards, dones,\n"
        "               [{\"TimeLimit.truncated\": bool(t)} for t in truncations])\n",
        "the final observation is infos['final_obs'], and SB3's buffer learns of a time limit "
        "from a per-env info list (so a truncation is bootstrapped, as with gym 0.23's TimeLimit)",
    ),
    (
        "                print(\"SPS:\", int(global_step / (time.time() - start_time)))\n",
        "                print(\"SPS:\", int(global_step / (time.time() - start_time)),\n"
        "                      f\"at {global_step} {time.time() - start_time:.4f}\")\n",
        "the SPS line also says its step and seconds (the benchmark measures the rate after "
        "learning starts)",
    ),
]  # fmt: skip
SB3 = "stable-baselines3==2.9.2"


def downloaded(requirement: str, pattern: str) -> Path:
    """A wheel in CACHE, downloaded (without its dependencies, for Python 3.10) the first time."""
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[0]
    CACHE.mkdir(exist_ok=True)
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--python-version", "3.10",
         "--only-binary=:all:", "--dest", str(CACHE), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    found = sorted(CACHE.glob(pattern))
    if fetched.returncode != 0 or not found:
        sys.exit(f"error: could not download {requirement} (a package index is needed once): "
                 f"{fetched.stderr.strip().splitlines()[-1:] or fetched.stdout[-200:]}")  # fmt: skip
    return found[0]


def wheel_file() -> Path:
    """The cleanrl wheel."""
    return downloaded(WHEEL, "cleanrl-1.2.0-*.whl")


def sb3_path() -> Path:
    """Stable-Baselines3, unpacked from its wheel into CACHE: a folder for PYTHONPATH (it is pure
    Python and reads a file beside its code; what it imports, torch, gymnasium, numpy and
    cloudpickle, is installed here)."""
    folder = CACHE / "stable-baselines3-2.9.2"
    if not (folder / "stable_baselines3").is_dir():
        with zipfile.ZipFile(downloaded(SB3, "stable_baselines3-2.9.2-*.whl")) as wheel:
            wheel.extractall(folder)
    return folder


def apply_edits(text: str, edits: list[tuple[str, str, str]], what: str) -> str:
    """`text` with each (old, new, why) edit applied; one error line when an edit does not
    find its `old` exactly once (the other project's file has changed)."""
    for old, new, why in edits:
        if text.count(old) != 1:
            sys.exit(f"error: {what} differs from what the edit expects ({why})")
        text = text.replace(old, new)
    return text


def prepared_script(name: str, edits: list[tuple[str, str, str]], into: Path) -> Path:
    """cleanrl/<name> from the wheel, written into `into` with `edits` applied (and said, on
    stderr)."""
    with zipfile.ZipFile(wheel_file()) as wheel:
        text = wheel.read(f"cleanrl/{name}").decode()
    script = into / name
    script.write_text(apply_edits(text, edits, f"{WHEEL}'s {name}"))
    print(f"CleanRL's {name} ({WHEEL}), changed only so:", file=sys.stderr)
    for *_, why in edits:
        print(f"- {why}", file=sys.stderr)
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
    return {"sps": float(sps[-1]), "wall_s": wall, "episodes": episodes, "lines": lines}
