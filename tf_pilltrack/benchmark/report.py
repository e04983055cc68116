"""The report a person reads: `reports/benchmark.md` from the report's figures (`to_markdown`),
its cell and table helpers, the Cortex-M (emulated) row from stage `firmware`'s figures, and the
targets (params.yaml's bench.targets) judged against the measured figures (`evaluate_targets`)."""

from __future__ import annotations

from tf_pilltrack.benchmark.entries import MODEL_LABELS, NOT_MEASURED, NOT_TRAINED, SHIPPED_MODEL, entry_id
from tf_pilltrack.settings import BenchTargets
from tf_pilltrack.tflite.parity import PARITY_BUILTIN, PARITY_LABEL


# ---------------------------------------------------------------------------------------------
# The targets
# ---------------------------------------------------------------------------------------------


def evaluate_targets(report: dict, targets: BenchTargets) -> list[dict]:
    """The targets (bench.targets) for `targets.profile`: one row each, measured value or None."""
    profile = targets.profile
    by_id = {entry["id"]: entry for entry in report["models"]}
    shipped = by_id.get(entry_id(profile, SHIPPED_MODEL))
    reference = by_id["reference"]
    rows = []

    def add(name: str, measured, limit, at_least: bool, unit: str, note: str = "") -> None:
        met = None if measured is None else (measured >= limit if at_least else measured <= limit)
        rows.append({"target": name, "measured": measured, "limit": limit, "at_least": at_least, "unit": unit,
                     "met": met, "note": note})

    gallery = targets.gallery_size
    step = (shipped or {}).get("device_step")
    measured_step = step["median_ms"] if step and step["measured"] and step.get("gallery_size") == gallery else None
    note = "" if measured_step is not None else f"device step not measured with a {gallery} gallery for {profile}"
    if step and measured_step is not None and step.get("with_localise_median_ms") is not None:
        note = f"{step['with_localise_median_ms']:.3f} ms with localisation on a full photo"
    add(f"{profile}: device step (preprocess + invoke + search), median, {gallery} gallery", measured_step,
        targets.max_device_step_ms, False, "ms", note)
    speed = None
    if shipped and "median_ms" in shipped["latency"].get("litert_1", {}):
        speed = reference["latency"]["litert_1"]["median_ms"] / shipped["latency"]["litert_1"]["median_ms"]
    add(f"{profile}: times faster than the reference (LiteRT, 1 thread)", speed, targets.min_speedup, True, "x")
    size = reference["bytes"] / shipped["bytes"] if shipped else None
    add(f"{profile}: times smaller than the reference (int8 file)", size, targets.min_size_ratio, True, "x")
    annoy = {row["gallery_size"]: row for row in report["search"] if row.get("library") == "annoy"}
    for size_key in sorted(key for key in annoy if key >= gallery) or [gallery]:
        row = annoy.get(size_key)
        add(f"Annoy top-1 agreement with exact search, {size_key} gallery", row["top1_agreement"] if row else None,
            targets.min_annoy_agreement, True, "", "" if row else NOT_MEASURED)
    row = annoy.get(gallery)
    add(f"Annoy lookup, median, {gallery} gallery", row["median_us"] if row else None, targets.max_annoy_lookup_us,
        False, "µs", "" if row else NOT_MEASURED)
    return rows


# ---------------------------------------------------------------------------------------------
# Cells and tables
# ---------------------------------------------------------------------------------------------


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:,.0f} KiB" if value < 10 * 1024 * 1024 else f"{value / 1024 / 1024:,.1f} MiB"


def _macs(value: int | None) -> str:
    if not value:
        return "—"
    return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.1f} M"


def _number(value, digits: int = 3, prefix: str = "") -> str:
    return "—" if value is None else f"{prefix}{value:.{digits}f}"


def _params_cell(values) -> str:
    if not isinstance(values, dict):
        return ""
    return ", ".join(f"{key} {value}" for key, value in values.items() if isinstance(value, (int, float, str))
                     and key not in ("call", "seed"))


def _accuracy_cell(entry: dict, kind: str, metric: str) -> str:
    values = entry["accuracy"][kind]
    if values and metric in values:
        return f"{values[metric]:.3f}"
    if entry["model"] in ("reference", "peak_conv"):
        return "—"
    if entry["trained"] is False:
        return "not trained"
    return NOT_MEASURED


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _share(fraction: float) -> str:
    """A fraction as a percentage; a nonzero one too small for two decimals as "< 0.01%"."""
    return "< 0.01%" if 0.0 < fraction < 0.00005 else f"{fraction:.2%}"


