"""DVC data on an S3 remote and the MLflow model registry, against real servers on loopback:
moto's S3 server for `dvc push` / `dvc pull`, the `mlflow_server` fixture (tests/conftest.py)
for `tracking.register_model`.

Credentials are fake ones in the environment of the subprocesses only; the project's
.dvc/config holds none."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import sys

import pytest
import yaml

from loopback import BIN, ROOT, free_port, run, start_server, stop_server


def cached_outputs() -> list[str]:
    """What the pipeline writes into the DVC cache: dvc.yaml's `outs`, less those marked
    `cache: false` (reports kept in git, like the metrics and plots)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outputs = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                path, options = next(iter(out.items()))
                if (options or {}).get("cache", True):
                    outputs.append(path)
            else:
                outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1: its endpoint, a boto3 client, and the
    environment for DVC subprocesses (fake credentials, no AWS config files of the machine)."""
    import boto3

    home = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server([sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
                          f"{endpoint}/", home / "server.log", env=dict(os.environ), cwd=home)
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(credentials, AWS_CONFIG_FILE=str(home / "absent"), AWS_SHARED_CREDENTIALS_FILE=str(home / "absent"))
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                          region_name=credentials["AWS_DEFAULT_REGION"])
    yield {"endpoint": endpoint, "client": client, "env": env}
    stop_server(server)


def digests(folder: pathlib.Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under `folder`."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def objects(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def dvc(*arguments: str) -> list[str]:
    return [str(BIN / "dvc"), *arguments]


def project_remote() -> tuple[str, dict]:
    """The default remote of the project's .dvc/config: name and settings."""
    from configobj import ConfigObj  # DVC's own config reader

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    name = config["core"]["remote"]
    return name, dict(config[f'remote "{name}"'])


def digests_of(directory: pathlib.Path, outputs: list[str]) -> dict[str, str]:
    """output/relative path -> SHA-256 of every file of `outputs` (files or folders) in `directory`."""
    found = {}
    for output in outputs:
        path = directory / output
        if path.is_file():
            found[output] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found.update({f"{output}/{name}": digest for name, digest in digests(path).items()})
    return found


# --- the project's remote -----------------------------------------------------------------------


def test_project_remote_is_s3_without_credentials():
    _, settings = project_remote()
    assert settings["url"].startswith("s3://")
    secret = [key for key in settings if any(word in key for word in ("key", "secret", "token", "password",
                                                                       "credential"))]
    assert not secret, f"credentials belong in the environment, not .dvc/config: {secret}"
    assert "/config.local" in (ROOT / ".dvc" / ".gitignore").read_text().split()  # endpoint overrides stay local


# --- dvc push / dvc pull ------------------------------------------------------------------------


