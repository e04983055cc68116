"""Stage `export`: the student as full-integer int8 TFLite, and its TFLite Micro C array.

Two int8 models come out, so quantisation-aware training can be compared with the simpler
alternative: `student_int8.tflite` from the QAT student (what ships), and
`student_ptq_int8.tflite` by post-training quantisation of the float student, calibrated on
`export.calibration_images` training crops. Both take uint8 pixels and return int8
embeddings. The export report records size, ops, TFLM arena and the Edge TPU op check.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.data import dataset
from tf_pilltrack.tflite import conversion, micro
from tf_pilltrack.training import models


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    every = settings.from_params(params)
    embedding_size = every.teacher.embedding_size
    train_split = dataset.load_split("train")
    calibration = conversion.calibration_sample(train_split, every.export.calibration_images, every.base.seed)
    qat_model = conversion.convert_qat(models.load_qat_student(every.profile, embedding_size), calibration)
    ptq_model = conversion.convert_ptq(models.load_float_student(every.profile, embedding_size), calibration)
    write_atomically(paths.STUDENT_QAT_TFLITE, qat_model)
    write_atomically(paths.STUDENT_PTQ_TFLITE, ptq_model)
    report = {"qat": conversion.describe(qat_model), "ptq": conversion.describe(ptq_model)}
    micro.write_c_array(paths.MICRO, qat_model, report["qat"]["micro_arena_bytes"], report["qat"]["io"], report["qat"]["ops"])
    report["seconds"] = round(time.time() - started, 1)
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.REPORTS / "export.json", json.dumps(report, indent=2).encode())
    qat = report["qat"]
    echo(f"export: {paths.STUDENT_QAT_TFLITE} {qat['bytes'] / 1024:.1f} KiB, TFLM arena "
         f"{qat['micro_arena_bytes'] / 1024:.1f} KiB, ops {', '.join(qat['ops'])}; Edge TPU "
         + ("compatible" if qat["edgetpu"]["compatible"] else f"CPU fallback for {qat['edgetpu']['cpu_ops']}")
         + f"; PTQ model {report['ptq']['bytes'] / 1024:.1f} KiB; C array in {paths.MICRO}/")
    return report
