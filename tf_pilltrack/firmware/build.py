"""The exported int8 model in a Cortex-M firmware image, run under emulation (stage `firmware`).

From the export's C array (models/micro/model_data.cc / .h) and a few real pill crops
(episodes.real_source through edge_runtime/preprocessing.py, the device's own preprocessing),
this stage

1. generates the firmware's sources (`write_sources`): main.cc with the op resolver generated
   from the model's ops, the tensor arena the export sized, the crops as uint8 arrays and each
   crop's symmetric views (the device's `preprocess.symmetry_views`) made on the device;
2. builds TensorFlow Lite Micro once per kit and core (`prepare_library`: the kit's setup.sh,
   then TFLM's own Makefile with CMSIS-NN kernels, into `firmware.build_cache`), and
   cross-compiles and links the firmware against it (`build_firmware`) with CMSIS's startup
   file and linker script, Debian's arm-none-eabi-gcc and newlib's semihosting library;
3. runs it on QEMU's MPS2 board for the core (`run_emulator`, `-icount shift=0`: the virtual
   clock advances 1 ns per instruction, so the board's 25 MHz timer read around each
   `Invoke()`, and around each operator through TFLM's profiler hook, counts instructions; a
   loop of known length calibrates the count on every run);
4. compares the int8 outputs with the host's TFLite Micro (reference kernels) and LiteRT for the
   same views, in int8 steps, and the top-1 / named answers of the device's gallery search on
   the shipped bundle (`compare_outputs`, `compare_answers`);
5. measures flash, RAM, instructions per inference and per identification (all views), and per
   operator beside its MACs (`measure_image`, `parse_run`, `operator_work`, `per_op_table`), and
   writes metrics/firmware.json and models/firmware/ (firmware.elf, its sources, the build and
   emulator logs).

With the kit, the toolchain or the emulator missing, `firmware.required` decides: true fails
naming what is missing; false writes metrics/firmware.json saying the firmware was not built
and why, and models/firmware/NOT_BUILT.txt, so a pipeline without them (CI) still runs.

The stage itself (`pilltrack firmware`) is tf_pilltrack/stages/firmware.py; this module holds its
parts in the order the stage runs them, each under its banner (the kit, the TFLM library, the
crops, the sources, build/run/measure, the per-operator work, the host reference). The
firmware's main.cc is a real C++ file beside this module, its few generated values filled in
with string.Template (`write_sources`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import statistics
import string
import subprocess
import sys
from typing import Callable

import numpy as np

from edge_runtime import storage
from edge_runtime.preprocessing import PreprocessConfig
from edge_runtime.storage import write_atomically
from tf_pilltrack import paths
from tf_pilltrack.settings import Firmware
from tf_pilltrack.tflite import micro

FIRMWARE = paths.MODELS / "firmware"
TEMPLATES = pathlib.Path(__file__).parent  # main.cc, filled by string.Template
METRICS_FILE = paths.METRICS / "firmware.json"
ELF_NAME = "firmware.elf"
NOT_BUILT = "NOT_BUILT.txt"

# The cores this stage can build for and emulate: QEMU's MPS2 board with that core, CMSIS's
# device folder for its startup file and linker script, and the memory the linker script gives
# the emulated board (QEMU's MPS2 boards have 4 MB of code memory at 0 and more RAM at
# 0x20000000; the figures measured are the image's own, not these).
CORES = {
    "cortex-m4": {"machine": "mps2-an386", "device": "ARMCM4", "rom_bytes": 0x400000, "ram_bytes": 0x400000},
}
RAM_BASE = 0x20000000  # start of RAM in CMSIS's linker script; sections below it are in flash

# TFLM's Makefile settings of the library: its Cortex-M semihosting target, CMSIS-NN kernels and
# its benchmarking build type (no debug assertions, error messages kept).
TFLM_TARGET = "cortex_m_qemu"
TFLM_KERNELS = "cmsis_nn"
TFLM_BUILD_TYPE = "release_with_logs"
# CMSIS-NN's requantisation (arm_nn_requantize: a doubling high multiply, then a rounding right
# shift) in its inline-assembly form: SMULL and ADC instead of the C form's 64-bit add and compare,
# the same double rounding and the same results (it is CMSIS-NN's own opt-in define; the firmware's
# outputs are still compared with the host's TFLite Micro bit for bit). Every convolution,
# depthwise, fully connected and add output goes through it: fewer instructions per inference
# on the mcu student (docs/results.md). TFLM's Makefile has no variable for extra defines, so they
# ride on its optimisation-level variables of the kernels (TFLM's) and third-party kernels
# (CMSIS-NN's), at the -O2 its Makefile sets; -O3, -Os or -funroll-loops there measured worse.
TFLM_KERNEL_FLAGS = "-O2 -DCMSIS_NN_USE_REQUANTIZE_INLINE_ASSEMBLY"

# The compiler flags TFLM's Makefile gives its library for this target and build type
# (tensorflow/lite/micro/tools/make/Makefile, targets/cortex_m_qemu_makefile.inc), so that the
# firmware's own files are compiled as the library is: -Os as TFLM's core code.
COMMON_FLAGS = ("-mthumb", "-mfloat-abi=soft", "-funsigned-char", "-mlittle-endian", "-fomit-frame-pointer",
                "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-ffunction-sections",
                "-fdata-sections", "-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON", "-DCMSIS_NN",
                "-DNDEBUG", "-Os", "--specs=rdimon.specs")
CXX_FLAGS = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics")

TIMER_HZ = 25_000_000  # QEMU's MPS2 boards clock their CMSDK APB timers at the 25 MHz SYSCLK
CALIBRATION_ITERATIONS = 1_000_000  # the firmware's calibration loop: 2 instructions per iteration
STACK_WINDOW_BYTES = 128 * 1024  # stack painted below main's frame to find the deepest stack use
BUILD_LOCK_WAIT_S = 3600.0  # another process building the same TFLM library: wait this long

TOOLS = {  # command -> Debian package
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-g++": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "arm-none-eabi-nm": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "make": "make",
    "git": "git",
}
NEWLIB_SPECS = "rdimon.specs"  # libnewlib-arm-none-eabi's semihosting C library
LIBRARIES = {  # Debian package -> what the cross compiler lacks without it
    "libnewlib-arm-none-eabi": f"newlib's {NEWLIB_SPECS} for arm-none-eabi-gcc",
    "libstdc++-arm-none-eabi-newlib": "the C++ standard library's headers (<cstddef>) for arm-none-eabi-g++",
}


class FirmwareError(RuntimeError):
    """The firmware could not be built or run, or its run disagrees with the host."""


class ToolsMissing(FileNotFoundError):
    """The kit, the toolchain or the emulator is missing; the message says which and how to get them."""


# --- what is there -------------------------------------------------------------------------------


def kit_path(firmware: Firmware) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(firmware.tflm_kit))


def cache_path(firmware: Firmware) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(firmware.build_cache))


def find_missing(kit: pathlib.Path) -> list[str]:
    """What the build needs and this machine lacks, one line each (empty: everything is there)."""
    missing = []
    if not (kit / "setup.sh").is_file() or not sorted((kit / "src").glob("*.tar.gz")):
        missing.append(f"the TFLite Micro kit at {kit} (firmware.tflm_kit in params.yaml: a folder with setup.sh "
                       "and src/*.tar.gz, TFLM's sources and the downloads its Makefile pins; docs/device.md lists them)")
    absent = sorted({f"{tool} (apt-get install {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None})
    missing += absent
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is not None:
        specs = subprocess.run([gcc, f"-print-file-name={NEWLIB_SPECS}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(specs):  # gcc echoes the bare name when it has no such file
            missing.append(f"{LIBRARIES['libnewlib-arm-none-eabi']} (apt-get install libnewlib-arm-none-eabi)")
    gxx = shutil.which("arm-none-eabi-g++")
    if gxx is not None:  # TFLite Micro is C++
        compiled = subprocess.run([gxx, "-x", "c++", "-fsyntax-only", "-"], input="#include <cstddef>\n",
                                  capture_output=True, text=True)
        if compiled.returncode != 0:
            missing.append(f"{LIBRARIES['libstdc++-arm-none-eabi-newlib']} (apt-get install libstdc++-arm-none-eabi-newlib)")
    return missing


def kit_digest(kit: pathlib.Path) -> str:
    """A short digest of the kit's archives and setup script: the key of its built library."""
    digest = hashlib.sha256()
    for path in [kit / "setup.sh"] + sorted((kit / "src").glob("*.tar.gz")):
        digest.update(path.name.encode() + b"\0" + storage.sha256_file(path).encode() + b"\0")
    return digest.hexdigest()[:16]


