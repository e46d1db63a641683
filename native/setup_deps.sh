#!/usr/bin/env bash
# Debian packages the native runtime (libnpgmf) builds against; idempotent: installs only what is missing.
#
#   sudo native/setup_deps.sh            # Debian 12 (bookworm) or 13 (trixie), as root
#
# ONNX Runtime: the library is the one inside the `onnxruntime` wheel the Python runtime already uses
# (CMake finds it through the virtualenv's python); only the C/C++ headers come from Debian's
# `libonnxruntime-dev`. Debian 13 carries that package; on Debian 12 the trixie .deb is downloaded with a
# private apt configuration (the system's sources are not touched) and unpacked under
# native/third_party/onnxruntime. The C API is versioned, so these 1.21 headers drive a newer library.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ORT_DIR=$HERE/third_party/onnxruntime
PACKAGES=(cmake ninja-build g++ pkg-config libopencv-dev libfaiss-dev libopenblas0-pthread
          nlohmann-json3-dev libssl-dev)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

ort_candidate=$(apt-cache policy libonnxruntime-dev 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -n "$ort_candidate" ] && [ "$ort_candidate" != "(none)" ]; then
    dpkg-query -W -f='${Status}' libonnxruntime-dev 2>/dev/null | grep -q "install ok installed" \
        || missing+=(libonnxruntime-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup_deps.sh: missing Debian packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    echo "setup_deps.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -z "$ort_candidate" ] || [ "$ort_candidate" = "(none)" ]; then
    # Debian 12: the headers from trixie's package, unpacked privately (nothing installed system-wide).
    if [ ! -f "$ORT_DIR/usr/include/onnxruntime/onnxruntime_c_api.h" ]; then
        mirror=$(grep -rhoE '^(URIs:|deb) *https?://[^ ]+/debian/?' /etc/apt/sources.list.d/ /etc/apt/sources.list \
                 2>/dev/null | grep -v security | head -1 | grep -oE 'https?://[^ ]+' || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
        echo "deb [trusted=yes] $mirror trixie main" > "$work/sources.list"
        apt_private=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
                     -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
        echo "setup_deps.sh: fetching trixie's libonnxruntime-dev headers from $mirror" >&2
        apt-get "${apt_private[@]}" update -qq
        (cd "$work" && apt-get "${apt_private[@]}" download libonnxruntime-dev)
        rm -rf "$ORT_DIR" && mkdir -p "$ORT_DIR"
        dpkg -x "$work"/libonnxruntime-dev_*.deb "$ORT_DIR"
    fi
fi
echo "setup_deps.sh: native build dependencies present" >&2