def _parity_lines(parity: dict, labels: dict) -> list[str]:
    """The runtime-parity paragraph and tables: each runtime's raw int8 outputs and top-1 answers
    against the device's (LiteRT, XNNPACK), judged by the per-op tolerance; then each op alone, per
    pair of kernels."""
    labels = dict(labels, **{PARITY_BUILTIN: PARITY_LABEL})
    per_op = parity["per_op"]
    lines = [f"`{parity['model']}` on the evaluation gallery ({parity['gallery']:,} references) and "
             f"{parity['queries']:,} of {parity['queries_available']:,} queries, every runtime given the same uint8 "
             f"crops. Stated tolerance (tf_pilltrack/tflite/parity.py): each op alone, given identical inputs, within "
             f"{per_op['tolerance_steps']} int8 step between any two runtimes' kernels; tflite-runtime bit-exact with "
             "LiteRT's builtin kernels (the same kernels). The whole-model differences are those per-op roundings "
             "accumulated over the graph: reported, not judged. Δ: raw int8 output differences (one step: output "
             f"scale {parity['output_scale']:.4g}) from the device's, {labels[parity['reference_runtime']]} (XNNPACK, "
             "as `edge_runtime.interpreter` runs it), and from LiteRT's builtin kernels; per-op Δ: the largest "
             "difference of one op alone between this runtime's kernels and those two. Top-1: exact cosine nearest "
             "neighbour over the gallery embedded by the same runtime; cosine gap: the largest, over changed answers, "
             "of the device's similarity to its own top-1 item minus to this runtime's (small: a near tie).", ""]
    rows = []
    for name, row in parity["runtimes"].items():
        per_op_cells = [f"{row['per_op_max_steps']} / {row['per_op_max_steps_builtin']}",
                        f"≤ {row['tolerance_steps']} / ≤ {row['tolerance_steps_builtin']}"]
        if "error" in row:
            rows.append([labels[name], row["error"], "", "", *per_op_cells] + [""] * 7)
            continue
        gap = row["changed_max_cosine_gap"]
        rows.append([labels[name], str(row["max_abs_steps"]), f"{row['mean_abs_steps']:.3f}",
                     str(row["max_abs_steps_builtin"]), *per_op_cells,
                     "yes" if row["within_tolerance"] else "**no**", f"{row['identical_values']:.1%}",
                     f"{row['identical_embeddings']:.1%}", f"{row['top1_agreement']:.1%}",
                     f"{row['top1_index_agreement']:.1%}", "—" if gap is None else f"{gap:.4f}",
                     f"{row['recall_at_1']:.3f}"])
    lines += _table(["runtime", "max Δ vs device", "mean Δ vs device", "max Δ vs builtin",
                     "per-op Δ (device / builtin)", "tolerance per op", "within", "identical values",
                     "identical embeddings", "same top-1 answer", "same top-1 gallery item", "cosine gap",
                     "Recall@1 (exact)"], rows)
    lines += ["", f"Each of the {per_op['ops']} ops alone, fed LiteRT builtin kernels' own intermediates of the same "
              f"{per_op['inputs']:,} inputs (xnnpack: LiteRT with XNNPACK; builtin, ref: LiteRT's builtin and "
              "reference kernels; tflm: TFLite Micro). Op types: how many ops of the type differ, their largest "
              "difference and share of values differing; first divergent op: where the whole graph first differs.",
              ""]
    pair_rows = []
    for pair, figures in per_op["pairs"].items():
        types = ", ".join(f"{op_type} ×{worst['ops']} ≤ {worst['max_steps']} ({_share(worst['max_differing'])})"
                          for op_type, worst in figures["op_types"].items()) or "none"
        first = figures["first_divergent_op"]
        pair_rows.append([pair.replace("_vs_", " vs "), str(figures["max_steps"]), types,
                          "none (bit-exact)" if first is None else f"{first['index']} {first['type']}",
                          "yes" if figures["within_per_op_tolerance"] else "**no**"])
    return lines + _table(["kernels", "max Δ, op alone", "op types that differ alone", "first divergent op",
                           f"within ≤ {per_op['tolerance_steps']}"], pair_rows)