def tool_versions() -> dict:
    def first_line(command: list[str]) -> str:
        return subprocess.run(command, capture_output=True, text=True).stdout.splitlines()[0].strip()

    return {"arm-none-eabi-gcc": first_line(["arm-none-eabi-gcc", "--version"]),
            "qemu-system-arm": first_line(["qemu-system-arm", "--version"])}


# --- the TFLM library ----------------------------------------------------------------------------


def library_folder(cache: pathlib.Path, kit: pathlib.Path, core: str) -> pathlib.Path:
    """Where the kit's sources are laid out and its library for `core` is built: one folder per
    kit, core and Makefile arguments (a change of flags builds a new library beside the old)."""
    build = hashlib.sha256("\0".join(_make_arguments(core)).encode()).hexdigest()[:8]
    return cache / f"{kit_digest(kit)}-{core}-{build}"


def _make_arguments(core: str) -> list[str]:
    return ["-f", "tensorflow/lite/micro/tools/make/Makefile", f"TARGET={TFLM_TARGET}", f"TARGET_ARCH={core}",
            f"OPTIMIZED_KERNEL_DIR={TFLM_KERNELS}", f"BUILD_TYPE={TFLM_BUILD_TYPE}",
            f"KERNEL_OPTIMIZATION_LEVEL={TFLM_KERNEL_FLAGS}", f"THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL={TFLM_KERNEL_FLAGS}"]


