"""The worked Kubeflow TFJob manifests (deploy/kubeflow/): checked against the TFJob API's schema and
Kubernetes' (the models of the kubeflow-training and kubernetes Python SDKs, generated from the
training-operator's and Kubernetes' OpenAPI specifications: every key known, every value of its
type, every required field there), and against what PillTrack needs of them: the container the
operator gives TF_CONFIG, a Chief that is the only writer, one stage per job."""

from __future__ import annotations

import copy
import datetime
import json
import pathlib

import pytest
import yaml

kubeflow_models = pytest.importorskip("kubeflow.training.models", reason="kubeflow-training (extra `cluster`) missing")
kubeflow_constants = pytest.importorskip("kubeflow.training.constants.constants")
kubernetes_models = pytest.importorskip("kubernetes.client.models", reason="kubernetes (extra `cluster`) missing")

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubeflow"
PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
              "datetime": (str, datetime.datetime), "date": (str, datetime.date)}


def _model(name: str):
    found = getattr(kubeflow_models, name, None) or getattr(kubernetes_models, name, None)
    if found is None:
        raise LookupError(f"no schema model {name}")
    return found


def schema_problems(value, type_name: str, where: str = "") -> list[str]:
    """Where `value` breaks the schema type `type_name` (an SDK model's name, or its
    `list[...]` / `dict(str, ...)` / primitive notation): unknown keys, wrong types, missing
    required fields and values the model refuses."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: a list expected, got {type(value).__name__}"]
        return [problem for index, item in enumerate(value)
                for problem in schema_problems(item, type_name[5:-1], f"{where}[{index}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{where}: a mapping expected, got {type(value).__name__}"]
        inner = type_name[type_name.index(",") + 1:-1].strip()
        return [problem for key, item in value.items() for problem in schema_problems(item, inner, f"{where}.{key}")]
    if type_name in PRIMITIVES:
        wrong = not isinstance(value, PRIMITIVES[type_name]) or (type_name in ("int", "float") and isinstance(value, bool))
        return [f"{where}: {type_name} expected, got {value!r}"] if wrong else []
    model = _model(type_name)
    if not isinstance(value, dict):
        return [f"{where}: an object ({type_name}) expected, got {type(value).__name__}"]
    attributes = {key: attribute for attribute, key in model.attribute_map.items()}
    problems = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in attributes]
    known = {key: item for key, item in value.items() if key in attributes}
    for key, item in known.items():
        problems += schema_problems(item, model.openapi_types[attributes[key]], f"{where}.{key}")
    try:  # the generated setters refuse a missing required field and values outside an enum
        model(**{attributes[key]: item for key, item in known.items()})
    except ValueError as error:
        problems.append(f"{where or type_name}: {error}")
    return problems


def _load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


@pytest.fixture(params=["teacher.yaml", "distill.yaml"])
def manifest(request) -> dict:
    return _load(request.param)


def test_manifest_matches_the_tfjob_schema(manifest):
    assert manifest["apiVersion"] == kubeflow_constants.API_VERSION and manifest["kind"] == kubeflow_constants.TFJOB_KIND
    assert schema_problems(manifest, kubeflow_constants.TFJOB_MODEL) == []


@pytest.mark.parametrize("break_it,problem", [
    (lambda job: job["spec"].update(tfReplicaSpec=job["spec"].pop("tfReplicaSpecs")), "tfReplicaSpec: not a field"),
    (lambda job: job["spec"]["tfReplicaSpecs"]["Worker"].update(replicas="2"), "replicas: int expected"),
    (lambda job: job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0].pop("name"),
     "`name`, must not be `None`"),
    (lambda job: job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["ports"][0]
     .update(containerPort=[2222]), "containerPort: int expected"),
    (lambda job: job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"].update(volume=[]), "volume: not a field"),
])
def test_the_schema_check_finds_a_broken_manifest(break_it, problem):
    broken = copy.deepcopy(_load("teacher.yaml"))
    break_it(broken)
    assert any(problem in found for found in schema_problems(broken, kubeflow_constants.TFJOB_MODEL))


def _containers(manifest: dict) -> dict[str, dict]:
    return {kind: spec["template"]["spec"]["containers"] for kind, spec in manifest["spec"]["tfReplicaSpecs"].items()}


def test_every_pod_runs_one_stage_in_the_container_given_tf_config(manifest):
    stage = manifest["metadata"]["name"].removeprefix("pilltrack-")
    assert set(manifest["spec"]["tfReplicaSpecs"]) == {kubeflow_constants.REPLICA_TYPE_CHIEF,
                                                       kubeflow_constants.REPLICA_TYPE_WORKER}
    for containers in _containers(manifest).values():
        (container,) = containers
        assert container["name"] == kubeflow_constants.TFJOB_CONTAINER  # the operator sets TF_CONFIG in this one
        assert container["command"] == [".venv/bin/pilltrack", stage]
        assert {"name": "tfjob-port", "containerPort": 2222} in container["ports"]
        assert container["workingDir"] == container["volumeMounts"][0]["mountPath"]


def test_distill_job_is_the_teacher_job_with_its_own_stage():
    teacher, distill = _load("teacher.yaml"), _load("distill.yaml")
    rewritten = json.loads(json.dumps(teacher).replace("pilltrack-teacher", "pilltrack-distill")
                           .replace('"teacher"]', '"distill"]'))
    assert distill == rewritten and distill != teacher


def test_the_tf_config_of_each_pod_makes_only_the_chief_write(manifest, monkeypatch):
    """TF_CONFIG as the training-operator writes it for each replica (lower-case task types, one
    address per pod): the Chief writes, no Worker does, and every process runs multi_worker."""
    from tf_pilltrack.training import distribution

    replicas = {kind.lower(): spec["replicas"] for kind, spec in manifest["spec"]["tfReplicaSpecs"].items()}
    name = manifest["metadata"]["name"]
    cluster = {kind: [f"{name}-{kind}-{index}.default.svc:2222" for index in range(count)]
               for kind, count in replicas.items()}
    writers = []
    for kind, count in replicas.items():
        for index in range(count):
            monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))
            if distribution.is_chief():
                writers.append((kind, index))
            with pytest.raises(ValueError, match="set it to multi_worker"):  # params left at one process
                distribution.make_strategy("none")
    assert writers == [("chief", 0)]
