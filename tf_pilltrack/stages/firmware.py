"""`pilltrack firmware`: build the int8 model into a Cortex-M firmware (tf_pilltrack.firmware.build), run
it under QEMU, compare it with the host, write models/firmware/ and metrics/firmware.json, print the figures."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Callable

from edge_runtime import storage
from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.firmware.build import (CORES, ELF_NAME, FIRMWARE, METRICS_FILE, TFLM_BUILD_TYPE, TFLM_KERNEL_FLAGS,
                                         TFLM_KERNELS, TFLM_TARGET, FirmwareError, ToolsMissing,
                                         agree, build_and_run, cache_path, compare_outputs, find_missing,
                                         gallery_answers, kit_digest, kit_path, prepare_library, select_crops,
                                         summarise, tool_versions, write_not_built)


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    every = settings.from_params(params)
    firmware = every.firmware
    profile = every.base.profile
    core = firmware.core
    kit = kit_path(firmware)
    missing = find_missing(kit)
    if missing:
        if firmware.required:
            raise ToolsMissing("the firmware cannot be built; missing: " + "; ".join(missing)
                               + ". Install them, or set firmware.required: false in params.yaml to skip the firmware")
        echo("firmware: NOT BUILT (firmware.required is false); missing:")
        for line in missing:
            echo(f"  - {line}")
        return write_not_built(FIRMWARE, METRICS_FILE, profile, missing)
    model = paths.STUDENT_QAT_TFLITE.read_bytes()
    crops, labels, sources = select_crops(firmware.crops, every.episodes.real_source, every.preprocess_config,
                                          every.base.seed)
    views = every.preprocess.symmetry_views
    root = prepare_library(kit, cache_path(firmware), core, os.cpu_count() or 1, echo)
    with tempfile.TemporaryDirectory(prefix=storage.TEMP_PREFIX, dir=paths.MODELS) as scratch:
        work = pathlib.Path(scratch)
        result = build_and_run(root, core, paths.MICRO, paths.STUDENT_QAT_TFLITE, crops, views, work,
                               firmware.emulator_timeout_s)
        for path in work.glob("*.o"):
            path.unlink()
        for log in ("build.log", "emulator.log"):  # name the files where they end up, not the scratch folder
            text = (work / log).read_text().replace(str(work), str(FIRMWARE))
            write_atomically(work / log, text.encode())
        with storage.atomic_folder(FIRMWARE) as staging:
            for path in work.iterdir():
                shutil.copy2(path, staging / path.name)
    figures = summarise(result, firmware)
    emulated, host = result["run"]["outputs"], result["host"]
    versus = {name: compare_outputs(emulated, values) for name, values in host.items()}
    tolerance = firmware.tolerance_steps
    versus["tflite_micro"]["within_tolerance"] = versus["tflite_micro"]["max_step_difference"] <= tolerance
    answers = gallery_answers(paths.BUNDLE, model, {"emulated": emulated, "tflite_micro": host["tflite_micro"],
                                                    "litert": host["litert"]}, result["details"]["output"], views)
    answer_agreement = {f"{name}_{key}_agree": agree(answers, "emulated", name, key)
                        for name in ("tflite_micro", "litert") for key in ("top1", "named")}
    passed = (versus["tflite_micro"]["within_tolerance"] and answer_agreement["tflite_micro_top1_agree"]
              and answer_agreement["tflite_micro_named_agree"])
    report = {
        "built": True, "profile": profile, "core": core, "machine": CORES[core]["machine"],
        **figures,
        "latency_assumption": {"board": firmware.board, "clock_mhz": firmware.clock_mhz,
                               "cycles_per_instruction": firmware.cycles_per_instruction},
        "agreement": {"crops": len(crops), "views": views, "tolerance_steps": tolerance,
                      "judged": "emulated vs host TFLite Micro: outputs within tolerance_steps, gallery top-1 and "
                                "named answers equal; LiteRT (the device client's runtime, other kernels) reported",
                      **versus, **answer_agreement,
                      "per_crop": [{"label": label, "source": source, **row}
                                   for label, source, row in zip(labels, sources, answers)]},
        "tools": {**tool_versions(), "tflm_kit_digest": kit_digest(kit),
                  "tflm_build": f"{TFLM_TARGET} {core} {TFLM_KERNELS} {TFLM_BUILD_TYPE}",
                  "tflm_kernel_flags": TFLM_KERNEL_FLAGS},
        "passed": passed,
    }
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(METRICS_FILE, json.dumps(report, indent=2).encode())
    instructions = report["instructions_per_inference"]
    echo(f"firmware: {FIRMWARE / ELF_NAME} for {core} ({CORES[core]['machine']} under QEMU)")
    echo(f"  flash {report['flash_bytes']:,} B (model {report['flash']['model_bytes']:,}, runtime and code "
         f"{report['flash']['runtime_and_code_bytes']:,}; test crops {report['flash']['test_crops_bytes']:,} not counted)")
    ram = report["ram"]
    echo(f"  RAM {report['ram_bytes']:,} B (arena {ram['arena_bytes']:,}, of it used {ram['arena_used_bytes']:,}; "
         f"data {ram['data_bytes']:,}, other bss {ram['bss_other_bytes']:,}, heap {ram['heap_bytes']:,}, "
         f"stack {ram['stack_bytes']:,})")
    echo(f"  {instructions['median']:,.0f} instructions per inference (median of {instructions['invokes']}), "
         f"{report['instructions_per_mac']:.2f} per MAC; estimated {report['estimated_latency_ms']:.0f} ms at "
         f"{firmware.clock_mhz:g} MHz and {firmware.cycles_per_instruction:g} cycles per instruction "
         f"({firmware.board}); an identification ({views} views) "
         f"{report['instructions_per_identification']['median']:,.0f}, {report['estimated_identification_ms']:.0f} ms")
    for name, group in sorted(report["per_op_summary"]["by_op"].items(), key=lambda item: -item[1]["instructions"]):
        per_mac = f", {group['instructions_per_mac']:.2f} per MAC" if group["instructions_per_mac"] else ""
        echo(f"    {name:<20} {group['ops']:>3} ops {group['instructions']:>12,.0f} instructions "
             f"({group['share']:.1%}){per_mac}")
    echo(f"    {'outside the ops':<20}         {report['per_op_summary']['outside_ops_instructions']:>12,.0f} "
         "instructions (the interpreter's loop, the timer reads)")
    for name, entry in versus.items():
        echo(f"  vs host {name}: max {entry['max_step_difference']} int8 steps, {entry['identical_share']:.1%} identical; "
             f"gallery top-1 agree {answer_agreement[name + '_top1_agree']}, named {answer_agreement[name + '_named_agree']}")
    echo(f"  judged: host TFLite Micro within {tolerance} int8 steps and the same answers: "
         f"{'passed' if passed else 'FAILED'}")
    if not passed:
        raise FirmwareError(f"the emulated firmware disagrees with the host (see {METRICS_FILE})")
    return report
