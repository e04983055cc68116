"""The Keras EfficientNet-Lite0 with the registry package's ImageNet weights reproduces the published
PyTorch network (tests/fixtures/efficientnet_lite0_reference.npz, made by the script beside it), and
the converter fails loudly on a state dict it cannot place whole."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tf_pilltrack.training import efficientnet

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "efficientnet_lite0_reference.npz")

# Largest difference allowed from the reference, relative to the largest magnitude of the output:
# float32 sums in another order (TensorFlow vs PyTorch kernels) differ by about 1e-6 of it.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tensors():
    return efficientnet.read_state_dict(efficientnet.weights_path())


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def relative_error(output: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(output - expected).max() / np.abs(expected).max())


def outputs(tensors, pixels: np.ndarray):
    model = efficientnet.build(pixels.shape[1], include_top=True)
    efficientnet.load_imagenet_weights(model, tensors)
    features = efficientnet.build(pixels.shape[1], include_top=False)
    efficientnet.load_imagenet_weights(features, tensors)
    x = pixels.astype(np.float32) / 127.5 - 1.0
    return np.asarray(model(x, training=False)), np.asarray(features(x, training=False))


def test_reads_the_legacy_state_dict(tensors):
    assert len(tensors) == 296
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert sum(value.size for key, value in tensors.items() if not key.endswith("num_batches_tracked")) == 4_694_024


@pytest.mark.parametrize("size", [224, 64])
def test_keras_reproduces_the_reference(tensors, reference, size):
    logits, features = outputs(tensors, reference[f"pixels_{size}"])
    assert relative_error(logits, reference[f"logits_{size}"]) < TOLERANCE
    assert relative_error(features, reference[f"features_{size}"]) < TOLERANCE
    assert (logits.argmax(1) == reference[f"logits_{size}"].argmax(1)).all()


def test_a_mislaid_layer_is_caught(tensors, reference):
    """Two blocks of one stage swapped: every shape still fits, so only the outputs can tell."""
    swapped = dict(tensors)
    for key in [key for key in tensors if key.startswith("_blocks.9.")]:
        swapped[key], swapped[key.replace("_blocks.9.", "_blocks.10.")] = (
            tensors[key.replace("_blocks.9.", "_blocks.10.")], tensors[key])
    logits, _ = outputs(swapped, reference["pixels_64"])
    assert relative_error(logits, reference["logits_64"]) > 100 * TOLERANCE


def test_a_missing_or_extra_tensor_is_an_error(tensors):
    model = efficientnet.build(64)
    missing = {key: value for key, value in tensors.items() if key != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match="_blocks.3._bn1.running_var"):
        efficientnet.load_imagenet_weights(model, missing)
    extra = dict(tensors, **{"_blocks.16._bn0.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match="not used"):
        efficientnet.load_imagenet_weights(model, extra)
    wrong = dict(tensors, **{"_conv_head.weight": np.ones((1280, 320, 1, 1), np.float32)[:, :300]})
    with pytest.raises(ValueError, match="head_conv"):
        efficientnet.load_imagenet_weights(model, wrong)


def test_only_a_plain_state_dict_is_read(tmp_path):
    path = tmp_path / "hostile.pth"
    with open(path, "wb") as handle:
        for part in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(part, handle)
        handle.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(ValueError, match=r"hostile.pth: .*os.system"):
        efficientnet.read_state_dict(path)
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(ValueError, match="zip.pth"):
        efficientnet.read_state_dict(tmp_path / "zip.pth")
