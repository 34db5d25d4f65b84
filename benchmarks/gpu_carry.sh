#!/usr/bin/env bash
# Fills DIR with what benchmarks/gpu.sh needs on a bare GPU machine, which has Python 3.12, torch and the common
# scientific packages but none of our lock and no network (see README, "GPU figures"):
#   DIR/wheels  the project's imports missing there, as CPython 3.12 manylinux x86_64 wheels at requirements.lock's
#               versions: the published wheels downloaded, the source-only ones (sam2, antlr4, iopath) built
#               here with Python 3.12 (sam2 without its optional CUDA extension, as `make setup` builds it);
#   DIR/kodak   kodim01-08 from KODAK_DIR when given and present (else gpu.sh uses the sample photographs).
# Everything in DIR travels with the working tree (64 MiB in all), so its size is checked.
#
#   bash benchmarks/gpu_carry.sh DIR [KODAK_DIR]      # PYTHON312=/path/to/python3.12 if python3.12 is not on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_carry.sh DIR [KODAK_DIR]}" kodak="${2:-}"

# Imported by the four sections (checked in a virtual environment holding only torch and the device's packages).
BINARY="compressai pytorch-msssim segment-anything hydra-core omegaconf sam3 pycocotools open_clip_torch ftfy wcwidth pyspng"
SOURCE="sam2 antlr4-python3-runtime iopath"
PLATFORMS="manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64"
MAX_MIB=48  # leaves room for the working tree under the 64 MiB a call carries

python312() {
    local candidate
    for candidate in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "error: no Python 3.12 found (set PYTHON312): the wheels must be built for the device's CPython 3.12" >&2
    return 1
}

pinned() {  # NAME==VERSION as requirements.lock pins it (names compared as pip does: case, '-', '_' and '.' alike)
    local pattern
    pattern="^$(echo "$1" | sed 's/[-_.]/[-_.]/g')=="
    grep -iE "$pattern" requirements.lock || { echo "error: requirements.lock pins no $1" >&2; return 1; }
}

python="$(python312)"
rm -rf "$out/wheels" "$out/kodak"
mkdir -p "$out/wheels"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $(printf -- '--platform %s ' $PLATFORMS) -d "$out/wheels" $(for name in $BINARY; do pinned "$name"; done)

"$python" -m venv "$build/venv"
"$build/venv/bin/python" -m pip install --quiet "$(pinned setuptools)" wheel
SAM2_BUILD_CUDA=0 "$build/venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$out/wheels" \
    $(for name in $SOURCE; do pinned "$name"; done)

if [ -n "$kodak" ] && [ -f "$kodak/kodim01.png" ]; then
    mkdir -p "$out/kodak"
    cp "$kodak"/kodim0[1-8].png "$out/kodak/"
else
    echo "no Kodak folder${kodak:+ at $kodak}: gpu.sh will use the sample photographs (give KODAK=DIR for kodim01-08)"
fi

size_mib=$(( $(du -sk "$out" | cut -f1) / 1024 ))
ls "$out/wheels"
echo "$out: ${size_mib} MiB"
if [ "$size_mib" -gt "$MAX_MIB" ]; then
    echo "error: $out holds ${size_mib} MiB, over the ${MAX_MIB} MiB left for it in a device call" >&2
    exit 1
fi
