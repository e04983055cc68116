"""Runtime parity of an int8 model: how far the runtimes' raw outputs are apart, and why.

The shipped int8 student (uint8 pixels in, int8 embedding out) runs under LiteRT as the device
runs it (`edge_runtime.interpreter`: the XNNPACK delegate), LiteRT's builtin kernels, LiteRT's
reference kernels, tflite-runtime (the edge environment) and TFLite Micro. Their raw outputs are
not bit-identical. The stated tolerance:

- Per op: given identical input tensors, any two of these runtimes give the same int8 output
  within 1 step (one step: that op's output scale). `measure_op_divergence` checks it on every op
  of a model, each alone (tests/tf_pilltrack/tflite/test_parity.py on a tiny model, `pilltrack bench`
  on the shipped one). Where runtimes differ, they round a requantisation differently: XNNPACK and LiteRT's
  builtin kernels in CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and MEAN (in MEAN, XNNPACK's is
  the correctly rounded result); TFLite Micro and the builtin kernels in the linear (no ReLU6)
  CONV_2D and in FULLY_CONNECTED, where one rounds exact halves of negative values away from zero
  and the other up; TFLite Micro and LiteRT's reference kernels in FULLY_CONNECTED only. QUANTIZE
  is exact everywhere, and so is ADD but for XNNPACK's, off by 1 step on a few values in a million.
- tflite-runtime runs LiteRT's builtin kernels (an older build): bit-exact with them, whole model.
- Whole model: no bound in steps is stated. Each op's ±1 step goes into every later op and is
  summed again at every residual ADD, so the runtimes' embeddings differ by several steps and a
  query's top-1 gallery item changes where two items are near ties. That is the per-op rounding
  accumulated, not a bug of any runtime: `runtime_parity` reports the whole-model figures as they
  are, and judges each runtime by the per-op tolerance.

This module imports no TensorFlow at import time: `interpreter_outputs` and `runtime_version` run
in the tflite-runtime environment (NumPy 1, no TensorFlow) too, through `run_in_tflite_runtime`.

Why one module of about 480 lines: one measurement in three sections (running a model under each
runtime; isolating each op of a graph; the whole-model figures and the judgement), whose parts
only `pilltrack bench` and tests/tf_pilltrack/tflite/test_parity.py use, and the tolerance above that ties
them together.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import pathlib
import subprocess
from typing import Callable

import numpy as np

from edge_runtime.preprocessing import symmetric_views
from tf_pilltrack.tflite import micro

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]  # where the code (and its environments) live

# One-op and whole-model runs of `measure_op_divergence`, by the kernels that run the ops:
# "xnnpack": LiteRT with its default XNNPACK delegate (as the device runs it); "builtin": LiteRT's
# builtin kernels (`micro._lite_interpreter`), whose intermediates feed the one-op models; "ref":
# LiteRT's reference kernels (OpResolverType.BUILTIN_REF); "tflm": TFLite Micro (reference
# kernels, x86 host build). Every pair is compared, named "a_vs_b" in this order. An op that XNNPACK
# does not take alone (a lone QUANTIZE) runs on the builtin kernels under "xnnpack" too.
RUNTIMES = ("xnnpack", "tflm", "builtin", "ref")
FEEDS_RUNTIME = "builtin"
PER_OP_TOLERANCE_STEPS = 1  # stated: per op, between any two runtimes, given identical inputs

# The whole-model runtimes of `runtime_parity` and the kernels that run their ops, by the names of
# RUNTIMES (tflite-runtime: LiteRT's builtin kernels, an older build).
PARITY_DEVICE = "litert_1"  # LiteRT as the device runs it: edge_runtime.interpreter, XNNPACK, 1 thread
PARITY_BUILTIN = "litert_builtin"  # LiteRT's builtin kernels, without XNNPACK (micro._lite_interpreter)
PARITY_LABEL = "LiteRT, builtin kernels (no XNNPACK)"
PARITY_KERNELS = {PARITY_DEVICE: "xnnpack", PARITY_BUILTIN: "builtin", "tflite_runtime_1": "builtin", "tflm": "tflm"}


# ---------------------------------------------------------------------------------------------
# Running the model under each runtime
# ---------------------------------------------------------------------------------------------


def runtime_version(module_name: str) -> str:
    """The installed version of "ai_edge_litert" or "tflite_runtime" ("unknown" if unreadable)."""
    try:
        from importlib import metadata

        return metadata.version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[module_name])
    except Exception:  # noqa: BLE001 - a version string is informative only
        return "unknown"


def run_in_tflite_runtime(python: pathlib.Path, script: str, arguments: list[str]) -> dict:
    """Run `script` (it prints one JSON line with "runtime") under the tflite-runtime
    environment's interpreter (NumPy 1, no TensorFlow), with the repository importable. Its JSON,
    or {"error": reason} where that environment is not installed, the script fails or the
    environment runs another runtime."""
    if not python.exists():
        return {"error": f"not installed ({python} is missing; `bash scripts/bootstrap.sh edge-tflite`)"}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    finished = subprocess.run([str(python), "-c", script, *arguments], capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        return {"error": f"failed ({finished.returncode}): {finished.stderr.strip()[-500:]}"}
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    if result["runtime"] != "tflite_runtime":
        return {"error": f"{python} runs {result['runtime']}, not tflite_runtime"}
    return result


_OUTPUTS_SCRIPT = (
    "import json, sys\n"
    "import numpy as np\n"
    "from edge_runtime import interpreter as runtime\n"
    "from tf_pilltrack.tflite.parity import interpreter_outputs, runtime_version\n"
    "with np.load(sys.argv[2]) as data:\n"
    "    outputs = interpreter_outputs(runtime.make_interpreter(sys.argv[1], threads=1), data['inputs'])\n"
    "np.save(sys.argv[3], outputs)\n"
    "print(json.dumps({'runtime': runtime.runtime_name(), 'version': runtime_version(runtime.runtime_name())}))\n"
)


def interpreter_outputs(interpreter, inputs: np.ndarray) -> np.ndarray:
    """Raw output tensors (N, ...) of an interpreter (`edge_runtime.interpreter.make_interpreter`:
    LiteRT, else tflite-runtime) for N input tensors set as they are, one invocation each.
    Imports no TensorFlow (it runs in the edge environments too)."""
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for tensor in inputs:
        interpreter.set_tensor(input_index, tensor[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(outputs)


def tflite_runtime_outputs(python: pathlib.Path, model_path: pathlib.Path, inputs: np.ndarray,
                           workdir: pathlib.Path) -> dict:
    """`interpreter_outputs` under tflite-runtime (a subprocess of its environment; the inputs
    and outputs go through .npz / .npy files in `workdir`): {"outputs", "version"} or {"error"}."""
    sent, received = workdir / "parity_inputs.npz", workdir / "parity_outputs.npy"
    np.savez(sent, inputs=inputs)
    result = run_in_tflite_runtime(python, _OUTPUTS_SCRIPT, [str(model_path.resolve()), str(sent), str(received)])
    if "error" not in result:
        result["outputs"] = np.load(received)
    return result


def micro_outputs(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Raw output tensors (N, ...) under the TFLite Micro interpreter, one invocation per input."""
    interpreter = micro.micro_interpreter(model)
    return np.stack([micro.micro_invoke(interpreter, tensor[None])[0] for tensor in inputs])


