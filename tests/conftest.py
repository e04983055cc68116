"""Shared pytest fixtures."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from loopback import BIN, ROOT, free_port, run, start_server, stop_server

TESTS = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------------
# Tests CI must run: a test marked `required_in_ci` that skips (for whatever reason: a missing
# tool, a fixture that skips) fails instead when the CI environment variable is true, as GitHub
# Actions sets it, with the skip's reason. Elsewhere it skips as usual.
# ---------------------------------------------------------------------------------------------


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "required_in_ci(hint): must run in CI (CI=true), where a skip is a failure "
                            "naming its reason and the hint")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("required_in_ci")
    if report.skipped and mark is not None and running_in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        hint = f" ({mark.args[0]})" if mark.args else ""
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped in CI (CI={os.environ['CI']}), where it must run: {reason}{hint}"


# ---------------------------------------------------------------------------------------------
# Edge runtime fixtures (tests/edge_runtime/): a tiny int8 TFLite model, preprocessing
# constants for it, and a bundle of three pills (red, green, blue) made with it.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def edge_model_path(request) -> str:
    """Path of the tiny model (tests/edge_fixtures.py). Made once in a subprocess, so the
    test process never imports TensorFlow, and cached in pytest's cache directory under the
    hash of the script; PILLTRACK_EDGE_TEST_MODEL names a ready-made one instead."""
    given = os.environ.get("PILLTRACK_EDGE_TEST_MODEL")
    if given:
        return given
    script = os.path.join(TESTS, "edge_fixtures.py")
    with open(script, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    path = os.path.join(str(request.config.cache.mkdir("edge_model")), f"tiny-{digest}.tflite")
    if not os.path.exists(path):
        if importlib.util.find_spec("tensorflow") is None:
            pytest.skip("making the tiny model needs TensorFlow; or set "
                        "PILLTRACK_EDGE_TEST_MODEL to a model from tests/edge_fixtures.py")
        subprocess.run([sys.executable, script, path + ".part"], check=True,
                       capture_output=True)
        os.replace(path + ".part", path)
    return path


@pytest.fixture(scope="session")
def edge_config():
    from edge_runtime.preprocessing import PreprocessConfig

    return PreprocessConfig(image_size=32, localise=True, min_pill_fraction=0.005,
                            max_pill_fraction=0.9, crop_margin=0.15, max_image_pixels=10**7, symmetry_views=2)


@pytest.fixture(scope="session")
def edge_interpreter(edge_model_path):
    from edge_runtime.interpreter import make_interpreter

    return make_interpreter(edge_model_path, threads=1)


@pytest.fixture(scope="session")
def edge_embed(edge_interpreter, edge_config):
    """Embeddings (N, 8) of RGB photos, each preprocessed with `edge_config`."""
    from edge_runtime.interpreter import embed
    from edge_runtime.preprocessing import preprocess

    def embed_photos(photos):
        return embed(edge_interpreter, np.stack([preprocess(p, edge_config).pixels
                                                 for p in photos]), edge_config.symmetry_views)

    return embed_photos


@pytest.fixture(scope="session")
def _edge_bundle_template(tmp_path_factory, edge_model_path, edge_config, edge_embed):
    from edge_fixtures import GALLERY_PILLS, LOOKALIKE_MARGIN, THRESHOLD, pill_photos

    from edge_runtime.bundle import write_bundle

    labels = [name for name in GALLERY_PILLS for _ in range(3)]
    photos = [photo for name in GALLERY_PILLS for photo in pill_photos(name, 3)]
    directory = tmp_path_factory.mktemp("edge") / "bundle"
    write_bundle(directory, edge_model_path, edge_embed(photos), labels, threshold=THRESHOLD,
                 preprocess=edge_config, annoy_trees=4, search_k=-1, seed=42, extra={"made_by": "tests"},
                 lookalike_margin=LOOKALIKE_MARGIN)
    return directory


@pytest.fixture
def edge_bundle(tmp_path, _edge_bundle_template) -> str:
    """A fresh copy of the three-pill bundle, for the test to change as it likes."""
    directory = tmp_path / "bundle"
    shutil.copytree(_edge_bundle_template, directory)
    return str(directory)


# ---------------------------------------------------------------------------------------------
# MLflow server and pipeline fixtures (tests/test_pipeline.py, tests/test_remote.py): a real
# MLflow tracking server on loopback, and a copy of the project with the small params after
# `dvc repro` tracked on that server. Helpers in tests/loopback.py.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URL of an `mlflow server` on 127.0.0.1: SQLite backend and registry, artefacts served
    through the server (mlflow-artifacts:/) into a temporary folder. Stopped at the end."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", (home / "artifacts").as_uri()]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    # no background job runner (GenAI jobs, 8 processes): tracking, registry and artefacts need none
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    server = start_server(command, f"{url}/health", home / "server.log", env=env, cwd=home)
    yield url
    stop_server(server)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, mlflow_server):
    """A copy of the project with the small params and the project's DVC config (its S3 remote,
    without credentials: `dvc repro` must not need them), after `dvc repro` with its MLflow runs
    on `mlflow_server`."""
    work = tmp_path_factory.mktemp("pipeline")
    for name in ("tf_pilltrack", "edge_runtime"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "tests" / "params_small.yaml", work / "params.yaml")
    shutil.copytree(ROOT / "data" / "real", work / "data" / "real")  # episodes.real_source, shipped in git
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    env.pop("PILLTRACK_PIPELINE_ID", None)
    run(["git", "init", "-q"], work, env)
    run([str(BIN / "dvc"), "init", "-q"], work, env)
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    first = run([str(BIN / "dvc"), "repro"], work, env)
    return {"dir": work, "env": env, "first": first}