def cortex_m_row(report: dict) -> tuple[list[list[str]], list[str]]:
    """The "Cortex-M (emulated)" row of the models table and its note, from stage `firmware`'s
    metrics/firmware.json (none when it is absent or the firmware was not built): its latency is
    an estimate from the instructions counted under QEMU, not a timing of this machine."""
    firmware = report.get("firmware")
    if not firmware or not firmware.get("built"):
        return [], []
    shipped = next((entry for entry in report["models"]
                    if entry["id"] == entry_id(firmware["profile"], SHIPPED_MODEL)), None)
    assumption = firmware["latency_assumption"]
    row = [firmware["profile"], MODEL_LABELS[SHIPPED_MODEL], f"Cortex-M (emulated, {firmware['core']})",
           *[NOT_MEASURED] * 4, f"{_bytes(firmware['flash_bytes'])} flash", _bytes(firmware["ram"]["arena_used_bytes"]),
           _macs(shipped["macs"]) if shipped else "", f"≈{firmware['estimated_latency_ms']:.0f}", "", "", "", "", ""]
    note = (f"Cortex-M (emulated): `pilltrack firmware` (metrics/firmware.json), TFLite Micro with CMSIS-NN on "
            f"QEMU {firmware['machine']}; size: the firmware's flash (model, runtime, kernels); invoke ≈: "
            f"{firmware['instructions_per_inference']['median']:,.0f} instructions per inference counted by QEMU × "
            f"{assumption['cycles_per_instruction']:g} cycles per instruction at {assumption['clock_mhz']:g} MHz "
            f"({assumption['board']}): an estimate, not timed; TFLM arena: used of the reserved "
            f"{_bytes(firmware['ram']['arena_bytes'])}. Its int8 outputs for {firmware['agreement']['crops']} real crops "
            f"differ from TFLite Micro's on this host by at most "
            f"{firmware['agreement']['tflite_micro']['max_step_difference']} steps.")
    return [row], [note]


# ---------------------------------------------------------------------------------------------
# The Markdown report, section by section
# ---------------------------------------------------------------------------------------------


def _header_lines(report: dict) -> list[str]:
    """The title, the machine and settings of the run, and what the models table's columns mean."""
    machine = report["machine"]
    settings = report["settings"]
    return [
        "# PillTrack benchmark",
        "",
        f"`pilltrack bench`, {report['generated']}, on {machine['cpu']} ({machine['cores']} cores; load average "
        f"{machine['load_average_at_start'][0]} at start, {machine['load_average_at_end'][0]} at end); "
        f"{report['seconds']:.0f} s. Pipeline profile `{report['pipeline_profile']}`; "
        f"{settings['repeats']} timed invocations per model (TFLite Micro {settings['micro_repeats']}), after 10 untimed; "
        f"LiteRT {report.get('litert_version')}, tflite-runtime {report['tflite_runtime'].get('version') or report['tflite_runtime']['error']}.",
        "",
        "## Models × runtimes",
        "",
        "Accuracy: novel-class retrieval (`metrics/evaluation.json`; synthetic pills never trained on; real photos "
        "where the evaluation has them). × reference: invoke median / the reference model's under the same runtime. "
        "Floor: MACs / the runtime's measured int8 throughput (table below); floor / invoke: how close the invoke "
        "gets to it. Device step: preprocess + invoke + search, median ms, LiteRT 1 thread.",
        "",
    ]


