#!/usr/bin/env bash
# Every figure of the README's "GPU figures" table from one command, made for a GPU machine lent for about
# 15 minutes in all, start-up included, bare (Python 3.12 and torch, none of our lock, no network).
#
#   bash benchmarks/gpu.sh [--smoke] [--carried DIR] [--box SECONDS] [SECTION ...]
#
# SECTIONs (default: all four, in this order), each one benchmark script under its own time limit so that a
# slow one cannot eat the others (under 8 minutes together):
#   masks       bench_masks.py: SAM vit_h stock AMG vs exact and fast mode, the masks stage (realistic regime)
#   generators  bench_masks.py --sam3: SAM vit_h exact, SAM 2.1 large, SAM 3 points and concepts
#   training    bench_model.py --only-training: batch 8, 256², against the published-cost reference
#   codec       bench_model.py --only-codec: kodim01, published-compatible and portable, GPU -> CPU decode
# Then benchmarks/gpu_tables.py prints one table per target, each row naming the device.
#
# --carried DIR  what `make gpu-carry` put there: DIR/wheels is installed with --no-index (nothing is
#                downloaded) into a scratch folder put on PYTHONPATH; DIR/kodak, when present, gives the images.
# --smoke        every section at toy sizes on the CPU (tests/test_gpu_script.py): proves the script, the
#                benchmarks' options and the tables work; its figures mean nothing.
# --box SECONDS  one time limit for every section instead of each section's own.
# Weights are random at the published sizes: no checkpoint can be fetched on the lent machine.
# Logs and tables go to $OUT when set (the device tool brings that folder back), else to
# benchmarks/results/gpu-DATE. PYTHON names the interpreter (default python3). The exit code is 0 when every
# section ran to its end, 1 otherwise (the tables are printed either way).
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0 carried="" box="" sections=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --carried) carried="${2:-}"; [ -n "$carried" ] || { echo "error: --carried needs a folder" >&2; exit 1; }; shift ;;
        --box) box="${2:-}"; [[ "$box" =~ ^[1-9][0-9]*$ ]] || { echo "error: --box needs whole seconds, got '$box'" >&2; exit 1; }; shift ;;
        masks | generators | training | codec) sections+=("$1") ;;
        *) echo "error: unknown argument '$1' (sections: masks generators training codec)" >&2; exit 1 ;;
    esac
    shift
done
[ ${#sections[@]} -gt 0 ] || sections=(masks generators training codec)
if [ -n "$carried" ] && [ ! -d "$carried/wheels" ]; then
    echo "error: $carried/wheels does not exist: run 'make gpu-carry' first" >&2
    exit 1
fi

PYTHON="${PYTHON:-python3}"
logs="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$logs"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# The date, the carried wheels installed and on PYTHONPATH (this shell's), the device and versions.
setup() {
    echo "gpu.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $([ $smoke = 1 ] && echo 'smoke run: toy sizes on the CPU' || echo 'GPU run')"
    if [ -n "$carried" ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$scratch/site" "$carried"/wheels/*.whl || { echo "error: the wheels in $carried/wheels did not install"; return 1; }
        export PYTHONPATH="$PYTHONPATH:$scratch/site"
        echo "installed from $carried/wheels: $(cd "$carried/wheels" && ls *.whl | tr '\n' ' ')"
    fi
    "$PYTHON" benchmarks/gpu_tables.py --describe $([ $smoke = 1 ] || echo --require-cuda)
}
setup > "$logs/setup.log" 2>&1
status=$?
cat "$logs/setup.log"
[ $status = 0 ] || { echo "error: setup failed, see $logs/setup.log"; exit 1; }

images=() kodim01=()
if [ -n "$carried" ] && [ -d "$carried/kodak" ]; then
    images=(--images-dir "$carried/kodak")
    kodim01=(--image "$carried/kodak/kodim01.png")
fi
if [ $smoke = 1 ]; then
    "$PYTHON" -c 'import sys; from PIL import Image; from pipeline.sample import sample_photo_paths
Image.open(sample_photo_paths()[0]).convert("RGB").resize((128, 128)).save(sys.argv[1])' "$scratch/small.png"
fi

# Sets `limit` (seconds) and `command` (a script and its options) of section $1, for a GPU or a smoke run.
section() {
    local gpu=(--device cuda --threads 8) cpu=(--device cpu --threads 1)
    case "$1:$smoke" in
        masks:0) limit=100 command=(benchmarks/bench_masks.py "${gpu[@]}" --model vit_h --images 8 --points-per-side 32 "${images[@]}") ;;
        masks:1) limit=120 command=(benchmarks/bench_masks.py "${cpu[@]}" --sam-small --images 1 --points-per-side 4) ;;
        generators:0) limit=130 command=(benchmarks/bench_masks.py --sam3 --sam2 large "${gpu[@]}" --model vit_h --images 4 --points-per-side 32 "${images[@]}") ;;
        generators:1) limit=300 command=(benchmarks/bench_masks.py --sam3 --sam2 tiny "${cpu[@]}" --sam-small --sam3-small --prompts object --images 1 --points-per-side 2) ;;
        training:0) limit=150 command=(benchmarks/bench_model.py --only-training "${gpu[@]}" --train-batch 8 --train-size 256 --compile) ;;
        training:1) limit=120 command=(benchmarks/bench_model.py --only-training --smoke "${cpu[@]}" --train-batch 1 --train-size 192 --train-repeats 1 --no-compile) ;;
        codec:0) limit=80 command=(benchmarks/bench_model.py --only-codec "${gpu[@]}" "${kodim01[@]}") ;;
        codec:1) limit=120 command=(benchmarks/bench_model.py --only-codec --smoke "${cpu[@]}" --image "$scratch/small.png") ;;
    esac
}

failed=0
for name in "${sections[@]}"; do
    section "$name"
    limit="${box:-$limit}"
    log="$logs/$name.log"
    started=$SECONDS
    echo "\$ ${command[*]}" > "$log"
    timeout --kill-after=10 "$limit" "$PYTHON" "${command[@]}" >> "$log" 2>&1
    code=$?
    echo "gpu.sh: exit $code after $((SECONDS - started)) s (limit $limit s)" >> "$log"
    echo "$name: exit $code after $((SECONDS - started)) s (limit $limit s), log $log"
    [ $code = 0 ] || failed=1
done

"$PYTHON" benchmarks/gpu_tables.py "$logs" $([ $smoke = 1 ] && echo --smoke) "${sections[@]}" | tee "$logs/tables.md" || failed=1
exit $failed