def make_invoker(model: bytes, runtime: str, outputs: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A function that runs `model` under one of RUNTIMES on one set of input tensors (input j:
    feeds[j], batch axis included) and returns copies of its first `outputs` output tensors."""
    if runtime == "tflm":
        interpreter = micro.micro_interpreter(model)

        def invoke_micro(feeds: list[np.ndarray]) -> list[np.ndarray]:
            for j, feed in enumerate(feeds):
                interpreter.set_input(feed, j)
            interpreter.invoke()
            return [np.array(interpreter.get_output(k)) for k in range(outputs)]

        return invoke_micro
    if runtime == "builtin":
        interpreter = micro._lite_interpreter(model)
    else:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = {"xnnpack": OpResolverType.AUTO, "ref": OpResolverType.BUILTIN_REF}[runtime]
        interpreter = Interpreter(model_content=model, num_threads=1, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    input_indices = [detail["index"] for detail in interpreter.get_input_details()]
    output_indices = [detail["index"] for detail in interpreter.get_output_details()[:outputs]]

    def invoke_litert(feeds: list[np.ndarray]) -> list[np.ndarray]:
        for index, feed in zip(input_indices, feeds):
            interpreter.set_tensor(index, feed)
        interpreter.invoke()
        return [interpreter.get_tensor(index).copy() for index in output_indices]

    return invoke_litert


# ---------------------------------------------------------------------------------------------
# Per op: each op alone, and the whole graph with its intermediates exposed
# ---------------------------------------------------------------------------------------------


def read_graph(model: bytes):
    """The model as a mutable flatbuffer object (tensorflow.lite.tools.flatbuffer_utils)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def rewrite_graph(graph, inputs: list[int], outputs: list[int], operators: list[int] | None = None) -> bytes:
    """A copy of the one-subgraph `graph` with new subgraph inputs and outputs (tensor indices)
    and, given `operators`, only those ops; every tensor and buffer is kept, so an op keeps its
    tensors' shapes, quantisation and constants. As model bytes."""
    from tensorflow.lite.tools import flatbuffer_utils

    copied = copy.deepcopy(graph)
    copied.signatureDefs = []  # they name the old inputs and outputs
    subgraph = copied.subgraphs[0]
    subgraph.inputs = np.array(inputs, np.int32)
    subgraph.outputs = np.array(outputs, np.int32)
    if operators is not None:
        subgraph.operators = [subgraph.operators[k] for k in operators]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(copied))


