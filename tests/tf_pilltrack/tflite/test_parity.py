"""Runtime parity (tf_pilltrack/tflite/parity.py) on the tiny int8 model of tests/edge_fixtures.py: the
stated per-op tolerance (every op alone within 1 int8 step between any two runtimes), the graph
rewrites it rests on, and how a whole-model runtime row is judged by it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tf_pilltrack  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

pytest.importorskip("tensorflow")

from tf_pilltrack.tflite import parity  # noqa: E402

SIZE = 32  # the tiny model's input side (tests/edge_fixtures.py)


@pytest.fixture(scope="module")
def tiny(edge_model_path):
    with open(edge_model_path, "rb") as handle:
        model = handle.read()
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, SIZE, SIZE, 3), dtype=np.uint8)
    return {"bytes": model, "pixels": pixels, "divergence": parity.measure_op_divergence(model, pixels)}


def test_every_op_alone_agrees_within_one_step_between_any_two_runtimes(tiny):
    divergence = tiny["divergence"]
    assert divergence["inputs"] == len(tiny["pixels"]) and divergence["runtimes"] == list(parity.RUNTIMES)
    assert len(divergence["ops"]) >= 3
    pairs = [f"{a}_vs_{b}" for a, b in itertools.combinations(parity.RUNTIMES, 2)]
    assert set(divergence["first_divergent_op"]) == set(pairs)
    for op in divergence["ops"]:
        assert set(op["isolated"]) == set(op["chain"]) == set(pairs)
        for pair, figures in op["isolated"].items():
            assert figures["max_steps"] <= parity.PER_OP_TOLERANCE_STEPS, (op["index"], op["type"], pair)
            assert 0.0 <= figures["mean_steps"] <= figures["differing"] * figures["max_steps"] + 1e-12
    summary = parity.summarise_op_divergence(divergence)
    assert all(figures["within_per_op_tolerance"] for figures in summary.values())
    for pair, figures in summary.items():
        first = divergence["first_divergent_op"][pair]
        chain_steps = [op["chain"][pair]["max_steps"] for op in divergence["ops"]]
        assert first == next((k for k, steps in enumerate(chain_steps) if steps), None)
        assert figures["max_steps"] == max(op["isolated"][pair]["max_steps"] for op in divergence["ops"])


def test_exposed_model_gives_the_models_own_output_under_every_runtime(tiny):
    assert tiny["divergence"]["exposed_output_identical"] == dict.fromkeys(parity.RUNTIMES, True)
    graph = parity.read_graph(tiny["bytes"])
    exposed = parity.expose_op_outputs(graph)
    final = [int(op.outputs[0]) for op in graph.subgraphs[0].operators].index(int(graph.subgraphs[0].outputs[0]))
    operators = len(graph.subgraphs[0].operators)
    for runtime in parity.RUNTIMES:
        whole, chain = parity.make_invoker(tiny["bytes"], runtime, 1), parity.make_invoker(exposed, runtime, operators)
        for pixels in tiny["pixels"]:
            np.testing.assert_array_equal(chain([pixels[None]])[final], whole([pixels[None]])[0], err_msg=runtime)


def test_each_op_alone_reproduces_its_tensor_in_the_graph_under_builtin_kernels(tiny):
    """The one-op models are the ops they were cut from: fed the builtin kernels' own
    intermediates, each gives the builtin whole-graph run's tensor bit for bit."""
    graph = parity.read_graph(tiny["bytes"])
    subgraph = graph.subgraphs[0]
    produced = [int(op.outputs[0]) for op in subgraph.operators]
    chain = parity.make_invoker(parity.expose_op_outputs(graph), "builtin", len(produced))
    for pixels in tiny["pixels"][:3]:
        values = dict(zip(produced, chain([pixels[None]])))
        values[int(subgraph.inputs[0])] = pixels[None]
        for k in range(len(produced)):
            one_op = parity.isolate_op(graph, k)
            alone = parity.read_graph(one_op).subgraphs[0]
            assert len(alone.operators) == 1 and list(alone.outputs) == [produced[k]]
            assert list(alone.inputs) == parity.op_feeds(graph, k)
            output = parity.make_invoker(one_op, "builtin", 1)([values[index] for index in parity.op_feeds(graph, k)])
            np.testing.assert_array_equal(output[0], values[produced[k]], err_msg=f"op {k}")


def test_the_feeds_runtime_is_required(tiny):
    with pytest.raises(ValueError, match="builtin"):
        parity.measure_op_divergence(tiny["bytes"], tiny["pixels"][:1], runtimes=("xnnpack", "tflm"))


def _summary(steps: dict) -> dict:
    return {pair: {"max_steps": value} for pair, value in steps.items()}


def test_runtimes_are_judged_by_the_per_op_tolerance_not_whole_model_steps():
    per_op = _summary({"xnnpack_vs_tflm": 1, "xnnpack_vs_builtin": 1, "tflm_vs_builtin": 1})
    accumulated = {"max_abs_steps": 9, "max_abs_steps_builtin": 8}
    tflm = parity.judge_runtime(accumulated, "tflm", per_op)
    assert tflm["within_tolerance"] is True
    assert (tflm["per_op_max_steps"], tflm["per_op_max_steps_builtin"]) == (1, 1)
    assert (tflm["tolerance_steps"], tflm["tolerance_steps_builtin"]) == (1, 1)
    device = parity.judge_runtime({"max_abs_steps": 0, "max_abs_steps_builtin": 9}, "xnnpack", per_op)
    assert device["within_tolerance"] is True and device["tolerance_steps"] == 0
    # a runtime on the builtin kernels (tflite-runtime) must give their outputs bit for bit
    assert parity.judge_runtime({"max_abs_steps": 9, "max_abs_steps_builtin": 0}, "builtin", per_op)["within_tolerance"]
    assert not parity.judge_runtime({"max_abs_steps": 9, "max_abs_steps_builtin": 1}, "builtin", per_op)["within_tolerance"]
    broken = _summary({"xnnpack_vs_tflm": 2, "xnnpack_vs_builtin": 1, "tflm_vs_builtin": 1})
    assert parity.judge_runtime(accumulated, "tflm", broken)["within_tolerance"] is False
    assert parity.judge_runtime({"error": "not installed"}, "builtin", per_op)["within_tolerance"] is None
