#!/usr/bin/env sh
# The bundle on emulated aarch64 CPUs (Jetson's ISA); see scripts/check_aarch64.py for what it builds and checks.
#   scripts/check_aarch64.sh BUNDLE IMAGES... [--cpu cortex-a76 --cpu max] [--refused CLIPPED_BUNDLE]
exec "${PYTHON:-python3}" "$(dirname "$0")/check_aarch64.py" "$@"
