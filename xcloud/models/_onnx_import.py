"""Read an exported smp ``Unet(efficientnet-bX)`` ONNX graph into :class:`EfficientNetUNet`.

Weights come from the graph's initializers (cast to float32); the architecture (block kernel
sizes, strides and the fixed "same" paddings) is read from the graph's nodes, so nothing about
the network is guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._optional import import_optional
from ..errors import WeightsError
from .unet_efficientnet import EfficientNetUNet, EfficientNetUNetConfig, MBConvConfig

__all__ = ["OnnxSignature", "efficientnet_unet_from_onnx", "graph_ports", "session_ports"]

_PREFIX = "model."


@dataclass(frozen=True)
class OnnxSignature:
    """What a segmentation graph must look like: one input ``input_name`` of shape
    (N, in_channels, H, W) and one output ``output_name`` of shape (N, classes, H, W).

    The channel dimensions must be fixed; the others (batch size, ``H``, ``W``) may be
    symbolic.
    """

    in_channels: int
    classes: int
    input_name: str = "input"
    output_name: str = "output"

    def check(self, inputs: Sequence[tuple[str, Sequence[object]]],
              outputs: Sequence[tuple[str, Sequence[object]]], *, source: object) -> None:
        """Raise :class:`WeightsError` unless ``inputs``/``outputs`` ((name, shape) pairs) fit."""
        expected = (f"expected one input {self.input_name!r} (N, {self.in_channels}, H, W) and "
                    f"one output {self.output_name!r} (N, {self.classes}, H, W)")
        found = f"{source} has inputs {list(inputs)} and outputs {list(outputs)}"
        if not (len(inputs) == len(outputs) == 1
                and _fits(inputs[0], self.input_name, self.in_channels)
                and _fits(outputs[0], self.output_name, self.classes)):
            raise WeightsError(f"{found}; {expected}. The weights file does not match the model: "
                               "pass the ONNX file the model was published with")


def _fits(port: tuple[str, Sequence[object]], name: str, channels: int) -> bool:
    port_name, shape = port
    return port_name == name and len(shape) == 4 and shape[1] == channels


def graph_ports(model) -> tuple[list[tuple[str, list[object]]], list[tuple[str, list[object]]]]:
    """(name, shape) of an ONNX ``ModelProto``'s inputs (initializers excluded) and outputs;
    symbolic or unknown dimensions are their names or ``None``."""
    weights = {tensor.name for tensor in model.graph.initializer}

    def ports(values) -> list[tuple[str, list[object]]]:
        return [(v.name, [d.dim_value or d.dim_param or None
                          for d in v.type.tensor_type.shape.dim])
                for v in values if v.name not in weights]

    return ports(model.graph.input), ports(model.graph.output)


def session_ports(session) -> tuple[list[tuple[str, list[object]]], list[tuple[str, list[object]]]]:
    """(name, shape) of an onnxruntime session's inputs and outputs."""
    return ([(i.name, list(i.shape)) for i in session.get_inputs()],
            [(o.name, list(o.shape)) for o in session.get_outputs()])


def _conv_attributes(model) -> dict[str, dict[str, list[int]]]:
    onnx = import_optional("onnx", extra="ukis")
    attrs = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            attrs[node.input[1]] = {
                a.name: list(onnx.helper.get_attribute_value(a)) for a in node.attribute
                if a.name in ("strides", "kernel_shape")
            }
    return attrs


def _static_pads(model, *, input_shape: list[int]) -> dict[str, tuple[int, int]]:
    """Evaluate the constant sub-graphs that compute each convolution's "same" padding."""
    onnx = import_optional("onnx", extra="ukis")
    ort = import_optional("onnxruntime", extra="ukis")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    pad_nodes = [n for n in probe.graph.node if n.op_type == "Pad"]
    consumers = {n.input[0]: n.input[1] for n in probe.graph.node if n.op_type == "Conv"}
    del probe.graph.output[:]
    for node in pad_nodes:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, None)
        )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    values = session.run(
        [n.input[1] for n in pad_nodes], {name: np.zeros(input_shape, np.float32)}
    )
    pads = {}
    for node, value in zip(pad_nodes, values, strict=True):
        begin_h, begin_w, end_h, end_w = (int(v) for v in np.asarray(value)[[2, 3, 6, 7]])
        if (begin_h, end_h) != (begin_w, end_w):
            raise WeightsError(f"unsupported non-square padding in {node.name}")
        pads[consumers[node.output[0]]] = (begin_h, end_h)
    return pads