def _models_lines(report: dict, labels: dict) -> list[str]:
    """The models × runtimes table (the Cortex-M row after its model's host rows) and its notes."""
    rows = []
    for entry in report["models"]:
        for runtime, timing in entry["latency"].items():
            step = entry.get("device_step") if runtime == "litert_1" else None
            step_cell = "" if not step else (f"{step['median_ms']:.3f}" if step["measured"] else f"≈{step['median_ms']:.3f}")
            measured = "median_ms" in timing
            size = _bytes(entry["bytes"]) + ("" if entry["size_kind"] in (None, "int8 file") else " (fp32 weights)")
            rows.append([
                entry["profile"] or "—", entry["label"], labels[runtime],
                _accuracy_cell(entry, "synthetic", "recall_at_1"), _accuracy_cell(entry, "synthetic", "map_at_r"),
                _accuracy_cell(entry, "real", "recall_at_1"), _accuracy_cell(entry, "real", "map_at_r"),
                size, _bytes(entry["arena_bytes"]), _macs(entry["macs"]),
                _number(timing.get("median_ms")) if measured else timing.get("error", NOT_MEASURED),
                _number(timing.get("p95_ms")) if measured else "",
                _number(timing.get("reference_ratio")), _number(timing.get("floor_ms")),
                "—" if timing.get("floor_fraction") is None else f"{timing['floor_fraction']:.0%}", step_cell,
            ])
    firmware_rows, firmware_note = cortex_m_row(report)
    for firmware_row in firmware_rows:  # after the same model's host rows
        same = [index for index, row in enumerate(rows) if row[:2] == firmware_row[:2]]
        rows.insert(same[-1] + 1 if same else len(rows), firmware_row)
    lines = _table(["profile", "model", "runtime", "Recall@1 synth", "mAP@R synth", "Recall@1 real", "mAP@R real",
                   "size", "TFLM arena", "MACs", "invoke median ms", "p95 ms", "× reference", "floor ms",
                   "floor / invoke", "device step ms"], rows)
    untrained = sorted({entry["profile"] for entry in report["models"] if entry["trained"] is False})
    notes = []
    if untrained:
        notes.append(f"Profile(s) {', '.join(untrained)}: {NOT_TRAINED}: built from params.yaml's architecture with "
                     "untrained weights and exported to int8 as `pilltrack export` does (arena, MACs, ops and "
                     "latency do not depend on the weights; accuracy does, and so does the file size by a few per "
                     "cent: the converter stores identical constant tensors once, and an untrained model's biases are "
                     "all zero). `--artefacts PROFILE=DIR` uses a trained run.")
    if any(entry.get("device_step") and not entry["device_step"]["measured"] for entry in report["models"]):
        notes.append("≈: device step estimated: the shipped model's measured device step with its invoke median "
                     "replaced by this model's (LiteRT, 1 thread; same preprocessing, search and I/O conversion).")
    real_what = next((entry["accuracy"].get("real_what") for entry in report["models"] if entry["accuracy"].get("real_what")), None)
    notes.append(f"Real columns: {real_what}; models the episodes do not evaluate say {NOT_MEASURED}." if real_what
                 else f"Real columns: {NOT_MEASURED} (metrics/evaluation.json has no real-photo episodes).")
    notes.append("Keras rows: size is float32 weights; the reference's TensorFlow row is the same architecture in Keras float32.")
    notes += firmware_note
    return lines + [""] + [f"- {note}" for note in notes]


def _throughput_lines(report: dict, labels: dict) -> list[str]:
    """The int8 throughput convolution under each runtime: the compute floor."""
    lines = ["", "## int8 throughput: the compute floor", ""]
    peak = next(entry for entry in report["models"] if entry["model"] == "peak_conv")
    rows = [[labels[runtime], peak["source"], _macs(peak["macs"]), _number(timing.get("median_ms")),
             _number(report["peak_int8_macs_per_second"].get(runtime, 0) / 1e9, 1)]
            for runtime, timing in peak["latency"].items() if "median_ms" in timing]
    return lines + _table(["runtime", "convolution", "MACs", "median ms", "GMAC/s"], rows)


def _size_lines(report: dict) -> list[str]:
    """Size, TFLite Micro arena, MACs, ops and the Edge TPU verdict of every int8 model."""
    lines = ["", "## Size, TFLite Micro arena and the Edge TPU op report", ""]
    rows = []
    for entry in report["models"]:
        if entry["format"] != "int8 TFLite" or entry["model"] == "peak_conv":
            continue
        edgetpu = entry["edgetpu"]
        verdict = "compatible" if edgetpu["compatible"] else "not compatible"
        problems = ", ".join(filter(None, [
            f"CPU ops {', '.join(edgetpu['cpu_ops'])}" if edgetpu["cpu_ops"] else "",
            f"{len(edgetpu['float_tensors'])} float tensors" if edgetpu["float_tensors"] else "",
            f"{len(edgetpu['dynamic_tensors'])} dynamic tensors" if edgetpu["dynamic_tensors"] else "",
            f"batch {edgetpu['batch']}" if edgetpu["batch"] != 1 else ""]))
        reference = next(item for item in report["models"] if item["model"] == "reference")
        rows.append([entry["profile"] or "—", entry["label"], _bytes(entry["bytes"]),
                     f"{reference['bytes'] / entry['bytes']:.1f}x", _bytes(entry["arena_bytes"]), _macs(entry["macs"]),
                     ", ".join(entry["ops"]), verdict + (f" ({problems})" if problems else ""),
                     "yes" if entry["trained"] else ("—" if entry["trained"] is None else "no")])
    return lines + _table(["profile", "model", "int8 size", "reference / size", "TFLM arena", "MACs", "ops",
                           "Edge TPU (checkable rules)", "trained"], rows)