def expose_op_outputs(graph) -> bytes:
    """The model with every op's (first) output tensor as a subgraph output, in op order: a
    runtime runs the whole graph and hands out its intermediates; the output the model had is
    among them, unchanged."""
    subgraph = graph.subgraphs[0]
    return rewrite_graph(graph, [int(i) for i in subgraph.inputs], [int(op.outputs[0]) for op in subgraph.operators])


def op_feeds(graph, k: int) -> list[int]:
    """The tensors op `k` reads that are not constants (graph inputs or other ops' outputs), in
    the order of its inputs, each once: the inputs of its one-op model."""
    subgraph = graph.subgraphs[0]
    feeds = []
    for index in (int(i) for i in subgraph.operators[k].inputs):
        buffer = graph.buffers[subgraph.tensors[index].buffer] if index >= 0 else None
        constant = buffer is not None and ((buffer.data is not None and len(buffer.data) > 0)
                                           or bool(getattr(buffer, "offset", 0)))
        if index >= 0 and not constant and index not in feeds:
            feeds.append(index)
    return feeds


def isolate_op(graph, k: int) -> bytes:
    """A one-op model: op `k` of `graph` alone, its non-constant inputs (`op_feeds`) the
    subgraph's inputs and its first output the subgraph's output."""
    return rewrite_graph(graph, op_feeds(graph, k), [int(graph.subgraphs[0].operators[k].outputs[0])], operators=[k])


def _pair_key(first: str, second: str) -> str:
    return f"{first}_vs_{second}"