def library_file(root: pathlib.Path, core: str) -> pathlib.Path:
    return (root / "gen" / f"{TFLM_TARGET}_{core}_{TFLM_BUILD_TYPE}_{TFLM_KERNELS}_gcc" / "lib"
            / "libtensorflow-microlite.a")


def cached_library(cache: pathlib.Path, kit: pathlib.Path, core: str) -> pathlib.Path | None:
    """The TFLM source root whose library for `core` is built, or None (nothing is built here)."""
    folder = library_folder(cache, kit, core)
    root = folder / "tflite-micro"
    return root if (folder / "built").is_file() and library_file(root, core).is_file() else None


def _tool_environment() -> dict:
    """PATH with this Python first: TFLM's Makefile runs generator scripts that need numpy and Pillow."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _run_logged(command: list[str], log: pathlib.Path, what: str, **options) -> subprocess.CompletedProcess:
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, text=True, **options)
    if result.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise FirmwareError(f"{what} failed (exit {result.returncode}); log {log}:\n{tail}")
    return result


def prepare_library(kit: pathlib.Path, cache: pathlib.Path, core: str, jobs: int,
                    echo: Callable[[str], None] = print) -> pathlib.Path:
    """The TFLM source root with its library for `core` built: from the cache, else laid out with
    the kit's setup.sh and built with TFLM's Makefile, once."""
    folder = library_folder(cache, kit, core)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with storage.file_lock(str(folder) + ".lock", holder="another TFLM build", wait_s=BUILD_LOCK_WAIT_S):
        root = cached_library(cache, kit, core)
        if root is not None:
            return root
        if folder.exists():  # an interrupted build: start again from the archives
            shutil.rmtree(folder)
        folder.mkdir()
        log = folder / "build.log"
        echo(f"firmware: building TensorFlow Lite Micro for {core} with {TFLM_KERNELS} kernels into {folder} "
             "(once per kit and core; about 10 minutes on 2 cores)")
        _run_logged(["bash", str((kit / "setup.sh").resolve()), str(folder.resolve())], log, "the kit's setup.sh")
        root = folder / "tflite-micro"
        _run_logged(["make", *_make_arguments(core), f"-j{jobs}", "microlite"], log, "TFLM's library build",
                    cwd=root, env=_tool_environment())
        if not library_file(root, core).is_file():
            raise FirmwareError(f"TFLM's build left no {library_file(root, core)}; log {log}")
        write_atomically(folder / "built", b"")
        return root


# --- the crops ------------------------------------------------------------------------------------


def select_crops(count: int, real_source: str, config: PreprocessConfig,
                 seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """`count` (firmware.crops) real crops (uint8, the device's preprocessing `config`) of as many
    different pills of `real_source` (episodes.real_source), a choice seeded with `seed` (base.seed);
    with their labels and source files."""
    from tf_pilltrack.scoring import episodes

    pool, _, _ = episodes.load_real(real_source, config)
    labels = sorted(set(pool.labels.tolist()))
    if count > len(labels):
        raise ValueError(f"firmware.crops: {count} crops of different pills asked, "
                         f"{real_source} has {len(labels)} pills")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(rng.choice(labels, size=count, replace=False).tolist()):
        rows = np.flatnonzero(pool.labels == label)
        chosen.append(int(rng.choice(rows)))
    return pool.pixels[chosen], [str(pool.labels[i]) for i in chosen], [str(pool.sources[i]) for i in chosen]


def view_transforms(count: int) -> list[tuple[int, bool]]:
    """(counter-clockwise quarter turns, mirrored after turning) of each of `count` symmetric
    views, in the order of edge_runtime.preprocessing.symmetric_views."""
    turns = (0,) if count == 1 else (0, 2) if count == 2 else (0, 1, 2, 3)
    return [(turn, False) for turn in turns] + ([(turn, True) for turn in turns] if count == 8 else [])


def apply_view(crop: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """One view of an (S, S, 3) crop by the index arithmetic main.cc's MakeView uses."""
    size = crop.shape[0]
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    jj = size - 1 - j if mirrored else j
    source = {0: (i, jj), 1: (jj, size - 1 - i), 2: (size - 1 - i, size - 1 - jj), 3: (size - 1 - jj, i)}[turns]
    return crop[source[0], source[1]]


# --- the sources ----------------------------------------------------------------------------------


def write_sources(directory: pathlib.Path, details: dict, op_names: list[str], crops: np.ndarray,
                  views: int, core: str, cmsis: pathlib.Path | None = None, op_count: int | None = None) -> None:
    """main.cc, crops.cc / crops.h and (with CMSIS's folder) the linker script of the firmware.

    main.cc needs the export's model_data.h. Input must be uint8 pixels as they are
    (interpreter.takes_pixels): the firmware passes the crops' bytes unchanged, as a camera's.
    `op_count`: the model's operators (nodes), whose timer ticks main.cc records in each Invoke();
    None: len(op_names)."""
    from edge_runtime.interpreter import takes_pixels

    input_detail = details["input"]
    shape = input_detail["shape"]
    detail = {"dtype": np.dtype(input_detail["dtype"]),
              "quantization": (input_detail["scale"], input_detail["zero_point"])}
    if not takes_pixels(detail):
        raise ValueError(f"model input is {input_detail['dtype']} scale {input_detail['scale']} zero point "
                         f"{input_detail['zero_point']}: the firmware passes uint8 pixels unchanged, which needs "
                         "uint8 with scale 1/127.5 and zero point 128 (as `pilltrack export` writes)")
    if crops.dtype != np.uint8 or crops.ndim != 4 or tuple(crops.shape[1:]) != tuple(shape[1:]) or not len(crops):
        raise ValueError(f"crops must be uint8 (N, {shape[1]}, {shape[2]}, {shape[3]}), got {crops.dtype} {crops.shape}")
    if details["output"]["dtype"] != "int8":
        raise ValueError(f"model output is {details['output']['dtype']}: the firmware prints int8 outputs")
    op_count = len(op_names) if op_count is None else op_count
    if op_count < 1:
        raise ValueError(f"op_count must be at least 1, got {op_count}")
    directory.mkdir(parents=True, exist_ok=True)
    transforms = view_transforms(views)
    header = f"""// Generated by `pilltrack firmware`: real pill crops (uint8 RGB, the device's preprocessing). Do not edit.
#ifndef PILLTRACK_CROPS_H_
#define PILLTRACK_CROPS_H_

#include <cstdint>

constexpr int kPilltrackCropCount = {len(crops)};
constexpr int kPilltrackCropBytes = {int(np.prod(crops.shape[1:]))};
extern const uint8_t g_pilltrack_crops[kPilltrackCropCount][kPilltrackCropBytes];

#endif  // PILLTRACK_CROPS_H_
"""
    rows = ",\n".join("  {\n" + micro.c_bytes(crop.tobytes(), per_line=16) + "\n  }" for crop in crops)
    source = f"""// Generated by `pilltrack firmware`. Do not edit.
#include "crops.h"

alignas(16) const uint8_t g_pilltrack_crops[kPilltrackCropCount][kPilltrackCropBytes] = {{
{rows}
}};
"""
    resolver = "\n".join(f"  if (resolver.{call}() != kTfLiteOk) Fail(\"{call}\");"
                         for call in micro.resolver_calls(op_names))
    view_table = ", ".join(f"{{{turn}, {'true' if mirrored else 'false'}}}" for turn, mirrored in transforms)
    main = string.Template((TEMPLATES / "main.cc").read_text(encoding="utf-8")).substitute(
        TIMER_MHZ=TIMER_HZ // 1_000_000, CALIBRATION_ITERATIONS=CALIBRATION_ITERATIONS,
        STACK_WINDOW_BYTES=STACK_WINDOW_BYTES, VIEW_COUNT=views, VIEW_TABLE=view_table, OP_COUNT=op_count,
        RESOLVER=resolver)
    write_atomically(directory / "crops.h", header.encode())
    write_atomically(directory / "crops.cc", source.encode())
    write_atomically(directory / "main.cc", main.encode())
    if cmsis is not None:
        write_atomically(directory / "firmware.ld", linker_script(cmsis, core).encode())


def cmsis_device(root: pathlib.Path, core: str) -> pathlib.Path:
    return root / "tensorflow/lite/micro/tools/make/downloads/cmsis/Cortex_DFP/Device" / CORES[core]["device"]


def linker_script(cmsis: pathlib.Path, core: str) -> str:
    """CMSIS's linker script for the core with the emulated board's memory, and no stack or heap
    reserved in it: newlib's semihosting start-up takes both from the emulator (SYS_HEAPINFO)."""
    device = CORES[core]
    path = cmsis / "Config" / f"{device['device']}_gcc.ld"
    text = path.read_text()
    for name, value in (("__ROM_SIZE", device["rom_bytes"]), ("__RAM_SIZE", device["ram_bytes"]),
                        ("__STACK_SIZE", 0), ("__HEAP_SIZE", 0)):
        text, count = re.subn(rf"^{name}\s*=\s*0x[0-9A-Fa-f]+;", f"{name} = 0x{value:08X};", text, flags=re.M)
        if count != 1:
            raise FirmwareError(f"{path}: no `{name} = 0x...;` line to set")
    return text


# --- build, run, measure --------------------------------------------------------------------------


def build_firmware(root: pathlib.Path, core: str, sources: pathlib.Path, micro_dir: pathlib.Path,
                   out: pathlib.Path) -> pathlib.Path:
    """Compile main.cc, crops.cc, the export's model_data.cc and CMSIS's startup files; link them
    with TFLM's library into `out`/firmware.elf. Commands and compiler output go to build.log."""
    device = cmsis_device(root, core)
    downloads = root / "tensorflow/lite/micro/tools/make/downloads"
    includes = [f"-I{path}" for path in (sources, micro_dir, root, downloads, downloads / "gemmlowp",
                                         downloads / "flatbuffers/include", downloads / "ruy",
                                         downloads / "cmsis/CMSIS/Core/Include", device / "Include")]
    # source paths in the image (__FILE__ of TFLM's checks) without the build's temporary folders: the same ELF every build
    flags = [f"-mcpu={core}", *COMMON_FLAGS, f"-ffile-prefix-map={sources}=firmware",
             f"-ffile-prefix-map={micro_dir}=micro", f"-ffile-prefix-map={root}=tflite-micro"]
    log = out / "build.log"
    objects = []
    units = [(sources / "main.cc", True), (sources / "crops.cc", True), (micro_dir / "model_data.cc", True),
             (device / "Source" / f"startup_{CORES[core]['device']}.c", False),
             (device / "Source" / f"system_{CORES[core]['device']}.c", False)]
    for unit, cplusplus in units:
        target = out / (unit.stem + ".o")
        compiler = "arm-none-eabi-g++" if cplusplus else "arm-none-eabi-gcc"
        extra = list(CXX_FLAGS) if cplusplus else [f"-D{CORES[core]['device']}"]
        _run_logged([compiler, *flags, *extra, *includes, "-c", str(unit), "-o", str(target)], log,
                    f"compiling {unit.name}")
        objects.append(str(target))
    elf = out / ELF_NAME
    _run_logged(["arm-none-eabi-g++", *flags, "-Wl,--gc-sections", f"-T{sources / 'firmware.ld'}", *objects,
                 str(library_file(root, core)), "-lm", "-o", str(elf)], log, "linking firmware.elf")
    return elf


def run_emulator(elf: pathlib.Path, core: str, timeout_s: float, log: pathlib.Path) -> str:
    """The firmware's semihosting output under QEMU's MPS2 board for `core`, one instruction per
    nanosecond of virtual time. FirmwareError when it does not exit 0 in time."""
    command = ["qemu-system-arm", "-M", CORES[core]["machine"], "-nographic", "-monitor", "none",
               "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
        write_atomically(log, ("$ " + " ".join(command) + "\n" + output).encode())
        raise FirmwareError(f"{elf}: the emulated run did not finish in {timeout_s:g} s "
                            f"(firmware.emulator_timeout_s); output so far in {log}") from None
    write_atomically(log, ("$ " + " ".join(command) + "\n" + result.stdout + result.stderr).encode())
    if result.returncode != 0 or "done" not in result.stdout.splitlines():
        raise FirmwareError(f"{elf}: the emulated run failed (exit {result.returncode}); output in {log}: "
                            f"{(result.stdout + result.stderr)[-500:]!r}")
    return result.stdout


_INVOKE = re.compile(r"^invoke crop=(\d+) view=(\d+) ticks=(\d+) output=(-?\d+(?:,-?\d+)*)$")
_OPS = re.compile(r"^ops crop=(\d+) view=(\d+) ticks=(\d+(?:,\d+)*)$")
_OP_NAMES = re.compile(r"^ops names=([A-Z0-9_]+(?:,[A-Z0-9_]+)*)$")


def parse_run(text: str, crops: int, views: int, embedding_size: int) -> dict:
    """The emulated run's figures: int8 outputs (crops, views, E), instructions of each invoke
    and of each operator in it (from timer ticks and the calibration loop), the operators' names,
    arena, stack and heap bytes."""
    values: dict = {}
    outputs = np.full((crops, views, embedding_size), np.iinfo(np.int16).min, np.int16)
    ticks = np.zeros((crops, views), np.int64)
    op_ticks: dict = {}
    op_names: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        match = _OPS.match(line)
        if match:
            crop, view = int(match.group(1)), int(match.group(2))
            if crop >= crops or view >= views:
                raise FirmwareError(f"emulated run: unexpected line {line[:120]!r}")
            op_ticks[crop, view] = [int(v) for v in match.group(3).split(",")]
            continue
        match = _OP_NAMES.match(line)
        if match:
            op_names = match.group(1).split(",")
            continue
        match = _INVOKE.match(line)
        if match:
            crop, view = int(match.group(1)), int(match.group(2))
            row = [int(v) for v in match.group(4).split(",")]
            if crop >= crops or view >= views or len(row) != embedding_size:
                raise FirmwareError(f"emulated run: unexpected line {line[:120]!r}")
            outputs[crop, view] = row
            ticks[crop, view] = int(match.group(3))
            continue
        for name, pattern in (("calibration", r"calibration instructions=(\d+) ticks=(\d+)"),
                              ("arena", r"arena used=(\d+) reserved=(\d+)"),
                              ("stack", r"stack used=(\d+)"), ("heap", r"heap used=(\d+)")):
            found = re.fullmatch(pattern, line)
            if found:
                values[name] = [int(v) for v in found.groups()]
    missing = [name for name in ("calibration", "arena", "stack", "heap") if name not in values]
    if missing or (ticks == 0).any():
        raise FirmwareError(f"emulated run: no {', '.join(missing) or 'output of every crop and view'} in its output")
    if not op_names or len(op_ticks) != crops * views:
        raise FirmwareError("emulated run: no operator names or no operator ticks of every crop and view in its output")
    if any(len(row) != len(op_names) for row in op_ticks.values()):
        raise FirmwareError(f"emulated run: operator ticks that are not one per operator ({len(op_names)})")
    calibration_instructions, calibration_ticks = values["calibration"]
    per_tick = calibration_instructions / calibration_ticks
    nominal = 1e9 / TIMER_HZ  # -icount shift=0: 1 ns of virtual time per instruction
    if abs(per_tick - nominal) > nominal * 0.01:
        raise FirmwareError(f"emulated run: the calibration loop gave {per_tick:.3f} instructions per timer tick, "
                            f"not {nominal:g}: is QEMU running with -icount shift=0?")
    instructions = ticks * per_tick
    per_op = np.array([[op_ticks[crop, view] for view in range(views)] for crop in range(crops)], np.int64)
    return {
        "outputs": outputs.astype(np.int8),
        "instructions": instructions,
        "op_names": op_names,
        "op_instructions": per_op * per_tick,  # (crops, views, operators)
        "instructions_per_tick": per_tick,
        "arena_used_bytes": values["arena"][0],
        "arena_reserved_bytes": values["arena"][1],
        "stack_bytes": values["stack"][0],
        "heap_bytes": values["heap"][0],
    }


def measure_image(elf: pathlib.Path) -> dict:
    """Flash and static RAM of the ELF from its sections (`arm-none-eabi-size -A`) and the sizes of
    the model, the test crops and the arena (`arm-none-eabi-nm -S`)."""
    sizes = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    sections = {}
    for line in sizes.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            sections[parts[0]] = (int(parts[1]), int(parts[2]))
    allocated = {name: size for name, (size, address) in sections.items() if address != 0 or name == ".text"}
    flash = {name: size for name, size in allocated.items() if sections[name][1] < RAM_BASE}
    data = sections.get(".data", (0, 0))[0]
    symbols = subprocess.run(["arm-none-eabi-nm", "-S", "-C", str(elf)], capture_output=True, text=True, check=True).stdout
    sized = {}
    for line in symbols.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            sized[parts[3].split("::")[-1].split("(")[0]] = int(parts[1], 16)
    for name in ("g_pilltrack_model", "g_pilltrack_crops", "tensor_arena"):
        if name not in sized:
            raise FirmwareError(f"{elf}: no symbol {name} with a size")
    return {
        "sections": {name: size for name, size in allocated.items()},
        "flash_image_bytes": sum(flash.values()) + data,  # .data's initial values are stored in flash too
        "data_bytes": data,
        "bss_bytes": sections.get(".bss", (0, 0))[0],
        "model_bytes": sized["g_pilltrack_model"],
        "test_crops_bytes": sized["g_pilltrack_crops"],
        "arena_bytes": sized["tensor_arena"],
    }


# --- per-operator work ----------------------------------------------------------------------------


def operator_work(model: bytes) -> list[dict]:
    """Each operator of the model in graph order (TFLM invokes them in this order): its op, a
    short description of its shapes, and its multiply-accumulates (convolutions and fully
    connected; 0 for the rest) and output elements, from the tensors' shapes (LiteRT's interpreter)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model, num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    shapes = {tensor["index"]: [int(v) for v in tensor["shape"]] for tensor in interpreter.get_tensor_details()}
    rows = []
    for op in interpreter._get_ops_details():
        name, inputs = op["op_name"], [index for index in op["inputs"] if index >= 0]
        source, out = shapes[inputs[0]], shapes[op["outputs"][0]]
        elements = int(np.prod(out))
        macs, shape = 0, "x".join(str(v) for v in out[1:])
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weights = shapes[inputs[1]]  # conv (Cout, kh, kw, Cin); depthwise (1, kh, kw, Cout)
            per_output = weights[1] * weights[2] * (weights[3] if name == "CONV_2D" else 1)
            macs = elements * per_output
            stride = round(source[1] / out[1])
            shape = (f"{weights[1]}x{weights[2]}/{stride} {source[1]}x{source[2]}x{source[3]}"
                     f"->{out[1]}x{out[2]}x{out[3]}")
        elif name == "FULLY_CONNECTED":
            weights = shapes[inputs[1]]  # (out, in)
            macs = elements * weights[1]
            shape = f"{weights[1]}->{weights[0]}"
        elif name in ("MEAN", "QUANTIZE", "ADD"):
            shape = f"{'x'.join(str(v) for v in source[1:])}->{shape}"
        rows.append({"op": name, "shape": shape, "macs": int(macs), "output_elements": elements})
    return rows


def per_op_table(run: dict, work: list[dict]) -> list[dict]:
    """The emulated run's instructions of each operator (median over the invokes) beside its
    work (`operator_work`), in graph order."""
    names = run["op_names"]
    if names != [row["op"] for row in work]:
        raise FirmwareError(f"the firmware timed operators {names[:6]}..., the model has "
                            f"{[row['op'] for row in work][:6]}...: not the same graph")
    per_op = run["op_instructions"].reshape(-1, len(names))
    medians = np.median(per_op, axis=0)
    return [{"index": index, **row, "instructions": float(medians[index]),
             "instructions_per_mac": float(medians[index] / row["macs"]) if row["macs"] else None}
            for index, row in enumerate(work)]


def per_op_summary(table: list[dict], per_inference: float) -> dict:
    """Instructions and MACs per op type (and of the 1x1, 3x3 convolutions and the depthwise ones
    apart), with each one's share of the inference; what the ops leave is the interpreter's own."""
    groups: dict = {}
    for row in table:
        key = row["op"]
        if key == "CONV_2D":
            key = "CONV_2D 1x1" if row["shape"].startswith("1x1/") else "CONV_2D " + row["shape"].split("/")[0]
        group = groups.setdefault(key, {"ops": 0, "macs": 0, "instructions": 0.0})
        group["ops"] += 1
        group["macs"] += row["macs"]
        group["instructions"] += row["instructions"]
    for group in groups.values():
        group["share"] = group["instructions"] / per_inference
        group["instructions_per_mac"] = group["instructions"] / group["macs"] if group["macs"] else None
    in_ops = sum(row["instructions"] for row in table)
    return {"by_op": groups, "macs": sum(row["macs"] for row in table), "ops_instructions": in_ops,
            "outside_ops_instructions": per_inference - in_ops}


# --- host reference -------------------------------------------------------------------------------


def host_outputs(model_path: pathlib.Path, crops: np.ndarray, views: int) -> dict:
    """Raw int8 outputs (crops, views, E) of the host's TFLite Micro (its Python interpreter,
    reference kernels) and of LiteRT as the device client runs it (interpreter.make_interpreter,
    one thread), for the same views (edge_runtime.preprocessing.symmetric_views)."""
    from edge_runtime.interpreter import make_interpreter
    from edge_runtime.preprocessing import symmetric_views

    tflm = micro.micro_interpreter(pathlib.Path(model_path).read_bytes())
    lite = make_interpreter(model_path, threads=1)
    lite_input, lite_output = lite.get_input_details()[0]["index"], lite.get_output_details()[0]["index"]
    per_view = symmetric_views(crops, views)
    results = {"tflite_micro": [], "litert": []}
    for crop in range(len(crops)):
        tflm_rows, lite_rows = [], []
        for view in per_view:
            pixels = view[crop][None]
            tflm_rows.append(micro.micro_invoke(tflm, pixels).reshape(-1))
            lite.set_tensor(lite_input, pixels)
            lite.invoke()
            lite_rows.append(np.array(lite.get_tensor(lite_output)).reshape(-1))
        results["tflite_micro"].append(tflm_rows)
        results["litert"].append(lite_rows)
    return {name: np.array(rows, np.int8) for name, rows in results.items()}


def compare_outputs(emulated: np.ndarray, host: np.ndarray) -> dict:
    """Largest difference in int8 steps and the share of identical values, emulated vs host."""
    difference = np.abs(emulated.astype(np.int32) - host.astype(np.int32))
    return {"max_step_difference": int(difference.max()), "identical_share": float((difference == 0).mean())}


def embed_outputs(outputs: np.ndarray, output_detail: dict) -> np.ndarray:
    """Embeddings (crops, E) from raw outputs (crops, views, E) as the device makes them: each
    view dequantised and L2-normalised, their sum L2-normalised (interpreter.embed_views)."""
    from edge_runtime.interpreter import dequantise_output, l2_normalise

    detail = {"dtype": np.int8, "quantization": (output_detail["scale"], output_detail["zero_point"])}
    per_view = [l2_normalise(dequantise_output(outputs[:, view], detail)) for view in range(outputs.shape[1])]
    return per_view[0] if len(per_view) == 1 else l2_normalise(np.sum(per_view, axis=0))


def gallery_answers(bundle_dir: pathlib.Path, model: bytes, outputs: dict, output_detail: dict, views: int) -> list[dict]:
    """Per crop, for each named set of raw outputs (crops, views, E): the shipped gallery's top-1
    pill, its cosine distance and the named answer (the bundle's naming rule, gallery.identify),
    through the device's search (gallery.search on the bundle's Annoy index)."""
    from edge_runtime import gallery
    from edge_runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir, verify_model=False)
    if bundle.model_sha256 != storage.sha256_bytes(model):
        raise FirmwareError(f"{bundle_dir}: its model is not {paths.STUDENT_QAT_TFLITE}; rerun the enroll stage")
    if bundle.preprocess.symmetry_views != views:
        raise FirmwareError(f"{bundle_dir}: embeds {bundle.preprocess.symmetry_views} views, "
                            f"preprocess.symmetry_views is {views}; rerun the enroll stage")
    embeddings = {name: embed_outputs(values, output_detail) for name, values in outputs.items()}
    answers = []
    for crop in range(len(next(iter(outputs.values())))):
        row = {}
        for name, vectors in embeddings.items():
            matches = gallery.search(bundle.index, bundle.labels, vectors[crop], 2, bundle.search_k,
                                     bundle.rows_per_label)
            row[name] = {"top1": matches[0].label, "distance": float(matches[0].distance),
                         "named": gallery.identify(matches, bundle.unknown_threshold, bundle.lookalike_margin)}
        answers.append(row)
    return answers


def agree(answers: list[dict], first: str, second: str, key: str) -> bool:
    return all(row[first][key] == row[second][key] for row in answers)


# --- the stage ------------------------------------------------------------------------------------


def estimate_latency_ms(instructions: float, firmware: Firmware) -> float:
    return instructions * firmware.cycles_per_instruction / (firmware.clock_mhz * 1e3)


def write_not_built(out_dir: pathlib.Path, metrics_file: pathlib.Path, profile: str, missing: list[str]) -> dict:
    report = {"built": False, "profile": profile, "missing": missing}
    with storage.atomic_folder(out_dir) as staging:
        (staging / NOT_BUILT).write_bytes(("firmware.required is false and the build could not run; missing:\n"
                                           + "".join(f"- {line}\n" for line in missing)).encode())
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(metrics_file, json.dumps(report, indent=2).encode())
    return report


def build_and_run(root: pathlib.Path, core: str, micro_dir: pathlib.Path, model_path: pathlib.Path,
                  crops: np.ndarray, views: int, work: pathlib.Path, timeout_s: float) -> dict:
    """Sources, build, emulated run and measurement of a firmware for the model at `model_path`
    (its C array in `micro_dir`) and `crops`, in `work`; with the host's outputs for the same views."""
    model = pathlib.Path(model_path).read_bytes()
    details = micro.io_details(model)
    work_per_op = operator_work(model)
    write_sources(work, details, micro.operators(model), crops, views, core, cmsis_device(root, core),
                  op_count=len(work_per_op))
    elf = build_firmware(root, core, work, micro_dir, work)
    text = run_emulator(elf, core, timeout_s, work / "emulator.log")
    run = parse_run(text, len(crops), views, details["output"]["shape"][-1])
    image = measure_image(elf)
    return {"details": details, "run": run, "image": image, "host": host_outputs(model_path, crops, views), "elf": elf,
            "per_op": per_op_table(run, work_per_op)}


def summarise(result: dict, firmware: Firmware) -> dict:
    """The figures of metrics/firmware.json from `build_and_run`'s result."""
    run, image = result["run"], result["image"]
    instructions = sorted(float(v) for v in run["instructions"].reshape(-1))
    median = statistics.median(instructions)
    views = run["instructions"].shape[1]
    summary = per_op_summary(result["per_op"], median)
    flash = image["flash_image_bytes"] - image["test_crops_bytes"]
    ram = image["data_bytes"] + image["bss_bytes"] + run["heap_bytes"] + run["stack_bytes"]
    return {
        "flash_bytes": flash,
        "flash": {"model_bytes": image["model_bytes"], "runtime_and_code_bytes": flash - image["model_bytes"],
                  "test_crops_bytes": image["test_crops_bytes"], "image_bytes": image["flash_image_bytes"]},
        "ram_bytes": ram,
        "ram": {"arena_bytes": image["arena_bytes"], "arena_used_bytes": run["arena_used_bytes"],
                "data_bytes": image["data_bytes"], "bss_other_bytes": image["bss_bytes"] - image["arena_bytes"],
                "heap_bytes": run["heap_bytes"], "stack_bytes": run["stack_bytes"]},
        "sections": image["sections"],
        "instructions_per_inference": {"median": median, "min": instructions[0], "max": instructions[-1],
                                       "invokes": len(instructions),
                                       "resolution": run["instructions_per_tick"]},
        "instructions_per_identification": {"views": views, "median": median * views},
        "estimated_latency_ms": estimate_latency_ms(median, firmware),
        "estimated_identification_ms": estimate_latency_ms(median * views, firmware),
        "macs_per_inference": summary["macs"],
        "instructions_per_mac": median / summary["macs"] if summary["macs"] else None,
        "per_op_summary": summary,
        "per_op": result["per_op"],
    }
