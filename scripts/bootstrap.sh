#!/usr/bin/env bash
# Set up PillTrack's Python environments on a Linux machine. Safe to run again: an environment
# that is already complete is left as it is.
#
#   bash scripts/bootstrap.sh [ENVIRONMENT ...]          (no argument: train)
#
#   ENVIRONMENT   folder              installs                                  for
#   train         .venv               -e '.[train,serve,test,browser,cluster]'  the pipeline (dvc repro), all tests
#   edge          .venv-edge          -e '.[edge,serve,test]'                   the device client on LiteRT, NumPy 2
#   edge-tflite   .venv-edge-tflite   -e '.[edge-tflite,serve,test]'            the device client on tflite-runtime, NumPy 1
#   firmware      (system packages)   apt-get: Cortex-M gcc, newlib, its C++    the `firmware` stage and its emulated test
#                                     library, QEMU, make, git
#
# `firmware` is not a Python environment: it installs the Debian/Ubuntu packages the `firmware`
# stage needs (FIRMWARE_PACKAGES below; tf_pilltrack/firmware/build.py's TOOLS names the same ones)
# with apt-get, `apt-get update` first, as root or through passwordless sudo, unless all of them
# are there already. Where apt-get is missing (not Debian-like) or cannot run as root, it says so,
# installs nothing and the command goes on: the emulated firmware test then skips saying what is
# missing, except in CI (CI=true), where that skip is a failure. TFLite Micro's sources (the kit,
# firmware.tflm_kit in params.yaml) are no package: the test names the kit when it is missing.
#
# The edge environments hold only the client's dependencies, its counter page's (`serve`: the page's
# tests run there too) and the test tools: no TensorFlow, which this script checks. Direct pins live in pyproject.toml; constraints/<environment>.txt
# fixes every transitive version too (pip freeze of a tested environment), so pip installs
# without a resolver search (an unconstrained install backtracked at length). An environment is complete when its
# stamp file (.pilltrack-bootstrap inside it) holds the hash of pyproject.toml, this script, the
# extras and the Python version; anything else is installed again with pip (which keeps what is
# already there at the right version). pip prints errors only.
#
# PYTHON=/path/to/python picks the interpreter; otherwise python3.11 if present, else python3.
# It must be Python >= 3.10 (tflite-runtime 2.14 needs <= 3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STAMP=.pilltrack-bootstrap
# Debian/Ubuntu packages of the `firmware` target, and the command that shows each is installed
# ("": a library, found through the cross compiler: newlib's rdimon.specs, the C++ library's <cstddef>)
FIRMWARE_PACKAGES=(gcc-arm-none-eabi binutils-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib
                   qemu-system-arm make git)
FIRMWARE_COMMANDS=(arm-none-eabi-gcc arm-none-eabi-size "" "" qemu-system-arm make git)

say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

if [[ -n "${PYTHON:-}" ]]; then
    python=$PYTHON
elif command -v python3.11 >/dev/null 2>&1; then
    python=python3.11
elif command -v python3 >/dev/null 2>&1; then
    python=python3
else
    die "no python3.11 or python3 on PATH (set PYTHON=/path/to/python)"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$("$python" --version 2>&1) is too old: PillTrack needs Python >= 3.10 (3.11 recommended)"
"$python" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$python cannot make virtual environments (Debian/Ubuntu: apt-get install python3-venv)"

# folder and pip extras of each environment
folder_of() {
    case $1 in
        train) echo .venv ;;
        edge) echo .venv-edge ;;
        edge-tflite) echo .venv-edge-tflite ;;
        *) return 1 ;;
    esac
}
extras_of() {
    case $1 in
        train) echo train,serve,test,browser,cluster ;;
        edge) echo edge,serve,test ;;
        edge-tflite) echo edge-tflite,serve,test ;;
    esac
}

# What an environment's stamp must hold: a hash of everything that decides its contents.
fingerprint() {  # ENVIRONMENT
    "$python" - "$1" "$(extras_of "$1")" <<'EOF'
import hashlib, sys
digest = hashlib.sha256()
for path in ("pyproject.toml", "scripts/bootstrap.sh", f"constraints/{sys.argv[1]}.txt"):
    with open(path, "rb") as handle:
        digest.update(handle.read())
digest.update(" ".join(sys.argv[1:] + [sys.version]).encode())
print(digest.hexdigest())
EOF
}

complete() {  # FOLDER FINGERPRINT: the environment runs and its stamp matches
    [[ -f "$1/$STAMP" && "$(cat "$1/$STAMP")" == "$2" ]] \
        && "$1/bin/python" -c 'import edge_runtime' >/dev/null 2>&1
}