def _add_steps(tally: dict, k: int, pairs: list[tuple[str, str]], outputs: dict) -> None:
    """Add one invocation's |difference| in int8 steps of op k's output, per pair, to `tally`."""
    for p, (first, second) in enumerate(pairs):
        steps = np.abs(outputs[first].astype(np.int32) - outputs[second].astype(np.int32))
        tally["max"][k, p] = max(tally["max"][k, p], int(steps.max()))
        tally["sum"][k, p] += float(steps.sum())
        tally["differing"][k, p] += int(np.count_nonzero(steps))


def measure_op_divergence(model: bytes, inputs: np.ndarray, runtimes: tuple[str, ...] = RUNTIMES) -> dict:
    """How far `runtimes` (of RUNTIMES; FEEDS_RUNTIME among them) are apart at every op of a
    one-subgraph, one-input model, over `inputs` (N tensors of its input, without the batch
    axis), two ways:

    - isolated: each op alone (`isolate_op`), fed the tensors FEEDS_RUNTIME's whole-graph run gave
      it, the same for every runtime: what that op's kernels add. The per-op tolerance is about
      these.
    - chain: the whole graph with every op's output exposed (`expose_op_outputs`): what the op
      receives and adds, the accumulation that reaches the model's output.

    Returns {"inputs", "runtimes", "feeds", "ops": per op {"index", "type", "tensor", "isolated",
    "chain"}, each of the last two per pair "a_vs_b" {"max_steps", "mean_steps", "differing" (the
    fraction of values that differ)}; "first_divergent_op": per pair, the first op index at which
    the chain differs (None: bit-exact throughout); "exposed_output_identical": per runtime,
    whether the exposed model's copy of the model's output equals the model's own on every input
    (the rewrite changes nothing)}. Steps are of each op's output tensor (its own scale)."""
    from tensorflow.lite.tools import flatbuffer_utils

    if FEEDS_RUNTIME not in runtimes:
        raise ValueError(f"runtimes must include {FEEDS_RUNTIME!r}: its intermediates feed the one-op models")
    graph = read_graph(model)
    subgraph = graph.subgraphs[0]
    if len(subgraph.inputs) != 1:
        raise ValueError(f"the model must have one input, not {len(subgraph.inputs)}")
    ops = subgraph.operators
    produced = [int(op.outputs[0]) for op in ops]
    final = produced.index(int(subgraph.outputs[0]))
    feeds = [op_feeds(graph, k) for k in range(len(ops))]
    whole = {runtime: make_invoker(model, runtime, 1) for runtime in runtimes}
    exposed = expose_op_outputs(graph)
    chain = {runtime: make_invoker(exposed, runtime, len(ops)) for runtime in runtimes}
    alone = []
    for k in range(len(ops)):
        one_op = isolate_op(graph, k)
        alone.append({runtime: make_invoker(one_op, runtime, 1) for runtime in runtimes})
    pairs = list(itertools.combinations(runtimes, 2))
    tallies = {mode: {"max": np.zeros((len(ops), len(pairs)), np.int64), "sum": np.zeros((len(ops), len(pairs))),
                      "differing": np.zeros((len(ops), len(pairs)), np.int64)} for mode in ("isolated", "chain")}
    identical = dict.fromkeys(runtimes, True)
    for tensor in inputs:
        row = tensor[None]
        outputs = {runtime: chain[runtime]([row]) for runtime in runtimes}
        for runtime in runtimes:
            identical[runtime] &= bool(np.array_equal(whole[runtime]([row])[0], outputs[runtime][final]))
        values = dict(zip(produced, outputs[FEEDS_RUNTIME]))
        values[int(subgraph.inputs[0])] = row
        for k in range(len(ops)):
            _add_steps(tallies["chain"], k, pairs, {runtime: outputs[runtime][k] for runtime in runtimes})
            isolated = {runtime: alone[k][runtime]([values[index] for index in feeds[k]])[0] for runtime in runtimes}
            _add_steps(tallies["isolated"], k, pairs, isolated)

    sizes = [int(np.prod(subgraph.tensors[index].shape)) for index in produced]

    def figures(mode: str, k: int) -> dict:
        tally, count = tallies[mode], max(sizes[k] * len(inputs), 1)
        return {_pair_key(*pair): {"max_steps": int(tally["max"][k, p]), "mean_steps": float(tally["sum"][k, p] / count),
                                   "differing": float(tally["differing"][k, p] / count)}
                for p, pair in enumerate(pairs)}

    first = {}
    for p, pair in enumerate(pairs):
        divergent = np.flatnonzero(tallies["chain"]["max"][:, p])
        first[_pair_key(*pair)] = int(divergent[0]) if len(divergent) else None
    return {
        "inputs": int(len(inputs)), "runtimes": list(runtimes), "feeds": FEEDS_RUNTIME,
        "ops": [{"index": k, "type": flatbuffer_utils.opcode_to_name(graph, op.opcodeIndex),
                 "tensor": subgraph.tensors[produced[k]].name.decode(),
                 "isolated": figures("isolated", k), "chain": figures("chain", k)} for k, op in enumerate(ops)],
        "first_divergent_op": first,
        "exposed_output_identical": identical,
    }