def test_push_then_pull_restores_a_data_folder(s3, tmp_path):
    env = s3["env"]
    s3["client"].create_bucket(Bucket="pilltrack-photos")
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo, env)
    run(dvc("init", "-q"), repo, env)
    photos = repo / "photos"
    for index, (label, size) in enumerate((("red", 3000), ("red", 10), ("blue", 70000), ("blue", 0))):
        (photos / label).mkdir(parents=True, exist_ok=True)
        (photos / label / f"{index}.jpg").write_bytes(hashlib.sha256(str(index).encode()).digest() * (size // 32)
                                                      + bytes(range(size % 32)))
    before = digests(photos)
    run(dvc("add", "-q", "photos"), repo, env)
    run(dvc("remote", "add", "-d", "storage", "s3://pilltrack-photos/store"), repo, env)
    run(dvc("remote", "modify", "--local", "storage", "endpointurl", s3["endpoint"]), repo, env)
    pushed = run(dvc("push"), repo, env)
    assert "pushed" in pushed.stdout, pushed.stdout
    assert len(objects(s3["client"], "pilltrack-photos")) >= len(set(before.values())), "nothing on the remote"

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(photos)
    run(dvc("pull"), repo, env)
    assert digests(photos) == before
    assert "up to date" in run(dvc("status"), repo, env).stdout


def test_push_then_pull_restores_the_pipeline_outputs(pipeline, s3, tmp_path):
    """The pipeline's outputs go to the remote named by the project's .dvc/config (bucket from
    there, endpoint in .dvc/config.local, as the README says); a copy of the project without
    cache or outputs (a fresh checkout) pulls them back, identical, and is up to date."""
    work, env = pipeline["dir"], dict(pipeline["env"], **{k: v for k, v in s3["env"].items() if k.startswith("AWS_")})
    remote, settings = project_remote()
    s3["client"].create_bucket(Bucket=settings["url"].removeprefix("s3://").split("/", 1)[0])
    run(dvc("remote", "modify", "--local", remote, "endpointurl", s3["endpoint"]), work, env)
    assert "up to date" in run(dvc("status"), work, env).stdout
    run(dvc("push"), work, env)
    outputs = cached_outputs()
    assert "bundle" in outputs and "models/student_int8.tflite" in outputs
    before = digests_of(work, outputs)
    assert any(name.startswith("bundle/") for name in before)

    clone = tmp_path / "clone"  # a fresh checkout: what git holds, no DVC cache, no outputs
    shutil.copytree(work, clone, ignore=shutil.ignore_patterns("__pycache__"))
    for output in [".dvc/cache", ".dvc/tmp"] + outputs:
        path = clone / output
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert "deleted" in run(dvc("status"), clone, env).stdout
    run(dvc("pull"), clone, env)
    assert digests_of(clone, outputs) == before
    assert "up to date" in run(dvc("status"), clone, env).stdout
    assert "in sync" in run(dvc("status", "--cloud"), clone, env).stdout


# --- the MLflow model registry ------------------------------------------------------------------


def test_register_model_makes_a_version_with_metrics_as_tags(mlflow_server, monkeypatch, tmp_path):
    import mlflow

    from tf_pilltrack import params as params_module
    from tf_pilltrack.training import tracking

    params = params_module.load(ROOT / "tests" / "params_small.yaml")
    model = tmp_path / "student_int8.tflite"
    model.write_bytes(b"TFL3" + bytes(range(256)) * 4)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)  # the local store must not be used: nothing may appear here
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    name = "pilltrack-test-student-int8"

    # outside a stage: a `register` run of its own
    run_params = params_module.run_params(params, ("base",))
    first = tracking.register_model(model, name, {"recall_at_1": 0.875, "model_bytes": 1028}, run_params=run_params)
    version = client.get_model_version(name, first.version)
    assert version.status == "READY"
    assert version.tags == {"recall_at_1": "0.875", "model_bytes": "1028"}
    registered_run = client.get_run(version.run_id)
    assert registered_run.data.tags["stage"] == "register"
    assert registered_run.data.tags["pipeline_id"].endswith(params_module.digest(params))
    downloaded = pathlib.Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "a")))
    assert (downloaded / model.name).read_bytes() == model.read_bytes()

    # inside a stage's run: into that run, as the next version
    check_params = params_module.run_params(params, ("base", "budgets"))
    with tracking.stage_run("check", check_params) as active:
        second = tracking.register_model(model, name, {"recall_at_1": 0.9})
        stage_run_id = active.active_run().info.run_id
    assert int(second.version) == int(first.version) + 1
    assert client.get_model_version(name, second.version).run_id == stage_run_id
    assert [item.path for item in client.list_artifacts(stage_run_id, "model")] == [f"model/{model.name}"]
    assert not (tmp_path / "mlruns").exists()

    with pytest.raises(ValueError):
        tracking.register_model(model, name, {}, run_params=None)  # outside a run, without run params
    with pytest.raises(FileNotFoundError):
        tracking.register_model(tmp_path / "absent.tflite", name, {}, run_params=run_params)
