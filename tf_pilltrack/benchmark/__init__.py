"""`pilltrack bench`: accuracy x size x latency of every model under every runtime, in one run.

Not a dvc stage: its outputs are timings of the machine it runs on, not a function of its inputs.
Run it from the project root after `dvc repro`. It writes `reports/benchmark.md` (tables a
person reads), `reports/benchmark.json` (the same figures for programs) and two plots
(`benchmark_accuracy_vs_size.png`, `benchmark_accuracy_vs_latency.png`).

Rows, for every profile in `bench.profiles`: the teacher and the float student (Keras, under
TensorFlow), the QAT and the PTQ int8 students (LiteRT with 1 and N threads, tflite-runtime in
the edge environment, TFLite Micro on this host). The profile `base.profile` names is measured
on the pipeline's own artefacts, with its accuracy from `metrics/evaluation.json`; any other
profile uses the artefacts given with `--artefacts PROFILE=DIR`, or else is built from its
architecture in params.yaml, untrained, and exported to int8 the way `pilltrack export` does,
calibrated on the pipeline's photos preprocessed at that profile's size: size, arena, MACs, ops
and latency do not depend on trained weights, accuracy does and is marked "not trained".
Besides them: the reference model (MobileNetV2 1.0 at 224 px, int8; stage `reference`) that
speed and size ratios are taken against, the colour/shape baseline (accuracy), and an int8
throughput micro-benchmark (one large 3x3 convolution converted the same way) that gives each
runtime's compute floor: a model's MACs divided by that throughput, the least time its
convolutions can take under that runtime here.

Runtime parity (`tf_pilltrack.tflite.parity`): the shipped int8 model embeds the evaluation gallery and
queries under LiteRT (as the device runs it, and with its builtin kernels), tflite-runtime and
TFLite Micro; each runtime's raw int8 outputs are compared with the device's (int8 steps,
bit-identical fractions) and so are its top-1 answers; every op alone is compared under every pair
of kernels, and the runtimes are judged by that stated per-op tolerance.

Search and the device step come from `edge_speed` (this package's child, run as
`python -m tf_pilltrack.benchmark.edge_speed` in a subprocess with the gallery sizes of
`bench.gallery_sizes`); its JSON is merged into the report.

Modules: `measurement` (MACs and invoke timings under each runtime), `entries` (the models
measured, their report entries and the figures derived from their timings), `search` (the search
benchmark's subprocess), `report` (`to_markdown`, the targets), `plots` (the two plots), `edge_speed` (the search benchmark's child process), `suite` (the
steps of a run); `pilltrack bench` itself is tf_pilltrack/stages/bench.py.

This file imports nothing: `python -m tf_pilltrack.benchmark.edge_speed` runs in the edge
environments, without TensorFlow.
"""
