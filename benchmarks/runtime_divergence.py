"""Find the op(s) where int8 runtimes start to disagree on a full-integer TFLite model.

A table over `tf_pilltrack.tflite.parity.measure_op_divergence`: the model under LiteRT's builtin kernels
(`micro._lite_interpreter`), LiteRT with its default XNNPACK delegate (as
`edge_runtime.interpreter.make_interpreter` runs it on the device), LiteRT's reference kernels
(OpResolverType.BUILTIN_REF) and TFLite Micro (reference kernels, `micro.micro_interpreter`), all on
the same uint8 inputs, every op's output tensor compared in int8 steps, two ways:

- chain: a copy of the model whose subgraph outputs are all op outputs, so every runtime runs
  the whole graph and exposes its intermediates (the last output equals the original model's);
  differences here are what the op receives *and* adds.
- isolated: each op alone (a one-op model with the original tensors and constants) fed the
  builtin run's own input tensors; differences here come from that op's kernel only. An op that
  XNNPACK does not take alone (a lone QUANTIZE, int8 AVERAGE_POOL_2D) runs on builtin kernels.

The model must have one input (uint8 pixels, as the student's). From the project root:

    .venv/bin/python -m benchmarks.runtime_divergence models/student_int8.tflite \
        --inputs data/prepared/queries.npz --count 200

Columns: max / mean |difference| in int8 steps and the % of values that differ; `<` marks the
first op at which a pair differs in the chain run. The summary lines cover every pair.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from tf_pilltrack.tflite import parity  # tf_pilltrack sets TF_USE_LEGACY_KERAS before TensorFlow loads

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the project root: the defaults' paths

COLUMNS = ("xnnpack_vs_builtin", "tflm_vs_builtin", "tflm_vs_ref")  # the pairs of the per-op table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("--inputs", type=pathlib.Path, default=ROOT / "data/prepared/queries.npz",
                        help="npz with uint8 `pixels` (N, H, W, C)")
    parser.add_argument("--count", type=int, default=200, help="how many inputs (the first ones)")
    args = parser.parse_args(argv)

    pixels = np.load(args.inputs)["pixels"][: args.count]
    divergence = parity.measure_op_divergence(args.model.read_bytes(), pixels)
    ops = divergence["ops"]
    same = ", ".join(f"{runtime} {identical}" for runtime, identical in divergence["exposed_output_identical"].items())
    print(f"{args.model}: {len(ops)} ops, {len(pixels)} inputs from {args.inputs}; the exposed model's "
          f"final output equals the original's under {same}")

    header = f"{'op':>3} {'type':<18} {'output tensor':<34}"
    print("\nchain (whole graph) | isolated (op alone, builtin's inputs): max/mean steps, % differing")
    print(header + "".join(f" | {pair.replace('_vs_', ' vs '):^27}" for pair in COLUMNS))
    for op in ops:
        tensor = op["tensor"].split(";")[0][-34:]
        cells = []
        for pair in COLUMNS:
            chain, alone = op["chain"][pair], op["isolated"][pair]
            mark = "<" if divergence["first_divergent_op"][pair] == op["index"] else " "
            cell = (f"{chain['max_steps']:2d}/{chain['mean_steps']:5.3f}/{100 * chain['differing']:4.1f}%{mark}"
                    f" {alone['max_steps']}/{100 * alone['differing']:4.1f}%")
            cells.append(f"{cell:<27}")
        print(f"{op['index']:>3} {op['type']:<18} {tensor:<34}" + "".join(f" | {c}" for c in cells))

    summary = parity.summarise_op_divergence(divergence)
    print("\nfirst divergent op (chain):")
    for pair, figures in summary.items():
        first = figures["first_divergent_op"]
        where = "none: bit-exact throughout" if first is None else f"op {first['index']} {first['type']}"
        print(f"  {pair.replace('_vs_', ' vs ')}: {where}")
    print("op types that diverge on their own (isolated, identical inputs): max steps, % values")
    for pair, figures in summary.items():
        types = ", ".join(f"{name} (x{worst['ops']}, <={worst['max_steps']}, <={100 * worst['max_differing']:.3g}%)"
                          for name, worst in figures["op_types"].items()) or "none"
        print(f"  {pair.replace('_vs_', ' vs ')}: {types}")
    worst = max(figures["max_steps"] for figures in summary.values())
    print(f"per-op tolerance (<= {parity.PER_OP_TOLERANCE_STEPS} step between any two runtimes): "
          f"{'holds' if worst <= parity.PER_OP_TOLERANCE_STEPS else 'BROKEN'}, largest {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
