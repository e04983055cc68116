"""Stage `firmware` (tf_pilltrack/stages/firmware.py, tf_pilltrack/firmware/): the generated firmware sources for a tiny model,
the emulator output's parsing, the stage without its tools, the firmware budgets; and the tiny
model cross-built, run under emulation and compared with the host's TFLite Micro and the gallery
search.

That emulated test needs the Cortex-M toolchain and QEMU (`bash scripts/bootstrap.sh firmware`,
part of the README's test command, installs them with apt-get) and the TFLite Micro kit. It builds
TFLM's library into `firmware.build_cache` when the cache has none for this kit and core (about
10 minutes on 2 cores, once; `pilltrack firmware` fills the same cache). Without the tools or the
kit it skips saying what is missing, and in CI (CI=true) that skip is a failure
(`required_in_ci`, tests/conftest.py).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re

import numpy as np
import pytest
from edge_fixtures import GALLERY_PILLS, pill_photos

from edge_runtime.preprocessing import preprocess, symmetric_views
from tf_pilltrack import params as params_module
from tf_pilltrack.benchmark.report import to_markdown
from tf_pilltrack.firmware import build
from tf_pilltrack import settings
from tf_pilltrack.settings import Budget
from tf_pilltrack.stages import firmware as firmware_stage
from tf_pilltrack.tflite import budget, micro

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMALL_PARAMS = ROOT / "tests" / "params_small.yaml"


@pytest.fixture(scope="module")
def small_params() -> dict:
    return params_module.load(SMALL_PARAMS)


@pytest.fixture(scope="module")
def tiny_crops(edge_config) -> np.ndarray:
    """One crop of each gallery pill of the edge tests, through the device's preprocessing."""
    return np.stack([preprocess(pill_photos(name, 1, seed=5)[0], edge_config).pixels for name in GALLERY_PILLS])


@pytest.fixture(scope="module")
def tiny_model(edge_model_path) -> dict:
    model = pathlib.Path(edge_model_path).read_bytes()
    return {"path": pathlib.Path(edge_model_path), "bytes": model, "details": micro.io_details(model),
            "ops": micro.operators(model)}


def _c_array_bytes(text: str, name: str) -> bytes:
    body = text[text.index(name):]
    body = body[body.index("{"):body.index("};")]
    return bytes(int(value, 16) for value in re.findall(r"0x([0-9a-f]{2})", body))


# --- sources --------------------------------------------------------------------------------------


def test_sources_embed_the_crops_the_ops_and_the_views(tmp_path, tiny_model, tiny_crops, edge_config):
    views = edge_config.symmetry_views
    build.write_sources(tmp_path, tiny_model["details"], tiny_model["ops"], tiny_crops, views, "cortex-m4")
    crops_cc, crops_h, main = ((tmp_path / name).read_text() for name in ("crops.cc", "crops.h", "main.cc"))
    assert _c_array_bytes(crops_cc, "g_pilltrack_crops") == tiny_crops.tobytes()
    assert f"kPilltrackCropCount = {len(tiny_crops)};" in crops_h
    assert f"kPilltrackCropBytes = {tiny_crops[0].size};" in crops_h
    calls = re.findall(r"resolver\.(Add\w+)\(\)", main)
    assert calls == micro.resolver_calls(tiny_model["ops"]) and calls
    assert f"kViewCount = {views};" in main
    assert f"kOpCount = {len(tiny_model['ops'])}u;" in main  # without op_count: one node per op name
    build.write_sources(tmp_path, tiny_model["details"], tiny_model["ops"], tiny_crops, views, "cortex-m4",
                           op_count=59)
    assert "kOpCount = 59u;" in (tmp_path / "main.cc").read_text()
    table = re.search(r"kViews\[kViewCount\] = \{(.*)\};", main).group(1)
    assert re.findall(r"\{(\d), (true|false)\}", table) == [
        (str(turns), "true" if mirrored else "false") for turns, mirrored in build.view_transforms(views)]
    assert not (tmp_path / "firmware.ld").exists()  # only with CMSIS's folder


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_views_made_on_the_device_are_the_device_clients(tiny_crops, count):
    """apply_view is main.cc's MakeView index arithmetic; it must give symmetric_views' views."""
    expected = symmetric_views(tiny_crops, count)
    transforms = build.view_transforms(count)
    assert len(transforms) == count
    for view, (turns, mirrored) in enumerate(transforms):
        for crop in range(len(tiny_crops)):
            np.testing.assert_array_equal(build.apply_view(tiny_crops[crop], turns, mirrored), expected[view][crop])


