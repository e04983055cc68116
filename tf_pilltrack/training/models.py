"""The two networks: a teacher (TF-Similarity SimilarityModel; a ResNet, or EfficientNet-Lite0 from ImageNet weights) and a MobileNetV2 student,
built from their dimensions (`build_*`) or from the settings (`make_*`), loaded with their trained
weights (`load_*`), and embedding crops (`embed`): what the stages share.

Both are flat functional Keras 2 models that take normalised pixels (see
`edge_runtime.preprocessing.normalise`) and return an embedding. The student contains only
layers tensorflow-model-optimization can quantise and TFLite Micro and the Edge TPU run
(Conv2D, DepthwiseConv2D, BatchNormalization, ReLU6, Add, GlobalAveragePooling2D, Dense): no
hard-swish, no Lambda, no L2 normalisation inside (the device normalises after dequantising).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tensorflow_similarity as tfsim
from tf_keras import layers
import tf_keras

from edge_runtime.preprocessing import normalise
from tf_pilltrack import paths
from tf_pilltrack.settings import Profile, Teacher
from tf_pilltrack.training import efficientnet


# BatchNorm's moving statistics follow the batches with this momentum. Keras' default (0.99)
# needs ~500 steps to forget its initial values, longer than a short CPU schedule or a test
# runs; until then inference-mode outputs of the student are far off its training-mode ones.
BATCH_NORM_MOMENTUM = 0.9


def _batch_norm(name: str):
    return layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name)


def _residual_block(inputs, filters: int, stride: int, name: str):
    """A pre-activation-free basic block (two 3x3 convolutions) as in ResNet-18."""
    shortcut = inputs
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(inputs)
    x = _batch_norm(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = _batch_norm(name=f"{name}_bn2")(x)
    if stride != 1 or inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(inputs)
        shortcut = _batch_norm(name=f"{name}_proj_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def _resnet(x, widths: list[int], blocks: list[int]):
    """A ResNet-18-style backbone sized for small pill crops, to its pooled features.

    The stem quarters the resolution (a 3x3 stride-2 convolution and a max pool, as in ResNet),
    unlike TF-Similarity's ResNet18Sim, which keeps full resolution for CIFAR-size images and
    trains ~10x slower on a CPU."""
    if len(widths) != len(blocks):
        raise ValueError(f"widths {widths} and blocks {blocks} must have the same length")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _batch_norm(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, count) in enumerate(zip(widths, blocks)):
        for block in range(count):
            stride = 2 if block == 0 and stage > 0 else 1
            x = _residual_block(x, filters, stride, name=f"stage{stage + 1}_block{block + 1}")
    return layers.GlobalAveragePooling2D(name="pool")(x)


def build_teacher(input_size: int, embedding_size: int, widths: list[int], blocks: list[int],
                  backbone: str = "resnet", image_size: int | None = None, imagenet: bool = False):
    """The teacher: a backbone with TF-Similarity's MetricEmbedding head (a dense layer followed
    by L2 normalisation), on crops of `input_size` (the profile's, what the student sees).

    backbone `resnet`: `_resnet` of `widths` and `blocks`, from random weights. `efficientnet_lite0`:
    tf_pilltrack.training.efficientnet's network (its layers nested as the model's `backbone` layer, so
    training can freeze it whole), with the registry package's ImageNet weights when `imagenet`.
    `image_size`: the side the backbone sees; crops are resized to it (bilinear) inside the model
    when it differs from `input_size`. The teacher runs only while training, so it may be larger."""
    image_size = image_size or input_size
    inputs = layers.Input((input_size, input_size, 3), name="pixels")
    x = inputs
    if image_size != input_size:
        x = layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    if backbone == "resnet":
        if imagenet:
            raise ValueError("teacher.pretrained imagenet needs teacher.backbone efficientnet_lite0: "
                             "no ImageNet weights ship for the ResNet")
        x = _resnet(x, widths, blocks)
    elif backbone == "efficientnet_lite0":
        make = efficientnet.load_pretrained if imagenet else efficientnet.build
        x = make(image_size, name=BACKBONE)(x)
    else:
        raise ValueError(f"teacher.backbone must be resnet or efficientnet_lite0, got {backbone!r}")
    outputs = tfsim.layers.MetricEmbedding(embedding_size, name="embedding")(x)
    return tfsim.models.SimilarityModel(inputs, outputs, name="teacher")


# Name of the nested backbone model of an efficientnet_lite0 teacher (`build_teacher`).
BACKBONE = "backbone"


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# MobileNetV2's inverted residual stages: (expansion, output channels, repeats, first stride).
# Profiles in params.yaml give their own list; this is the paper's, for reference and tests.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(inputs, expansion: int, filters: int, stride: int, name: str):
    channels = inputs.shape[-1]
    x = inputs
    if expansion != 1:
        x = layers.Conv2D(expansion * channels, 1, use_bias=False, name=f"{name}_expand")(x)
        x = _batch_norm(name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    if stride == 2:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="valid" if stride == 2 else "same",
                               use_bias=False, name=f"{name}_depthwise")(x)
    x = _batch_norm(name=f"{name}_depthwise_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = _batch_norm(name=f"{name}_project_bn")(x)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def build_student(image_size: int, alpha: float, last_channels: int, embedding_size: int,
                  stages=MOBILENET_V2_STAGES):
    """MobileNetV2 (width multiplier `alpha`, inverted residual `stages` of (expansion,
    channels, repeats, first stride)) with a narrow last 1x1 convolution and a linear
    embedding layer. Returns an un-normalised embedding; callers L2-normalise it.

    An int8 TFLite file stores, besides one byte per weight, a float scale and an int64 zero
    point per output channel of every convolution, so on a microcontroller budget the number
    of channels (expansions, late stages) costs as much as the weights do."""
    for stage in stages:
        if len(stage) != 4 or min(stage) < 1 or stage[3] not in (1, 2):
            raise ValueError(f"a student stage is (expansion, channels, repeats, stride 1|2), got {stage}")
    inputs = layers.Input((image_size, image_size, 3), name="pixels")
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="stem_pad")(inputs)
    x = layers.Conv2D(_make_divisible(32 * alpha), 3, strides=2, padding="valid",
                      use_bias=False, name="stem_conv")(x)
    x = _batch_norm(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for expansion, filters, repeats, first_stride in stages:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _inverted_residual(x, expansion, _make_divisible(filters * alpha), stride, name=f"block{block}")
            block += 1
    x = layers.Conv2D(last_channels, 1, use_bias=False, name="last_conv")(x)
    x = _batch_norm(name="last_bn")(x)
    x = layers.ReLU(6.0, name="last_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(embedding_size, name="embedding")(x)
    return tf_keras.Model(inputs, outputs, name="student")


def l2_normalise(embeddings):
    return tf.math.l2_normalize(embeddings, axis=-1)


def make_teacher(profile: Profile, teacher: Teacher, start: bool = True):
    """The teacher of `profile` and the `teacher` section, untrained: with the ImageNet weights
    when teacher.pretrained says so and `start` (False: the layout only, for loading trained weights)."""
    return build_teacher(
        profile.image_size, teacher.embedding_size, teacher.widths, teacher.blocks, teacher.backbone,
        teacher.image_size, start and teacher.pretrained == "imagenet",
    )


def load_teacher(profile: Profile, teacher: Teacher):
    """The trained teacher, rebuilt from `profile`, the `teacher` section and its saved weights."""
    model = make_teacher(profile, teacher, start=False)
    model.load_weights(paths.TEACHER_WEIGHTS)
    return model


def make_student(profile: Profile, embedding_size: int):
    """The float student of `profile`, untrained, with the teacher's embedding size."""
    return build_student(profile.image_size, profile.student_alpha, profile.student_last_channels,
                         embedding_size, list(profile.student_stages))


def quantize(student):
    """Wrap a float student for quantization-aware training (weights carried over)."""
    return tfmot.quantization.keras.quantize_model(student)


def load_float_student(profile: Profile, embedding_size: int):
    student = make_student(profile, embedding_size)
    student.load_weights(paths.STUDENT_FLOAT_WEIGHTS)
    return student


def load_qat_student(profile: Profile, embedding_size: int):
    with tfmot.quantization.keras.quantize_scope():
        student = quantize(make_student(profile, embedding_size))
    student.load_weights(paths.STUDENT_QAT_WEIGHTS)
    return student


def embed(model, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings of uint8 crops by a Keras model (teacher or student)."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = normalise(pixels[start:start + batch_size].astype(np.float32))
        outputs.append(np.asarray(model(batch, training=False)))
    embeddings = np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
