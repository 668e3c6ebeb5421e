"""DL-L8S2-UV: the torch port against a plain-numpy forward pass of the Keras files, scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="DL-L8S2-UV files need: pip install 'xcloud[keras]'")

import torch  # noqa: E402

import xcloud  # noqa: E402
from xcloud.errors import MissingWeightsError, WeightsError  # noqa: E402
from xcloud.evaluation import (  # noqa: E402
    IGNORE,
    ConfusionMatrix,
    evaluate_model,
    get_level,
    get_scheme,
    superclass_metrics,
)
from xcloud.models import get  # noqa: E402
from xcloud.models.dl_l8s2_uv import DLL8S2UVNet, load_keras_hdf5  # noqa: E402

from .conftest import need_data  # noqa: E402

FILES = {"dl-l8s2-uv-rgbi": ("landsatbiomeRGBI6.hdf5", 4),
         "dl-l8s2-uv-rgbiswir": ("landsatbiomeRGBISWIR7.hdf5", 6)}
CROP = (slice(64, 192), slice(256, 384))  # 128 x 128 px, about 30 % cloud in the labels
BN_EPSILON = 1e-3  # every BatchNormalization of the published files


def weights_path(name: str) -> Path:
    return need_data(f"weights/dl_l8s2_uv/{FILES[name][0]}")


# --------------------------------------------------------------------------- numpy reference


def keras_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """All datasets under model_weights/<layer>, by short name, in float64."""
    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as handle:
        for layer, group in handle["model_weights"].items():
            found = weights.setdefault(layer, {})
            group.visititems(lambda name, obj, found=found: found.update(
                {name.split("/")[-1].split(":")[0]: obj[()].astype(np.float64)})
                if isinstance(obj, h5py.Dataset) else None)
    return weights


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME: out = ceil(size / stride), the odd pixel of padding after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """NHWC-less (H, W, C) cross-correlation with SAME padding, kernel (kh, kw, C, O)."""
    kh, kw = kernel.shape[:2]
    rows, cols = same_pads(x.shape[0], kh, stride), same_pads(x.shape[1], kw, stride)
    padded = np.pad(x, (rows, cols, (0, 0)))
    height, width = -(-x.shape[0] // stride), -(-x.shape[1] // stride)
    return sum(padded[i:i + stride * height:stride, j:j + stride * width:stride] @ kernel[i, j]
               for i in range(kh) for j in range(kw))


def separable_conv(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Depthwise 3x3 SAME (channel c, multiplier m -> c * M + m), pointwise 1x1, bias."""
    depthwise = w["depthwise_kernel"]
    kh, kw, channels, mult = depthwise.shape
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    height, width = x.shape[:2]
    depth = sum(padded[i:i + height, j:j + width, :, None] * depthwise[i, j]
                for i in range(kh) for j in range(kw))
    return depth.reshape(height, width, channels * mult) @ w["pointwise_kernel"][0, 0] + w["bias"]