setup() {  # ENVIRONMENT
    local name=$1 folder extras want start
    folder=$(folder_of "$name") || die "unknown environment '$name' (train, edge, edge-tflite or firmware)"
    extras=$(extras_of "$name")
    want=$(fingerprint "$name")
    if complete "$folder" "$want"; then
        say "$name: $folder is up to date"
        return
    fi
    start=$SECONDS
    if [[ -d "$folder" ]] && ! "$folder/bin/python" -c 'import sys' >/dev/null 2>&1; then
        say "$name: $folder is broken (its interpreter does not run); making it again"
        rm -rf "$folder"
    fi
    if [[ ! -d "$folder" ]]; then
        "$python" -m venv "$folder"
    fi
    rm -f "$folder/$STAMP"
    say "$name: installing -e '.[$extras]' into $folder (a few minutes the first time)"
    PIP_PROGRESS_BAR=off "$folder/bin/python" -m pip install --no-input --quiet --quiet \
        --disable-pip-version-check -c "constraints/$name.txt" -e ".[$extras]" \
        || die "$name: pip install -e '.[$extras]' failed (see above)"
    if [[ $name == edge* ]]; then
        # the device client's dependency list must stand on its own
        "$folder/bin/python" -c \
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)" \
            || die "$name: TensorFlow got into $folder; an edge dependency pulls it in"
    fi
    "$folder/bin/python" -c 'import edge_runtime.cli' \
        || die "$name: the client does not import in $folder"
    echo "$want" > "$folder/$STAMP"
    say "$name: $folder ready in $((SECONDS - start)) s"
}

# The firmware packages that are not installed, one a line (nothing: all there).
firmware_missing() {
    local index command specs
    for index in "${!FIRMWARE_PACKAGES[@]}"; do
        command=${FIRMWARE_COMMANDS[$index]}
        if [[ -n $command ]]; then
            command -v "$command" >/dev/null 2>&1 || echo "${FIRMWARE_PACKAGES[$index]}"
        elif [[ ${FIRMWARE_PACKAGES[$index]} == libnewlib-* ]]; then  # gcc echoes a bare name it lacks
            specs=$(arm-none-eabi-gcc -print-file-name=rdimon.specs 2>/dev/null || true)
            [[ $specs == /* ]] || echo "${FIRMWARE_PACKAGES[$index]}"
        else  # TFLite Micro is C++: its sources include <cstddef> and <cstdarg>
            echo '#include <cstddef>' | arm-none-eabi-g++ -x c++ -fsyntax-only - >/dev/null 2>&1 \
                || echo "${FIRMWARE_PACKAGES[$index]}"
        fi
    done
}

# `firmware`: returns 0 when the packages are there or were installed, 1 when this machine cannot
# install them (says why; the caller goes on); dies when apt-get fails.
setup_firmware() {
    local start
    local -a missing as_root=()
    mapfile -t missing < <(firmware_missing)
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "firmware: the Cortex-M toolchain, newlib and QEMU are installed"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "firmware: SKIPPED, no apt-get on this machine (not Debian-like): install ${missing[*]} yourself;" \
            "without them the emulated firmware test skips (in CI it fails)"
        return 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
            as_root=(sudo -n)
        else
            say "firmware: SKIPPED, apt-get needs root and this user has no passwordless sudo: as root," \
                "apt-get update && apt-get install -y ${missing[*]}; without them the emulated firmware test" \
                "skips (in CI it fails)"
            return 1
        fi
    fi
    start=$SECONDS
    say "firmware: apt-get update, then apt-get install ${missing[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        || die "firmware: apt-get update failed (see above)"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "firmware: apt-get install ${missing[*]} failed (see above)"
    mapfile -t missing < <(firmware_missing)
    [[ ${#missing[@]} -eq 0 ]] || die "firmware: apt-get install ran, yet ${missing[*]} still missing"
    say "firmware: installed in $((SECONDS - start)) s"
}

if [[ $# -eq 0 ]]; then
    set -- train
fi
for name in "$@"; do
    [[ $name == firmware ]] || folder_of "$name" >/dev/null \
        || die "unknown environment '$name' (train, edge, edge-tflite or firmware)"
done
ready=""
skipped=""
for name in "$@"; do
    if [[ $name == firmware ]]; then
        if setup_firmware; then
            ready+="${ready:+, }firmware (system packages)"
        else
            skipped="; skipped: firmware (above)"
        fi
        continue
    fi
    setup "$name"
    ready+="${ready:+, }$name ($(folder_of "$name"))"
done
say "ready: ${ready:-nothing}$skipped"
