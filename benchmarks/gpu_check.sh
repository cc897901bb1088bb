#!/usr/bin/env bash
# The one prepared GPU check: install the carried wheels offline, then every part of
# benchmarks/gpu_check.py under its time budget (~10 minutes on the GPU), tables into OUT_DIR.
#
#   make gpu-wheels                            # here, once: .gpu-wheels/ (cp312, ~50 MiB)
#   benchmarks/gpu_check.sh OUT_DIR            # on the GPU machine (its python3, no network)
#   benchmarks/gpu_check.sh OUT_DIR --dry-run  # the same path on a CPU, tiny sizes
#   benchmarks/gpu_check.sh OUT_DIR --parts gpu-tests,hessian   # some parts, for a short window
#
# Nothing is installed into the machine's Python: the wheels go to OUT_DIR/site (pip --target,
# --no-index, --no-deps), which goes first on PYTHONPATH with the repository, so the machine's
# own torch is the one used. WHEELS (default .gpu-wheels) and PYTHON (default python3) override.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
shift
WHEELS="${WHEELS:-.gpu-wheels}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
if [ ! -f "$WHEELS/requirements.txt" ]; then
  echo "error: no $WHEELS/requirements.txt: run 'make gpu-wheels' first (where there is an index)" >&2
  exit 2
fi
start=$(date +%s)
"$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
  --target "$OUT/site" -r "$WHEELS/requirements.txt" > "$OUT/install.log" 2>&1 || {
  echo "error: installing the wheels failed (see $OUT/install.log)" >&2
  tail -5 "$OUT/install.log" >&2
  exit 2
}
echo "installed $(wc -l < "$WHEELS/requirements.txt") packages into $OUT/site in $(( $(date +%s) - start )) s"
export PYTHONPATH="$OUT/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline WANDB_SILENT=true MUJOCO_GL="${MUJOCO_GL:-egl}"
# The GPU machine's driver brings EGL's vendor half (libEGL_nvidia) but not the loader
# (libEGL.so.1), and `import mujoco` fails under MUJOCO_GL=egl without it: unpack Debian's
# loaders (make gpu-wheels puts them in $WHEELS/gl) where none is installed and we are root.
if [ "$MUJOCO_GL" = egl ] && ! ldconfig -p 2>/dev/null | grep -q 'libEGL\.so\.1 '; then
  if [ -d "$WHEELS/gl" ] && [ "$(id -u)" = 0 ] && [ -w / ]; then
    for deb in "$WHEELS"/gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
    echo "unpacked the GL loaders in $WHEELS/gl into / (this machine had no libEGL.so.1)"
  fi
fi
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$vendor" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES="${__EGL_VENDOR_LIBRARY_FILENAMES:-$vendor}"; fi
if ! "$PYTHON" -c "import mujoco" > /dev/null 2>&1; then
  echo "note: import mujoco fails with MUJOCO_GL=$MUJOCO_GL: the check runs without rendering (MUJOCO_GL=disable)"
  export MUJOCO_GL=disable
fi
"$PYTHON" -c "import gymnasium, mujoco, tyro, wandb, torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
exec "$PYTHON" benchmarks/gpu_check.py run --out "$OUT" "$@"