def test_operator_work_counts_the_macs_from_the_shapes(tiny_model):
    work = build.operator_work(tiny_model["bytes"])
    assert [row["op"] for row in work] == tiny_model["ops"] == ["QUANTIZE", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    conv, dense = work[1], work[3]
    assert conv["shape"] == "3x3/2 32x32x3->15x15x16"
    assert conv["macs"] == 15 * 15 * 16 * (3 * 3 * 3) and conv["output_elements"] == 15 * 15 * 16
    assert dense["shape"] == "16->8" and dense["macs"] == 16 * 8
    assert work[0]["macs"] == work[2]["macs"] == 0


def test_sources_refuse_crops_of_another_size(tmp_path, tiny_model, tiny_crops):
    with pytest.raises(ValueError, match=r"crops must be uint8 \(N, 32, 32, 3\)"):
        build.write_sources(tmp_path, tiny_model["details"], tiny_model["ops"], tiny_crops[:, :16], 2, "cortex-m4")


def test_sources_refuse_a_model_that_does_not_take_pixels(tmp_path, tiny_model, tiny_crops):
    details = copy.deepcopy(tiny_model["details"])
    details["input"]["dtype"] = "int8"
    with pytest.raises(ValueError, match="passes uint8 pixels unchanged"):
        build.write_sources(tmp_path, details, tiny_model["ops"], tiny_crops, 2, "cortex-m4")


def test_linker_script_gets_the_boards_memory_and_no_stack_or_heap(tmp_path):
    config = tmp_path / "Config"
    config.mkdir()
    (config / "ARMCM4_gcc.ld").write_text("__ROM_BASE = 0x00000000;\n__ROM_SIZE = 0x00040000;\n"
                                          "__RAM_SIZE = 0x00020000;\n__STACK_SIZE = 0x00000400;\n"
                                          "__HEAP_SIZE  = 0x00000C00;\nMEMORY {}\n")
    text = build.linker_script(tmp_path, "cortex-m4")
    assert "__ROM_SIZE = 0x00400000;" in text and "__RAM_SIZE = 0x00400000;" in text
    assert "__STACK_SIZE = 0x00000000;" in text and "__HEAP_SIZE = 0x00000000;" in text
    assert "__ROM_BASE = 0x00000000;" in text
    (config / "ARMCM4_gcc.ld").write_text("__ROM_SIZE = 0x00040000;\n")
    with pytest.raises(build.FirmwareError, match="no `__RAM_SIZE = 0x...;` line"):
        build.linker_script(tmp_path, "cortex-m4")


def test_every_core_in_params_can_be_built(small_params):
    assert set(settings.FIRMWARE_CORES) == set(build.CORES)
    assert small_params["firmware"]["core"] in build.CORES


def test_crops_are_real_pills_through_the_device_preprocessing(small_params):
    every = settings.from_params(small_params)
    crops, labels, sources = build.select_crops(every.firmware.crops, every.episodes.real_source,
                                                every.preprocess_config, every.base.seed)
    size = small_params["profiles"]["tiny"]["image_size"]
    assert crops.dtype == np.uint8 and crops.shape == (small_params["firmware"]["crops"], size, size, 3)
    assert len(set(labels)) == len(labels)
    assert all(source.startswith(f"{label}/") for label, source in zip(labels, sources))
    again, _, _ = build.select_crops(every.firmware.crops, every.episodes.real_source,
                                     every.preprocess_config, every.base.seed)
    np.testing.assert_array_equal(crops, again)


# --- the emulator's output ------------------------------------------------------------------------


def _run_text(calibration_ticks: int = 50_000, views: int = 2, drop: str | None = None) -> str:
    lines = [f"calibration instructions=2000000 ticks={calibration_ticks}"]
    for crop in range(2):
        for view in range(views):
            values = ",".join(str(value) for value in range(-2 + crop, 2 + crop))
            lines.append(f"invoke crop={crop} view={view} ticks={1000 + view} output={values}")
            if crop == 0 and view == 0:
                lines.append("ops names=QUANTIZE,CONV_2D,FULLY_CONNECTED")
            lines.append(f"ops crop={crop} view={view} ticks=10,{900 + crop},50")
    lines += ["arena used=900 reserved=1024", "stack used=1500", "heap used=4000", "done"]
    return "\n".join(line for line in lines if drop is None or not line.startswith(drop))


def test_run_output_is_parsed_into_figures():
    run = build.parse_run(_run_text(), crops=2, views=2, embedding_size=4)
    assert run["outputs"].dtype == np.int8 and run["outputs"].shape == (2, 2, 4)
    np.testing.assert_array_equal(run["outputs"][1, 0], [-1, 0, 1, 2])
    assert run["instructions_per_tick"] == 40.0
    np.testing.assert_array_equal(run["instructions"], [[40_000, 40_040], [40_000, 40_040]])
    assert (run["arena_used_bytes"], run["arena_reserved_bytes"], run["stack_bytes"], run["heap_bytes"]) == (900, 1024, 1500, 4000)
    assert run["op_names"] == ["QUANTIZE", "CONV_2D", "FULLY_CONNECTED"]
    assert run["op_instructions"].shape == (2, 2, 3)
    np.testing.assert_array_equal(run["op_instructions"][1, 0], [400, 36_040, 2_000])


def test_run_operators_are_tabled_beside_their_work():
    run = build.parse_run(_run_text(), crops=2, views=2, embedding_size=4)
    work = [{"op": "QUANTIZE", "shape": "3", "macs": 0, "output_elements": 3},
            {"op": "CONV_2D", "shape": "1x1/1 2x2x9->2x2x2", "macs": 72, "output_elements": 8},
            {"op": "FULLY_CONNECTED", "shape": "8->2", "macs": 16, "output_elements": 2}]
    table = build.per_op_table(run, work)
    assert [row["instructions"] for row in table] == [400, 36_020, 2_000]  # medians of 36,000 and 36,040
    assert table[1]["instructions_per_mac"] == 36_020 / 72 and table[0]["instructions_per_mac"] is None
    summary = build.per_op_summary(table, per_inference=40_020)
    assert summary["macs"] == 88 and summary["outside_ops_instructions"] == 40_020 - 38_420
    assert summary["by_op"]["CONV_2D 1x1"]["share"] == 36_020 / 40_020
    with pytest.raises(build.FirmwareError, match="not the same graph"):
        build.per_op_table(run, work[1:] + work[:1])


def test_run_without_icount_is_refused():
    with pytest.raises(build.FirmwareError, match="-icount shift=0"):
        build.parse_run(_run_text(calibration_ticks=25_000), crops=2, views=2, embedding_size=4)


@pytest.mark.parametrize("drop", ["stack used", "invoke crop=1 view=1", "ops names", "ops crop=1 view=0"])
def test_run_missing_a_figure_is_refused(drop):
    with pytest.raises(build.FirmwareError, match="emulated run: no"):
        build.parse_run(_run_text(drop=drop), crops=2, views=2, embedding_size=4)


def test_outputs_are_compared_in_int8_steps():
    emulated = np.array([[[1, 2, 3, -128]]], np.int8)
    result = build.compare_outputs(emulated, np.array([[[1, 3, 3, 127]]], np.int8))
    assert result == {"max_step_difference": 255, "identical_share": 0.5}


# --- without the tools ----------------------------------------------------------------------------


def _without_kit(params: dict, tmp_path: pathlib.Path, required: bool) -> dict:
    params = copy.deepcopy(params)
    params["firmware"].update(tflm_kit=str(tmp_path / "no-kit"), required=required)
    return params


def test_missing_kit_fails_naming_it_when_required(small_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(build.ToolsMissing, match=r"the TFLite Micro kit at .*no-kit \(firmware.tflm_kit"):
        firmware_stage.run(_without_kit(small_params, tmp_path, required=True), echo=lambda line: None)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "models").exists()


def test_missing_kit_is_reported_not_built_when_not_required(small_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    report = firmware_stage.run(_without_kit(small_params, tmp_path, required=False), echo=lines.append)
    written = json.loads((tmp_path / "metrics" / "firmware.json").read_text())
    assert written == report and report["built"] is False and report["profile"] == "tiny"
    assert any("no-kit" in line for line in report["missing"])
    assert "no-kit" in (tmp_path / "models" / "firmware" / build.NOT_BUILT).read_text()
    assert lines[0].startswith("firmware: NOT BUILT")


def test_missing_toolchain_is_named_with_its_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = build.find_missing(tmp_path)
    assert "arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi)" in missing
    assert "qemu-system-arm (apt-get install qemu-system-arm)" in missing


@pytest.mark.parametrize("has_cxx_library", [False, True])
def test_missing_cross_libraries_are_named_with_their_package(tmp_path, monkeypatch, has_cxx_library):
    """A cross compiler without newlib (gcc echoes the bare specs name back) and, unless
    `has_cxx_library`, without the C++ library's headers (g++ fails to compile <cstddef>)."""
    for name, script in (("arm-none-eabi-gcc", 'echo "$(echo "$1" | cut -d= -f2)"'),
                         ("arm-none-eabi-g++", f"cat > /dev/null; exit {0 if has_cxx_library else 1}")):
        (tmp_path / name).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    missing = build.find_missing(tmp_path)
    assert f"{build.LIBRARIES['libnewlib-arm-none-eabi']} (apt-get install libnewlib-arm-none-eabi)" in missing
    cxx = f"{build.LIBRARIES['libstdc++-arm-none-eabi-newlib']} (apt-get install libstdc++-arm-none-eabi-newlib)"
    assert (cxx in missing) is not has_cxx_library


# --- budgets --------------------------------------------------------------------------------------


def _measured(flash, ram) -> dict:
    return {"model_bytes": 1, "arena_bytes": 1, "invoke_ms": 1.0, "reference_ratio": 0.1, "recall_at_1": 0.5,
            "firmware_flash_bytes": flash, "firmware_ram_bytes": ram,
            "firmware_missing": [] if flash is not None else ["qemu-system-arm (apt-get install qemu-system-arm)"]}


def test_firmware_budgets_judge_the_measured_image(small_params):
    limits = Budget(**small_params["budgets"]["tiny"])
    rows = {row["budget"]: row for row in budget.compare(_measured(limits.max_firmware_flash_bytes + 1, 1000), limits)}
    assert rows["Cortex-M firmware flash (bytes)"]["passed"] is False
    assert rows["Cortex-M firmware RAM (bytes)"]["passed"] is True


def test_firmware_not_built_or_without_limit_is_not_judged(small_params):
    limits = Budget(**dict(small_params["budgets"]["tiny"], max_firmware_ram_bytes=None))
    rows = budget.compare(_measured(None, None), limits)
    assert not any(row["budget"].startswith("Cortex-M") for row in rows)
    reasons = {row["budget"]: row["reason"] for row in budget.not_judged(_measured(None, None), limits)}
    assert "not measured: the firmware was not built (missing: qemu-system-arm" in reasons["Cortex-M firmware flash (bytes)"]
    assert reasons["Cortex-M firmware RAM (bytes)"].startswith("no limit")


# --- the tiny model on the emulated Cortex-M ------------------------------------------------------


def _built_library(params: dict) -> pathlib.Path:
    """The TFLM source root with its library built (into the cache, when it has none), or skip
    saying what is missing."""
    firmware = settings.from_params(params).firmware
    kit = build.kit_path(firmware)
    kit = kit if kit.is_absolute() else ROOT / kit
    missing = build.find_missing(kit)
    if missing:
        pytest.skip("the firmware build needs " + "; ".join(missing))
    return build.prepare_library(kit, build.cache_path(firmware), firmware.core,
                                    os.cpu_count() or 1, echo=print)


@pytest.mark.required_in_ci("`bash scripts/bootstrap.sh firmware` installs the Cortex-M toolchain and QEMU; "
                             "firmware.tflm_kit must name the TFLite Micro kit")
def test_tiny_model_runs_on_the_emulated_core_as_on_the_host(small_params, tmp_path, tiny_model, tiny_crops,
                                                             edge_config, edge_bundle):
    root = _built_library(small_params)
    firmware = settings.from_params(small_params).firmware
    core, views = firmware.core, edge_config.symmetry_views
    micro_dir = tmp_path / "micro"
    micro.write_c_array(micro_dir, tiny_model["bytes"], micro.measure_arena(tiny_model["bytes"]),
                        tiny_model["details"], tiny_model["ops"])
    work = tmp_path / "work"
    work.mkdir()
    result = build.build_and_run(root, core, micro_dir, tiny_model["path"], tiny_crops, views, work,
                                    firmware.emulator_timeout_s)
    emulated = result["run"]["outputs"]
    assert emulated.shape == (len(tiny_crops), views, tiny_model["details"]["output"]["shape"][-1])
    versus = build.compare_outputs(emulated, result["host"]["tflite_micro"])
    assert versus["max_step_difference"] <= firmware.tolerance_steps, versus
    assert len({tuple(row) for row in emulated.reshape(-1, emulated.shape[-1])}) > 1  # not one constant output

    answers = build.gallery_answers(pathlib.Path(edge_bundle), tiny_model["bytes"],
                                       {"emulated": emulated, "tflite_micro": result["host"]["tflite_micro"]},
                                       tiny_model["details"]["output"], views)
    assert build.agree(answers, "emulated", "tflite_micro", "top1")
    assert build.agree(answers, "emulated", "tflite_micro", "named")
    assert [row["emulated"]["top1"] for row in answers] == list(GALLERY_PILLS)  # each crop finds its own pill

    figures = build.summarise(result, firmware)
    assert figures["flash"]["model_bytes"] == len(tiny_model["bytes"])
    assert figures["flash"]["test_crops_bytes"] == tiny_crops.size
    assert figures["ram"]["arena_used_bytes"] <= figures["ram"]["arena_bytes"]
    assert figures["ram"]["stack_bytes"] > 0 and figures["instructions_per_inference"]["median"] > 0
    # every operator timed, in the model's order, and the ops hold nearly all of an inference
    assert [row["op"] for row in figures["per_op"]] == tiny_model["ops"]
    assert all(row["instructions"] > 0 for row in figures["per_op"])
    summary = figures["per_op_summary"]
    assert 0 < summary["outside_ops_instructions"] < 0.1 * figures["instructions_per_inference"]["median"]
    assert figures["instructions_per_identification"]["median"] == views * figures["instructions_per_inference"]["median"]


# --- the benchmark report's row -------------------------------------------------------------------


def test_benchmark_has_a_cortex_m_row_beside_the_host_runtimes_only_when_built():
    report = json.loads((ROOT / "reports" / "benchmark.json").read_text())
    report.pop("firmware", None)  # a report of a bench run before the firmware stage existed
    assert not any("Cortex-M" in line for line in to_markdown(report).splitlines())
    report["firmware"] = {"built": False, "profile": "mcu", "missing": ["qemu-system-arm"]}
    assert not any("Cortex-M" in line for line in to_markdown(report).splitlines())
    report["firmware"] = {
        "built": True, "profile": report["pipeline_profile"], "core": "cortex-m4", "machine": "mps2-an386",
        "flash_bytes": 400 * 1024, "ram": {"arena_used_bytes": 90 * 1024, "arena_bytes": 120 * 1024},
        "instructions_per_inference": {"median": 12_800_000.0}, "estimated_latency_ms": 200.0,
        "latency_assumption": {"board": "a test board", "clock_mhz": 64, "cycles_per_instruction": 1.0},
        "agreement": {"crops": 4, "tflite_micro": {"max_step_difference": 0}}}
    lines = to_markdown(report).splitlines()
    table = [line for line in lines if line.startswith(f"| {report['pipeline_profile']} | student, QAT int8 |")]
    row = next(index for index, line in enumerate(table) if "Cortex-M (emulated, cortex-m4)" in line)
    assert "| 400 KiB flash | 90 KiB |" in table[row] and "| ≈200 |" in table[row]
    assert "TFLite Micro (host)" in table[row - 1]  # right after the same model's host rows
    assert any(line.startswith("- Cortex-M (emulated):") and "12,800,000 instructions" in line for line in lines)