def _initializers(model) -> dict[str, np.ndarray]:
    numpy_helper = import_optional("onnx.numpy_helper", extra="ukis")
    return {
        t.name.removeprefix(_PREFIX): numpy_helper.to_array(t).astype(np.float32)
        for t in model.graph.initializer
        if t.name.startswith(_PREFIX)
    }


def _block_configs(weights, attrs, pads) -> tuple[MBConvConfig, ...]:
    blocks: list[MBConvConfig] = []
    while f"encoder._blocks.{len(blocks)}._depthwise_conv.weight" in weights:
        key = f"encoder._blocks.{len(blocks)}."
        depthwise = weights[key + "_depthwise_conv.weight"]
        expanded = depthwise.shape[0]
        expand = weights.get(key + "_expand_conv.weight")
        blocks.append(
            MBConvConfig(
                in_channels=expanded if expand is None else expand.shape[1],
                out_channels=weights[key + "_project_conv.weight"].shape[0],
                expanded_channels=expanded,
                se_channels=weights[key + "_se_reduce.weight"].shape[0],
                kernel_size=depthwise.shape[-1],
                stride=attrs[_PREFIX + key + "_depthwise_conv.weight"]["strides"][0],
                pad=pads[_PREFIX + key + "_depthwise_conv.weight"],
            )
        )
    return tuple(blocks)


def _decoder_channels(weights: dict[str, np.ndarray]) -> tuple[int, ...]:
    channels: list[int] = []
    while f"decoder.blocks.{len(channels)}.conv1.0.weight" in weights:
        channels.append(weights[f"decoder.blocks.{len(channels)}.conv1.0.weight"].shape[0])
    return tuple(channels)


def efficientnet_unet_from_onnx(path: str | Path, *,
                                signature: OnnxSignature | None = None) -> EfficientNetUNet:
    """Build an :class:`EfficientNetUNet` in float32 from an exported ONNX file.

    With ``signature``, the graph's inputs and outputs are checked against it before anything
    in the graph is run (:class:`WeightsError` if they do not fit).
    """
    onnx = import_optional("onnx", extra="ukis")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends
        raise WeightsError(f"{path} is not a readable ONNX file ({error})") from None
    if signature is not None:
        signature.check(*graph_ports(model), source=path)
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    weights = _initializers(model)
    attrs = _conv_attributes(model)
    pads = _static_pads(model, input_shape=dims)
    blocks = _block_configs(weights, attrs, pads)
    strided = [i for i, b in enumerate(blocks) if b.stride > 1]
    config = EfficientNetUNetConfig(
        in_channels=weights["encoder._conv_stem.weight"].shape[1],
        classes=weights["segmentation_head.0.weight"].shape[0],
        stem_channels=weights["encoder._conv_stem.weight"].shape[0],
        stem_pad=pads[_PREFIX + "encoder._conv_stem.weight"],
        blocks=blocks,
        stage_ends=(*strided[1:], len(blocks)),
        decoder_channels=_decoder_channels(weights),
    )
    network = EfficientNetUNet(config)
    import torch

    state = {_PREFIX + k: torch.from_numpy(v) for k, v in weights.items()}
    expected = network.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(
            f"ONNX file {path} lacks parameters {missing[:5]}...; not a U-Net export"
        )
    network.load_state_dict({k: state[k] for k in expected}, strict=True)
    return network.eval()


def onnx_graph_as_float32(path: str | Path) -> bytes:
    """Return the serialised graph with every float16 tensor, cast and constant made float32.

    The ukis-csmask graphs compute in float16; on CPUs without float16 kernels the float32 graph
    is faster and gives the same numbers as the float32 torch port.
    """
    onnx = import_optional("onnx", extra="ukis")
    numpy_helper = import_optional("onnx.numpy_helper", extra="ukis")
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    def widened(tensor):
        array = numpy_helper.to_array(tensor).astype(np.float32)
        return numpy_helper.from_array(array, tensor.name)

    model = onnx.load(str(path))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == float16:
            model.graph.initializer[index].CopyFrom(widened(tensor))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == float16:
                attribute.i = float32
            if attribute.name == "value" and attribute.t.data_type == float16:
                attribute.t.CopyFrom(widened(attribute.t))
    for info in [*model.graph.value_info, *model.graph.output]:
        if info.type.tensor_type.elem_type == float16:
            info.type.tensor_type.elem_type = float32
    return model.SerializeToString()