def _search_lines(report: dict) -> list[str]:
    """The search benchmark's rows and the shipped model's device step, stage by stage."""
    lines = ["", "## Search (`tf_pilltrack/benchmark/edge_speed.py`)", ""]
    if report["search"]:
        rows = [[row.get("library"), f"{row.get('gallery_size'):,}", _number(row.get("top1_agreement")),
                 _number(row.get("median_us"), 1), _number(row.get("p95_us"), 1), _number(row.get("build_s"), 2),
                 _bytes(row.get("index_bytes")), _params_cell(row.get("params"))]
                for row in report["search"]]
        lines += _table(["library", "gallery", "top-1 agreement with exact", "median µs", "p95 µs", "build s",
                         "index size", "params"], rows)
    else:
        lines.append(f"{NOT_MEASURED}: {report['search_benchmark'].get('error', 'no search rows in its report')}")
    step = report["device_step"]
    if step:
        lines += ["", f"Device step, {step.get('gallery_size', '?'):,} gallery, LiteRT 1 thread, shipped model:", ""]
        rows = [[stage, _number(values.get("median_ms")), _number(values.get("p95_ms"))]
                for stage, values in step["stages"].items()]
        rows += [["**preprocess + invoke + search**", _number(step["total_without_localise"].get("median_ms")),
                  _number(step["total_without_localise"].get("p95_ms"))]]
        if "total" in step:
            rows += [["total with localisation", _number(step["total"].get("median_ms")), _number(step["total"].get("p95_ms"))]]
        lines += _table(["stage", "median ms", "p95 ms"], rows)
    return lines


def _targets_lines(report: dict) -> list[str]:
    """The targets table: measured, limit and verdict of each."""
    lines = ["", f"## Targets (profile `{report['settings']['targets']['profile']}`)", ""]
    rows = []
    for row in report["targets"]:
        limit = ("≥ " if row["at_least"] else "≤ ") + f"{row['limit']:g} {row['unit']}".strip()
        measured = NOT_MEASURED if row["measured"] is None else f"{row['measured']:.3f} {row['unit']}".strip()
        verdict = "—" if row["met"] is None else ("**met**" if row["met"] else "**not met**")
        rows.append([row["target"], measured, limit, verdict, row["note"]])
    return lines + _table(["target", "measured", "target", "result", "note"], rows)


def _training_lines(report: dict) -> list[str]:
    """The pipeline's training figures and the `dvc repro` wall time."""
    lines = ["", f"## Training (profile `{report['pipeline_profile']}`, pipeline figures)", ""]
    rows = []
    for stage in ("teacher", "distill"):
        values = report["training"].get(stage)
        rows.append([stage, _number(values.get("images_per_second"), 1) if values else NOT_MEASURED,
                     _number(values.get("seconds"), 1) if values else NOT_MEASURED])
    rows.append(["export", "—", _number(report["training"].get("export_seconds"), 1)])
    repro = report["repro_seconds"]
    rows.append(["`dvc repro` (whole default pipeline, wall)", "—",
                 f"{repro:.0f} ({repro / 60:.1f} min)" if repro is not None else "not given (--repro-seconds / --repro-times)"])
    return lines + _table(["stage", "images / s", "seconds"], rows)


def to_markdown(report: dict) -> str:
    """`reports/benchmark.md`: every table of the report, section by section."""
    labels = report["runtimes"]
    lines = _header_lines(report) + _models_lines(report, labels)
    lines += _throughput_lines(report, labels) + _size_lines(report)
    lines += ["", "## Runtime parity (shipped int8 model)", ""]
    lines += _parity_lines(report["parity"], labels)
    lines += _search_lines(report) + _targets_lines(report) + _training_lines(report)
    lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in report["plots"]), ""]
    return "\n".join(lines)
