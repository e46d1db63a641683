#!/usr/bin/env bash
# Configure (once) and build libnpgmf variants: release (native/build), address (ASan + UBSan,
# native/build-asan), thread (TSan, native/build-tsan). Incremental: an up-to-date variant costs a second.
#
#   native/build.sh [release] [address] [thread]      # default: all three
#
# NPGMF_PYTHON (default: .venv/bin/python, else python3) is the interpreter whose onnxruntime wheel
# provides libonnxruntime.so. NPGMF_JOBS (default 2) bounds the compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${NPGMF_PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3 )}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(release address thread)
for variant in "${variants[@]}"; do
    case $variant in
        release) dir=native/build; sanitize= ;;
        address) dir=native/build-asan; sanitize=address ;;
        thread) dir=native/build-tsan; sanitize=thread ;;
        *) echo "native/build.sh: unknown variant $variant (release, address, thread)" >&2; exit 2 ;;
    esac
    if [ ! -f "$dir/build.ninja" ]; then
        cmake -S native -B "$dir" -G Ninja -DNPGMF_PYTHON="$python" -DNPGMF_SANITIZE="$sanitize" > "$dir.configure.log" 2>&1 \
            || { tail -5 "$dir.configure.log" >&2; rm -rf "$dir"; exit 3; }
    fi
    ninja -C "$dir" -j "${NPGMF_JOBS:-2}" > "$dir.build.log" 2>&1 || { grep -E "error|FAILED" "$dir.build.log" | head -20 >&2; exit 4; }
done
