#!/usr/bin/env bash
# Optional, not part of `make test`: the native build and its tests on Debian 13 (trixie) from a Debian 12
# (or 13) machine, as a new developer would run them: a minbase trixie chroot, a clean clone of this
# repository's HEAD, native/setup_deps.sh, then `make test PYTEST_ARGS=tests/native` (setup_deps.sh again,
# release + ASan/UBSan + TSan builds, ruff, the native tests). Root; about 6 GB of disk, most of it torch.
#
#   sudo native/check_debian13.sh [CHROOT]            # default /tmp/trixie; reused when already there
#
# The chroot's venv holds the train and dev extras, not serve: PyTriton's backend stub needs numpy 1.x,
# which has no wheel for trixie's Python 3.13, so `make setup`'s stub_env step fails there (docs/EMBED.md,
# "Debian 13"). The venv is therefore made here and marked installed for the Makefile.
set -euo pipefail
root=${1:-/tmp/trixie}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "check_debian13.sh: run as root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap
[ -x "$root/usr/bin/apt-get" ] || debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian

mounted=()
cleanup() {
    for ((k = ${#mounted[@]} - 1; k >= 0; k--)); do umount "${mounted[k]}" || true; done
}
trap cleanup EXIT
for target in proc sys dev dev/pts; do
    mountpoint -q "$root/$target" && continue
    case $target in
        proc) mount -t proc proc "$root/proc" ;;
        sys) mount -t sysfs sys "$root/sys" ;;
        *) mount --bind "/$target" "$root/$target" ;;
    esac
    mounted+=("$root/$target")
done
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This machine's own certificate authorities (a proxy's, if any), so that apt and pip reach the same hosts.
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2> /dev/null || true

rm -rf "$root/src"
git clone -q "$repo" "$root/src"
in_chroot() {
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
        /bin/bash -c "$1"
}
in_chroot 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends python3 python3-venv make git ca-certificates > /dev/null &&
    update-ca-certificates > /dev/null'
in_chroot 'cd /src && native/setup_deps.sh'
in_chroot 'cd /src && python3 -m venv .venv && .venv/bin/pip install -q -e ".[train,dev]" && touch .venv/.installed'
in_chroot 'cat /etc/debian_version; gcc --version | head -1; cmake --version | head -1
    dpkg-query -W libopencv-dev libfaiss-dev libonnxruntime-dev libopenblas0-pthread nlohmann-json3-dev
    /src/.venv/bin/python -c "import onnxruntime, sys; print(sys.version.split()[0], \"onnxruntime\", onnxruntime.__version__)"'
in_chroot 'cd /src && nice -n 10 make test PYTEST_ARGS=tests/native'
