"""The report's plots: novel-class Recall@1 against size and against invoke latency
(`benchmark_accuracy_vs_size.png`, `benchmark_accuracy_vs_latency.png`)."""

from __future__ import annotations

import pathlib

# The runtime whose invoke median is a model's latency in the plots, by its format.
ACCURACY_RUNTIME = {"Keras float32": "tensorflow", "int8 TFLite": "litert_1", "features (no model)": "numpy"}


def plot(report: dict, out_dir: pathlib.Path) -> list[str]:
    """Accuracy (novel-class Recall@1: synthetic filled, real-photo episodes hollow) against size
    and against invoke latency, one colour per trained model; the baseline and the reference as
    lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    entries = report["models"]
    trained = [entry for entry in entries if entry["accuracy"]["synthetic"] and entry["model"] != "baseline"]
    baseline = next((entry for entry in entries if entry["model"] == "baseline"), None)
    reference = next(entry for entry in entries if entry["model"] == "reference")
    written = []
    for name, axis_label, value_of, reference_value in (
        ("benchmark_accuracy_vs_size.png", "size, KiB (int8 file; float32 weights for Keras models)",
         lambda entry: entry["bytes"] / 1024 if entry["bytes"] else None, reference["bytes"] / 1024),
        ("benchmark_accuracy_vs_latency.png", "invoke median, ms (LiteRT 1 thread; TensorFlow for Keras models)",
         lambda entry: entry["latency"].get(ACCURACY_RUNTIME.get(entry["format"], ""), {}).get("median_ms"),
         reference["latency"].get("litert_1", {}).get("median_ms")),
    ):
        figure, axes = plt.subplots(figsize=(8, 5))
        handles = []
        for number, entry in enumerate(trained):
            value = value_of(entry)
            if value is None:
                continue
            colour = f"C{number % 10}"
            synthetic, real = entry["accuracy"]["synthetic"]["recall_at_1"], (entry["accuracy"]["real"] or {}).get("recall_at_1")
            axes.scatter(value, synthetic, marker="o", color=colour, zorder=3)
            if real is not None:
                axes.scatter(value, real, marker="s", facecolors="none", edgecolors=colour, zorder=3)
                axes.plot([value, value], [synthetic, real], color=colour, linewidth=0.6, zorder=2)
            handles.append(Line2D([], [], marker="o", color=colour, linestyle="none",
                                  label=f"{entry['profile']}: {entry['label']}"))
        handles += [Line2D([], [], marker="o", color="grey", linestyle="none", label="synthetic novel classes"),
                    Line2D([], [], marker="s", markerfacecolor="none", color="grey", linestyle="none",
                           label="real photos (episodes)")]
        if baseline:
            for kind, style in (("synthetic", "--"), ("real", "-.")):
                if baseline["accuracy"][kind]:
                    handles.append(axes.axhline(baseline["accuracy"][kind]["recall_at_1"], linestyle=style, color="grey",
                                                linewidth=1, label=f"colour/shape baseline ({kind})"))
        if reference_value:
            handles.append(axes.axvline(reference_value, linestyle=":", color="black",
                                        label="reference MobileNetV2 1.0 224 px int8"))
        axes.set_xscale("log")
        axes.margins(x=0.25)
        axes.set_xlabel(axis_label)
        axes.set_ylabel("novel-class Recall@1")
        axes.set_ylim(0.0, 1.0)
        axes.set_title(f"PillTrack: accuracy vs {'size' if 'size' in name else 'latency'} (trained models)")
        axes.legend(handles=handles, fontsize=7, loc="upper left")
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=120)
        plt.close(figure)
        written.append(name)
    return written
