"""Training throughput and memory of the teacher's inputs and distribution, on the
pipeline's prepared data (run `dvc repro` first):

    python -m benchmarks.distributed_training [--steps 40] [--epochs 2] [--scales 1 4]

Rows, each a fresh process, the teacher of params.yaml trained `--epochs` x `--steps` batches:
- memory, one process: today's path (TF-Similarity's sampler over the split in RAM);
- stream, one process: the same batches' shape read from the shard files by tf.data;
- stream, two workers on this machine (MultiWorkerMirroredStrategy over 127.0.0.1, the global batch
  split between them): the `teacher` stage itself (`pilltrack teacher`) with a TF_CONFIG per process.
Throughput is training images per second over the run's wall time (start-up and the first epoch's
tracing included); the stage's own images/s is in its metrics. Peak memory is the process's
maximum resident set (VmHWM), at 1x and 4x the training set (the training split repeated under
other class names). The stream rows' shard files are written before the timed process starts, as
`prepare` writes them, and the timed process reads only them and the training labels.
Writes reports/distributed_training.json and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _scaled_splits(scale: int, folder: pathlib.Path) -> None:
    """data/prepared of `folder`: the project's training split `scale` times (other class names),
    the calibration splits as they are, an empty mix split."""
    import numpy as np

    from tf_pilltrack.data import dataset

    prepared = folder / "data" / "prepared"
    prepared.mkdir(parents=True)
    train = dataset.load_split("train")
    copies = [dataset.Split(train.pixels, np.char.add(train.labels.astype(str), f"~{copy}" if copy else ""),
                            train.sources, train.groups) for copy in range(scale)]
    dataset.save_split(prepared / "train.npz", dataset.Split(*(np.concatenate(fields) for fields in zip(*copies))))
    dataset.save_split(prepared / "mix.npz", dataset.empty_split(train.pixels.shape[1]))
    for name in ("calibration_references", "calibration_queries"):
        dataset.save_split(prepared / f"{name}.npz", dataset.load_split(name))


def _params(steps: int, epochs: int, distribution: str, data_input: str, backup: pathlib.Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"].update(epochs=epochs, steps_per_epoch=steps)
    params["data"]["mix_ratio"] = 0.0
    params["training"] = {"distribution": distribution, "input": data_input, "backup": str(backup)}
    return params


def _child(folder: pathlib.Path, data_input: str) -> None:
    """In `folder`: the teacher of params.yaml fit on the split in RAM or on the shard folder alone
    (never loading the split): the stage's model, loss and input (distribution.training_input),
    without its open-set monitor, learning-rate schedule and MLflow run. Prints its wall time and
    peak RSS as JSON."""
    os.chdir(folder)
    started = time.time()
    from tf_pilltrack.training import distribution, models
    from tf_pilltrack import params as params_module
    from tf_pilltrack import settings as settings_module
    from tf_pilltrack.training import teacher as teacher_module

    every = settings_module.from_params(params_module.load(folder / "params.yaml"))
    import tf_pilltrack

    tf_pilltrack.pin_threads(every.base.threads)
    import tf_keras

    settings = every.teacher
    tf_keras.utils.set_random_seed(every.base.seed)
    loaded = distribution.load_training_set(every.training.input)  # the splits for memory, their labels for stream
    data = distribution.training_input(every.training, settings, every.augment, every.data, every.base.seed,
                                       loaded.train, loaded.mix)
    options = {"steps_per_epoch": settings.steps_per_epoch} if data_input == "stream" else {}
    model = models.make_teacher(every.profile, settings)
    model.compile(optimizer=tf_keras.optimizers.Adam(settings.learning_rate), loss=teacher_module.make_loss(settings))
    model.fit(data, epochs=settings.epochs, verbose=0, **options)
    print(json.dumps({"seconds": time.time() - started, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux keeps that
    across exec, so a child would report the larger parent's peak."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _run_child(folder: pathlib.Path, data_input: str) -> dict:
    finished = subprocess.run([sys.executable, "-m", "benchmarks.distributed_training", "--child", data_input,
                               "--folder", str(folder)], cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(finished.stderr[-2000:])
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _run_workers(folders: list[pathlib.Path]) -> dict:
    ports = _free_ports(len(folders))
    started = time.time()
    processes = []
    for index, folder in enumerate(folders):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                      "task": {"type": "worker", "index": index}}),
                   MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
        # the stage's own peak: a small wrapper's child, whose ru_maxrss starts from the wrapper's
        wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr); sys.exit(code)")
        processes.append(subprocess.Popen([sys.executable, "-c", wrapper, str(pathlib.Path(sys.executable).parent / "pilltrack"),
                                           "teacher"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
    peaks = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(err[-2000:])
        peaks.append(float(err.strip().splitlines()[-1]))
    return {"seconds": time.time() - started, "peak_rss_mb": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--child", choices=("memory", "stream"))
    parser.add_argument("--folder")
    parser.add_argument("--out", default="reports/distributed_training.json")
    args = parser.parse_args()
    if args.child:
        return _child(pathlib.Path(args.folder), args.child)
    from tf_pilltrack.data import dataset, shards
    from tf_pilltrack import params as params_module, paths

    base = params_module.load(ROOT / "params.yaml")
    settings = base["teacher"]
    images = args.epochs * args.steps * settings["classes_per_batch"] * settings["examples_per_class"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        for scale in args.scales:
            runs = [("memory", "one process", "none"), ("stream", "one process", "none"),
                    ("stream", "two workers", "multi_worker")]
            for data_input, processes, distribution in runs:
                count = 2 if distribution == "multi_worker" else 1
                folders = []
                for index in range(count):
                    folder = scratch / f"{scale}-{data_input}-{distribution}-{index}"
                    _scaled_splits(scale, folder)
                    params = _params(args.steps, args.epochs, distribution, data_input, scratch / f"backup-{scale}")
                    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                    if data_input == "stream":  # written before the timed process, as `prepare` writes them
                        with contextlib.chdir(folder):
                            shards.write_shards(dataset.load_split("train"), dataset.load_split("mix"), paths.SHARDS)
                    folders.append(folder)
                result = _run_workers(folders) if count > 1 else _run_child(folders[0], data_input)
                row = {"scale": scale, "input": data_input, "processes": processes,
                       "training_images": images, "seconds": round(result["seconds"], 1),
                       "images_per_second": round(images / result["seconds"], 1),
                       "peak_rss_mb": round(result["peak_rss_mb"], 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"steps_per_epoch": args.steps, "epochs": args.epochs, "machine_cores": os.cpu_count(),
              "threads": base["base"]["threads"], "rows": rows}
    out = ROOT / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'data':>5} {'input':<7} {'processes':<12} {'images/s':>9} {'seconds':>8} {'peak RSS MB':>12}")
    for row in rows:
        print(f"{row['scale']:>4}x {row['input']:<7} {row['processes']:<12} {row['images_per_second']:>9} "
              f"{row['seconds']:>8} {row['peak_rss_mb']:>12}")



if __name__ == "__main__":
    main()