def batchnorm(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    scale = w["gamma"] / np.sqrt(w["moving_variance"] + BN_EPSILON)
    return (x - w["moving_mean"]) * scale + w["beta"]


def maxpool(x: np.ndarray) -> np.ndarray:
    height, width, channels = x.shape
    return x.reshape(height // 2, 2, width // 2, 2, channels).max(axis=(1, 3))


def upconv(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Conv2DTranspose 2x2, stride 2: each input pixel paints a 2x2 block (kernel a, b, out, in)."""
    blocks = np.einsum("hwi,abci->hawbc", x, w["kernel"])
    height, _, width, _, channels = blocks.shape
    return blocks.reshape(2 * height, 2 * width, channels) + w["bias"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def keras_reference(w: dict[str, dict[str, np.ndarray]], image: np.ndarray) -> np.ndarray:
    """The published graph, written out: cloud probability (H, W) of TOA reflectance (H, W, C)."""
    def block(x: np.ndarray, level: str) -> np.ndarray:
        for i in (1, 2):
            conv = separable_conv(x, w[f"{level}_conv_{i}"])
            x = np.maximum(batchnorm(conv, w[f"{level}_bn_{i}"]), 0.0)
        return x

    x = conv2d(image.astype(np.float64), w["normalization"]["kernel"]) + w["normalization"]["bias"]
    skip0 = block(x, "input")
    skip1 = block(maxpool(skip0), "pool1")
    x = block(maxpool(skip1), "pool2")
    x = block(np.concatenate([upconv(x, w["upconv1"]), skip1], axis=-1), "up1")
    x = block(np.concatenate([upconv(x, w["upconv2"]), skip0], axis=-1), "up2")
    linear = w["linear_model"]
    return sigmoid(conv2d(x, linear["kernel"]) + linear["bias"])[..., 0]


# --------------------------------------------------------------------------- the port


@pytest.mark.parametrize("name", FILES)
def test_port_reproduces_the_keras_graph(name, labelled_patch):
    path = weights_path(name)
    bands = FILES[name][1]
    crop = labelled_patch["img"][CROP][..., :bands]
    reference = keras_reference(keras_weights(path), crop)
    # a crop with confident cloud, confident clear and uncertain pixels
    assert (reference > 0.9).mean() > 0.05 and (reference < 0.1).mean() > 0.3
    assert ((reference > 0.05) & (reference < 0.95)).mean() > 0.02

    model = get(name).load(weights=path)
    proba = model.predict_proba(crop.transpose(2, 0, 1)[None])
    diff = np.abs(proba[0, 1] - reference).max()
    print(f"{name}: max |torch - numpy reference| = {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_allclose(proba[0, 0], 1.0 - proba[0, 1], atol=1e-7)
    assert proba.dtype == np.float32 and proba.shape == (1, 2, 128, 128)


def test_architecture_and_sizes():
    path = weights_path("dl-l8s2-uv-rgbi")
    network = load_keras_hdf5(path)
    in_file = sum(a.size for layer in keras_weights(path).values() for a in layer.values())
    numbers = sum(p.numel() for p in network.parameters()) + sum(
        b.numel() for n, b in network.named_buffers() if not n.endswith("num_batches_tracked"))
    assert numbers == in_file == 97_049
    assert (network.in_channels, network.out_channels, network.multiple) == (4, 1, 4)
    assert network.keras_version.startswith("2.2.4")
    kinds = [type(layer).__name__ for layer in network.layers.values()]
    assert kinds.count("_SeparableConv2D") == 10 and kinds.count("_Conv2DTranspose") == 2
    with pytest.raises(ValueError, match="multiples of 4"):
        network(torch.zeros(1, 4, 30, 32))


def test_layers_beyond_the_published_files():
    """Even-kernel SAME, depth multiplier 2, strided SAME, 3x3/2 transposed conv, 3x3/2 SAME
    max pooling and nearest upsampling, against numpy.

    Keras' Conv2DTranspose is the adjoint of Conv2D with the same kernel and padding; the
    reference applies the transpose of that convolution's matrix.
    """
    rng = np.random.default_rng(0)
    shape = (10, 10, 3)
    kernels = {"even": rng.normal(size=(2, 2, 3, 4)), "strided": rng.normal(size=(3, 3, 4, 4)),
               "up": rng.normal(size=(3, 3, 2, 4)), "head": rng.normal(size=(1, 1, 8, 1))}
    separable = {"depthwise_kernel": rng.normal(size=(3, 3, 4, 2)),
                 "pointwise_kernel": rng.normal(size=(1, 1, 8, 4)), "bias": rng.normal(size=4)}
    network = DLL8S2UVNet(synthetic_config(shape[-1]))
    weights = {name: {"kernel": k} for name, k in kernels.items()} | {"sep": separable}
    network.load_keras_weights({layer: {key: value.astype(np.float32) for key, value in w.items()}
                                for layer, w in weights.items()}).eval()
    image = rng.normal(size=shape) - 4.0  # negative: a zero-padded max pooling would show

    x = np.maximum(conv2d(image, kernels["even"]), 0.0)
    x = np.maximum(separable_conv(x, separable), 0.0)
    x = conv2d(x, kernels["strided"], stride=2)
    forward = np.stack([conv2d(basis.reshape(10, 10, 2), kernels["up"], stride=2).ravel()
                        for basis in np.eye(10 * 10 * 2)], axis=1)
    x = (forward.T @ x.ravel()).reshape(10, 10, 2)
    rows, cols = same_pads(10, 3, 2), same_pads(10, 3, 2)
    padded = np.pad(image, (rows, cols, (0, 0)), constant_values=-np.inf)
    pooled = np.max([padded[i:i + 10:2, j:j + 10:2] for i in range(3) for j in range(3)], axis=0)
    upsampled = pooled.repeat(2, axis=0).repeat(2, axis=1)
    expected = conv2d(np.concatenate([image, x, upsampled], axis=-1), kernels["head"])
    with torch.inference_mode():
        got = network(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))
    assert np.abs(got[0].numpy().transpose(1, 2, 0) - expected).max() < 1e-5 * np.abs(
        expected).max()
    assert network.multiple == 2


def synthetic_config(channels: int) -> dict:
    def layer(kind, name, inputs, **config):
        return {"class_name": kind, "name": name,
                "config": {"name": name, "data_format": "channels_last", **config},
                "inbound_nodes": [[[source, 0, 0, {}] for source in inputs]] if inputs else []}

    conv = {"use_bias": False, "padding": "same", "dilation_rate": [1, 1]}
    return {"name": "synthetic", "input_layers": [["in", 0, 0]], "output_layers": [["head", 0, 0]],
            "layers": [
                layer("InputLayer", "in", [], batch_input_shape=[None, None, None, channels]),
                layer("Conv2D", "even", ["in"], filters=4, kernel_size=[2, 2], strides=[1, 1],
                      activation="relu", **conv),
                layer("SeparableConv2D", "sep", ["even"], filters=4, kernel_size=[3, 3],
                      strides=[1, 1], depth_multiplier=2, activation="relu",
                      **{**conv, "use_bias": True}),
                layer("Dropout", "drop", ["sep"], rate=0.5),
                layer("Conv2D", "strided", ["drop"], filters=4, kernel_size=[3, 3],
                      strides=[2, 2], activation="linear", **conv),
                layer("Conv2DTranspose", "up", ["strided"], filters=2, kernel_size=[3, 3],
                      strides=[2, 2], activation="linear", output_padding=None, **conv),
                layer("MaxPooling2D", "pool", ["in"], pool_size=[3, 3], strides=[2, 2],
                      padding="same"),
                layer("UpSampling2D", "upsample", ["pool"], size=[2, 2]),
                layer("Concatenate", "cat", ["in", "up", "upsample"], axis=-1),
                layer("Conv2D", "head", ["cat"], filters=1, kernel_size=[1, 1], strides=[1, 1],
                      activation="linear", **conv),
            ]}


# --------------------------------------------------------------------------- the xcloud model


def test_predict_and_score_rgbiswir(labelled_patch, patch_array):
    path = weights_path("dl-l8s2-uv-rgbiswir")
    mask = xcloud.predict(patch_array, model="dl-l8s2-uv-rgbiswir", weights=path, resolution=30)
    assert mask.shape == (512, 512) and set(np.unique(mask.values)) <= {0, 1}
    assert mask.attrs["flag_meanings"].split()[:2] == ["clear", "cloud"]
    with torch.inference_mode():
        whole = load_keras_hdf5(path)(torch.from_numpy(patch_array.values[None]))[0, 0].numpy()
    # 512 px tiles overlapping by 32 px, blended: nearly the whole-patch result
    assert (mask.values == (whole >= 0.5)).mean() > 0.99

    level = get_level("cloud")
    matrix = ConfusionMatrix(2, ignore_index=IGNORE, class_names=level.names).update(
        get_scheme("s2cloudless").to_level(mask.values, level),
        get_scheme("ukis-csmask-testfile").to_level(labelled_patch["msk"][..., 0], level))
    cloud = superclass_metrics(matrix, level)["cloud"]
    print(f"dl-l8s2-uv-rgbiswir: accuracy {matrix.accuracy():.3f}, cloud precision "
          f"{cloud['precision']:.3f} recall {cloud['recall']:.3f} F1 {cloud['f1']:.3f}")
    assert matrix.accuracy() > 0.95 and cloud["f1"] > 0.88  # measured 0.964, 0.908


def test_evaluate_rgbi(labelled_patch, patch_array):
    result = evaluate_model("dl-l8s2-uv-rgbi", patch_array.isel(band=slice(0, 4)),
                            labelled_patch["msk"][..., 0], label_scheme="ukis-csmask-testfile",
                            weights=weights_path("dl-l8s2-uv-rgbi"), resolution=30)
    print(result.table())
    cloud = result.superclass()["cloud"]
    assert result.level == "cloud"
    assert result.matrix.accuracy() > 0.90 and cloud["f1"] > 0.74  # measured 0.916, 0.768


def test_weights_are_not_shipped(patch_array):
    with pytest.raises(MissingWeightsError, match=r"IPL-UV/DL-L8S2-UV.*weights=PATH"):
        get("dl-l8s2-uv-rgbi").load()
    with pytest.raises(MissingWeightsError, match=r"landsatbiomeRGBISWIR7\.hdf5"):
        xcloud.predict(patch_array[:, :8, :8], model="dl-l8s2-uv-rgbiswir")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        get("dl-l8s2-uv-rgbi").load(weights="/nonexistent/landsatbiomeRGBI6.hdf5")


def test_published_names_are_checksummed(tmp_path):
    source = weights_path("dl-l8s2-uv-rgbi")
    altered = tmp_path / source.name
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        get("dl-l8s2-uv-rgbi").load(weights=altered)
    # another name is the user's own Keras model: loaded without a checksum
    own = shutil.copy(source, tmp_path / "retrained.hdf5")
    assert get("dl-l8s2-uv-rgbi").load(weights=own).info.weights_source == str(own)
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(WeightsError, match="not a readable Keras HDF5"):
        get("dl-l8s2-uv-rgbi").load(weights=junk)


def test_band_count_must_match():
    with pytest.raises(WeightsError, match="needs 4 bands"):
        get("dl-l8s2-uv-rgbi").load(weights=weights_path("dl-l8s2-uv-rgbiswir"))


def test_cloud_from_probability_one_half():
    """The authors' rule: cloud where p >= 0.5 (argmax would call p = 0.5 clear)."""
    model = get("dl-l8s2-uv-rgbi").load(weights=weights_path("dl-l8s2-uv-rgbi"))
    cloud = np.array([0.0, 0.4999, 0.5, 0.5001, 1.0], np.float32).reshape(1, 1, 5)
    classes = model.classify(np.concatenate([1.0 - cloud, cloud]))
    assert classes.tolist() == [[0, 0, 1, 1, 1]] and classes.dtype == np.uint8