def summarise_op_divergence(divergence: dict) -> dict:
    """Per pair of `measure_op_divergence`'s result: "max_steps", the largest isolated difference
    over all ops; "op_types", the op types that differ alone ({type: {"ops": how many, "max_steps",
    "max_differing"}}); "first_divergent_op" of the chain ({"index", "type"} or None); and
    "within_per_op_tolerance", max_steps <= PER_OP_TOLERANCE_STEPS."""
    summary = {}
    for pair, first in divergence["first_divergent_op"].items():
        op_types: dict = {}
        for op in divergence["ops"]:
            figures = op["isolated"][pair]
            if figures["max_steps"]:
                worst = op_types.setdefault(op["type"], {"ops": 0, "max_steps": 0, "max_differing": 0.0})
                worst["ops"] += 1
                worst["max_steps"] = max(worst["max_steps"], figures["max_steps"])
                worst["max_differing"] = max(worst["max_differing"], figures["differing"])
        largest = max((op["isolated"][pair]["max_steps"] for op in divergence["ops"]), default=0)
        summary[pair] = {
            "max_steps": largest, "op_types": op_types,
            "first_divergent_op": None if first is None else {"index": first, "type": divergence["ops"][first]["type"]},
            "within_per_op_tolerance": largest <= PER_OP_TOLERANCE_STEPS,
        }
    return summary


def per_op_steps(summary: dict, first: str, second: str) -> int:
    """The largest isolated difference between the kernels `first` and `second` (names of
    RUNTIMES) in a `summarise_op_divergence` result; 0 for the same kernels."""
    if first == second:
        return 0
    pair = summary.get(_pair_key(first, second)) or summary[_pair_key(second, first)]
    return pair["max_steps"]


# ---------------------------------------------------------------------------------------------
# Whole model: the shipped model's embeddings and answers under every runtime
# ---------------------------------------------------------------------------------------------


def _cosines(outputs: np.ndarray, output_detail: dict, gallery_count: int, views: int) -> np.ndarray:
    """Cosine similarity (Q, G) of each query to each gallery item, from raw outputs of `views`
    blocks of inputs (each: gallery rows first, then the queries; block v the crops' v-th
    symmetric view) dequantised, L2-normalised and averaged over the views as the device does
    (`edge_runtime.interpreter.embed`)."""
    from edge_runtime.interpreter import dequantise_output, l2_normalise

    per_view = l2_normalise(dequantise_output(outputs, output_detail).reshape(views, len(outputs) // views, -1))
    embeddings = per_view[0] if views == 1 else l2_normalise(per_view.sum(axis=0))
    return embeddings[gallery_count:] @ embeddings[:gallery_count].T


def _steps(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|outputs - reference| in int8 steps, one row per input."""
    return np.abs(outputs.astype(np.int32) - reference.astype(np.int32)).reshape(len(outputs), -1)


def parity_figures(outputs: np.ndarray, device: np.ndarray, builtin: np.ndarray, output_detail: dict,
                   gallery_labels: np.ndarray, query_labels: np.ndarray, views: int) -> dict:
    """One runtime's raw int8 outputs (gallery rows first, then the queries) against the device's
    (LiteRT, XNNPACK) and LiteRT's builtin kernels': differences in int8 steps, bit-identical
    fractions (of values and of whole embeddings); and its top-1 answers, exact cosine search over
    the gallery this same runtime embedded (each crop's `views` symmetric views averaged, as the
    device embeds; the outputs hold one block of inputs per view), against the device's. Where an answer differs, the
    cosine gap (under the device's embeddings) between the device's top-1 item and this runtime's
    tells a near tie from a real disagreement."""
    count = len(gallery_labels)
    steps, builtin_steps = _steps(outputs, device), _steps(outputs, builtin)
    top1 = np.argmax(_cosines(outputs, output_detail, count, views), axis=1)
    device_cosines = _cosines(device, output_detail, count, views)
    device_top1 = np.argmax(device_cosines, axis=1)
    answers = gallery_labels[top1]
    changed = answers != gallery_labels[device_top1]
    rows = np.arange(len(top1))
    gaps = device_cosines[rows, device_top1] - device_cosines[rows, top1]
    return {
        "max_abs_steps": int(steps.max()),
        "mean_abs_steps": float(steps.mean()),
        "identical_values": float((steps == 0).mean()),
        "identical_embeddings": float((steps == 0).all(axis=1).mean()),
        "max_abs_steps_builtin": int(builtin_steps.max()),
        "identical_values_builtin": float((builtin_steps == 0).mean()),
        "top1_agreement": float(1.0 - changed.mean()),
        "top1_index_agreement": float((top1 == device_top1).mean()),
        "changed_answers": int(changed.sum()),
        "changed_max_cosine_gap": float(gaps[changed].max()) if changed.any() else None,
        "recall_at_1": float((answers == query_labels).mean()),
    }


def judge_runtime(row: dict, kernels: str, per_op: dict) -> dict:
    """The stated tolerance for one whole-model runtime row (`parity_figures`) whose ops run on
    `kernels` (of RUNTIMES): its kernels' largest isolated difference from the device's and from
    the builtin kernels' ("per_op_max_steps", "per_op_max_steps_builtin"; `summarise_op_divergence`
    result `per_op`) within PER_OP_TOLERANCE_STEPS (0 for the same kernels); and where they are the
    device's or the builtin ones (tflite-runtime), whole-model outputs bit-identical to theirs.
    The row's whole-model steps are figures, not judged."""
    device, builtin = PARITY_KERNELS[PARITY_DEVICE], PARITY_KERNELS[PARITY_BUILTIN]
    judged = {
        "kernels": kernels,
        "tolerance_steps": 0 if kernels == device else PER_OP_TOLERANCE_STEPS,
        "tolerance_steps_builtin": 0 if kernels == builtin else PER_OP_TOLERANCE_STEPS,
        "per_op_max_steps": per_op_steps(per_op, kernels, device),
        "per_op_max_steps_builtin": per_op_steps(per_op, kernels, builtin),
    }
    same_kernels_steps = {device: row.get("max_abs_steps"), builtin: row.get("max_abs_steps_builtin")}.get(kernels, 0)
    judged["within_tolerance"] = (None if "error" in row else
                                  judged["per_op_max_steps"] <= judged["tolerance_steps"]
                                  and judged["per_op_max_steps_builtin"] <= judged["tolerance_steps_builtin"]
                                  and same_kernels_steps == 0)
    return judged


def runtime_parity(model_path: pathlib.Path, tflite_python: pathlib.Path, max_queries: int, seed: int,
                   workdir: pathlib.Path, views: int) -> dict:
    """The shipped int8 model on the evaluation gallery (references) and queries (`max_queries`
    of them, a seeded draw; 0: all) under LiteRT as the device runs it (XNNPACK), LiteRT's builtin
    kernels, tflite-runtime and TFLite Micro: each runtime's raw outputs and top-1 answers against
    the device's (`parity_figures`); every op alone under every pair of RUNTIMES on the same inputs
    ("per_op": `summarise_op_divergence`); each runtime judged by the per-op tolerance
    (`judge_runtime`). Every runtime gets the same uint8 input tensors: the crops' pixels, as the
    firmware passes them, in each of their `views` symmetric views (the bundle's symmetry_views:
    top-1 answers are the device's); the per-op check uses the crops as they are."""
    from edge_runtime import interpreter as runtime
    from tf_pilltrack.data import dataset

    gallery, queries = dataset.load_split("references"), dataset.load_split("queries")
    chosen = np.arange(len(queries))
    if 0 < max_queries < len(queries):
        chosen = np.sort(np.random.default_rng(seed).choice(len(queries), size=max_queries, replace=False))
    crops = np.concatenate([gallery.pixels, queries.pixels[chosen]]).astype(np.uint8)
    inputs = np.concatenate(symmetric_views(crops, views))
    model = model_path.read_bytes()
    device = runtime.make_interpreter(model_path, threads=1)
    output_detail = device.get_output_details()[0]
    outputs = {PARITY_DEVICE: interpreter_outputs(device, inputs),
               PARITY_BUILTIN: interpreter_outputs(micro._lite_interpreter(model), inputs)}
    edge = tflite_runtime_outputs(tflite_python, model_path, inputs, workdir)
    outputs["tflite_runtime_1"] = edge.get("outputs")
    outputs["tflm"] = micro_outputs(model, inputs)
    divergence = measure_op_divergence(model, crops)
    per_op = summarise_op_divergence(divergence)
    rows = {}
    for name, kernels in PARITY_KERNELS.items():
        if outputs[name] is None:
            row = {"error": edge["error"]}
        else:
            row = parity_figures(outputs[name], outputs[PARITY_DEVICE], outputs[PARITY_BUILTIN], output_detail,
                                 gallery.labels, queries.labels[chosen], views)
        rows[name] = dict(judge_runtime(row, kernels, per_op), **row)
    return {
        "model": str(model_path), "reference_runtime": PARITY_DEVICE, "builtin_runtime": PARITY_BUILTIN,
        "gallery": int(len(gallery)), "queries": int(len(chosen)), "queries_available": int(len(queries)),
        "output_scale": float(output_detail["quantization"][0]), "tflite_runtime_version": edge.get("version"),
        "input": f"the crops' uint8 pixels in {views} symmetric views, the same tensors for every runtime",
        "symmetry_views": views,
        "tolerance": f"per op, between any two runtimes given identical inputs: <= {PER_OP_TOLERANCE_STEPS} int8 "
                     "step (tf_pilltrack/tflite/parity.py, tests/tf_pilltrack/tflite/test_parity.py); a runtime is "
                     "within tolerance when its "
                     "kernels' largest isolated difference from the device's (XNNPACK) is <= tolerance_steps and "
                     "from LiteRT's builtin kernels' <= tolerance_steps_builtin, and a runtime on the device's or "
                     "the builtin kernels (tflite-runtime) gives their outputs bit for bit; whole-model steps and "
                     "top-1 agreement are reported, not judged (the per-op differences accumulate); top-1: exact "
                     "cosine nearest neighbour over the gallery embedded by the same runtime",
        "per_op": {"inputs": divergence["inputs"], "feeds": divergence["feeds"],
                   "tolerance_steps": PER_OP_TOLERANCE_STEPS, "ops": len(divergence["ops"]),
                   "exposed_output_identical": divergence["exposed_output_identical"], "pairs": per_op},
        "runtimes": rows,
    }
