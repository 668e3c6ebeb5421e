"""DeepLabV3+ as smp 0.3.2 builds it: layouts, parameter counts, shapes, train/eval behaviour."""

import json

import numpy as np
import pytest
import torch

from xcloud.models.deeplabv3plus import ENCODERS, DeepLabV3Plus

from .conftest import need_data

RESNET34_WITHOUT_FC = 21_797_672 - (512 * 1000 + 1000)  # torchvision's count, less the classifier
MOBILENET_V2_WITHOUT_CLASSIFIER = 3_504_872 - (1280 * 1000 + 1000)  # torchvision's, likewise
PARAMETERS_13_7 = 22_470_359
MOBILENET_V2_32_7 = 4_388_407  # the SEnSeI-v2 fixture's segmenter (32 embedding channels)
SENSEI_DEEPLAB_RESNET34 = 22_871_061  # SEnSeI-v2 + DeepLabV3+ resnet34, full size
# torchvision resnet50: 25,557,032 parameters, less the 2048 x 1000 classifier
RESNET50_WITHOUT_FC = 25_557_032 - (2048 * 1000 + 1000)
RESNET50_32_4 = 26_769_300  # DeepLabV3+ resnet50 on 32 SEnSeI channels, 4 classes

DEEPLAB_FIXTURE = "fixtures/sensei_v2_published_deeplab"
DEEPLAB_VARIANT = "SEnSeIv2-DeepLabv3plus-mobilenet_v2-test"
LAYOUT_FULL_SIZE = "fixtures/sensei_v2_published/layout_full_size.json"


def decoder_count(classes, width=256, deep=512, low=64, separable=True):
    """Decoder and head parameters, counted layer by layer (smp's DeepLabV3PlusDecoder)."""
    bn = 2 * width
    branch = deep * 9 + deep * width if separable else deep * width * 9
    aspp = (deep * width + bn) + 3 * (branch + bn) + (deep * width + bn) + (5 * width * width + bn)
    after = width * 9 + width * width + bn
    block1 = low * 48 + 2 * 48
    block2 = (48 + width) * 9 + (48 + width) * width + bn
    return aspp + after + block1 + block2 + width * classes + classes


def encoder_count(in_channels):
    return RESNET34_WITHOUT_FC + 64 * 7 * 7 * (in_channels - 3)


def mobilenet_encoder_count(in_channels):
    return MOBILENET_V2_WITHOUT_CLASSIFIER + 32 * 3 * 3 * (in_channels - 3)


def counted(state):
    """Values of a state dict without the batch-norm statistics (the parameters)."""
    return sum(v.numel() for k, v in state.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def segmenter_part(state):
    return {k.removeprefix("segmenter."): v for k, v in state.items()
            if k.startswith("segmenter.")}


@pytest.fixture(scope="module")
def network():
    return DeepLabV3Plus(13, 7).eval()


def test_parameter_count(network):
    assert sum(p.numel() for p in network.encoder.parameters()) == encoder_count(13)
    assert network.n_parameters() == PARAMETERS_13_7 == encoder_count(13) + decoder_count(7)
    assert DeepLabV3Plus(3, 1).n_parameters() == encoder_count(3) + decoder_count(1)
    plain = DeepLabV3Plus(13, 7, aspp_separable=False)
    assert plain.n_parameters() == encoder_count(13) + decoder_count(7, separable=False)


def test_parameter_names_and_shapes_follow_smp(network):
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    expected = {
        "encoder.conv1.weight": (64, 13, 7, 7),
        "encoder.layer1.2.bn2.running_var": (64,),
        "encoder.layer3.5.conv2.weight": (256, 256, 3, 3),
        "encoder.layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "decoder.aspp.0.convs.0.0.weight": (256, 512, 1, 1),
        "decoder.aspp.0.convs.3.0.0.weight": (512, 1, 3, 3),
        "decoder.aspp.0.convs.3.0.1.weight": (256, 512, 1, 1),
        "decoder.aspp.0.convs.4.1.weight": (256, 512, 1, 1),
        "decoder.aspp.0.project.0.weight": (256, 1280, 1, 1),
        "decoder.aspp.1.0.weight": (256, 1, 3, 3),
        "decoder.aspp.2.running_mean": (256,),
        "decoder.block1.0.weight": (48, 64, 1, 1),
        "decoder.block2.0.0.weight": (304, 1, 3, 3),
        "decoder.block2.1.weight": (256,),
        "segmentation_head.0.weight": (7, 256, 1, 1),
        "segmentation_head.0.bias": (7,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not any(k.startswith(("encoder.fc", "encoder.layer5")) for k in shapes)
    assert {k.split(".")[0] for k in shapes} == {"encoder", "decoder", "segmentation_head"}


def test_output_stride_16_with_a_dilated_layer4(network):
    encoder = network.encoder
    assert encoder.layer3[0].conv1.stride == (2, 2)
    for conv in (encoder.layer4[0].conv1, encoder.layer4[2].conv2):
        assert (conv.stride, conv.dilation, conv.padding) == ((1, 1), (2, 2), (2, 2))
    assert encoder.layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        features = encoder(torch.randn(1, 13, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 4, 6)]


@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 48), (80, 64)])
def test_logits_at_input_size(network, height, width):
    with torch.no_grad():
        assert network(torch.randn(2, 13, height, width)).shape == (2, 7, height, width)


def test_sizes_that_are_not_multiples_of_16_are_refused_with_advice(network):
    with pytest.raises(ValueError, match=r"multiples of 16.*pad to 64 x 64"):
        network(torch.randn(1, 13, 50, 64))
    with pytest.raises(ValueError, match=r"\(N, 13, H, W\)"):
        network(torch.randn(1, 4, 64, 64))


def test_atrous_rates_change_the_result_not_the_parameters():
    default = DeepLabV3Plus(4, 3).eval()
    paper = DeepLabV3Plus(4, 3, atrous_rates=(6, 12, 18)).eval()
    paper.load_state_dict(default.state_dict(), strict=True)
    assert paper.decoder.aspp[0].convs[1][0][0].dilation == (6, 6)
    x = torch.randn(1, 4, 128, 128)  # 8 x 8 deep features: rate 6 sees neighbours, 12 does not
    with torch.no_grad():
        assert not torch.allclose(default(x), paper(x))
    with pytest.raises(ValueError, match="three atrous rates"):
        DeepLabV3Plus(4, 3, atrous_rates=(6, 12))


def test_train_mode_differs_only_by_dropout_and_batch_norm():
    model = DeepLabV3Plus(4, 3, aspp_dropout=0.0)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        reference = model.eval()(x)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        torch.testing.assert_close(model(x), reference)
        assert not torch.allclose(model.train()(x), reference)

        noisy = DeepLabV3Plus(4, 3).train()
        torch.manual_seed(0)
        assert not torch.equal(noisy(x), noisy(x))


# -- smp 0.3.2 encoders, upsampling, and the published SEnSeI-v2 layouts ---------------------


@pytest.fixture(scope="module")
def published_deeplab():
    """The fixture's construction arguments and ``segmenter.*`` tensors (mobilenet_v2)."""
    root = need_data(DEEPLAB_FIXTURE)
    variant = json.loads((root / "meta.json").read_text())["variants"][DEEPLAB_VARIANT]
    state = torch.load(root / variant["folder"] / "weights.pt", weights_only=True)
    return variant, state


def test_published_mobilenet_v2_segmenter_loads_strictly(published_deeplab):
    variant, state = published_deeplab
    config = variant["config_yaml"]
    assert config["MODEL_TYPE"] == "DeepLabv3+" and config["DEEPLAB_CONFIG"] == "mobilenet_v2"
    embedding = next(block["embedding_dims"] for block in variant["sensei_config"]["blocks"]
                     if block["type"] == "BAND_EMBEDDING")
    network = DeepLabV3Plus(embedding, config["CLASSES"], encoder="mobilenet_v2", upsampling=1)
    segmenter = segmenter_part(state)
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in segmenter.items()}
    assert network.load_state_dict(segmenter, strict=True)
    for key, value in network.state_dict().items():
        assert value.dtype == segmenter[key].dtype and torch.equal(value, segmenter[key]), key
    n_sensei = counted({k: v for k, v in state.items() if k.startswith("senseiv2.")})
    assert network.n_parameters() == counted(segmenter) == MOBILENET_V2_32_7
    assert network.n_parameters() + n_sensei == variant["weights_pt"]["n_params_model"]


def test_published_mobilenet_v2_logits_at_a_quarter_of_the_patch(published_deeplab):
    variant, state = published_deeplab
    network = DeepLabV3Plus(32, 7, encoder="mobilenet_v2", upsampling=1).eval()
    network.load_state_dict(segmenter_part(state))
    root = need_data(DEEPLAB_FIXTURE)
    with np.load(root / variant["folder"] / "io.npz") as io:
        reference = io["s2_l1c_13_logits_b1"].shape  # the segmenter's output in the fixture
    size = variant["patch_size"]
    with torch.no_grad():
        logits = network(torch.randn(2, 32, size, size))
    assert logits.shape == reference == (2, 7, size // 4, size // 4)
    assert torch.isfinite(logits).all()


def test_full_size_resnet34_layout_maps_key_by_key():
    layout = json.loads(need_data(LAYOUT_FULL_SIZE).read_text())["deeplab_resnet34"]
    entries = {e["key"].removeprefix("segmenter."): e for e in layout["layout"]
               if e["key"].startswith("segmenter.")}
    channels = entries["encoder.conv1.weight"]["shape"][1]
    network = DeepLabV3Plus(channels, 7, upsampling=1)
    state = network.state_dict()
    assert list(state) == list(entries)  # same keys, in the same order
    for key, value in state.items():
        assert list(value.shape) == entries[key]["shape"], key
        assert str(value.dtype).removeprefix("torch.") == entries[key]["dtype"], key
    n_sensei = sum(np.prod(e["shape"], dtype=int) for e in layout["layout"]
                   if e["key"].startswith("senseiv2.")
                   and not e["key"].endswith(("running_mean", "running_var",
                                              "num_batches_tracked")))
    assert network.n_parameters() == encoder_count(channels) + decoder_count(7)
    assert network.n_parameters() + n_sensei == layout["n_params"] == SENSEI_DEEPLAB_RESNET34


def test_mobilenet_v2_parameter_count_and_smp_layout():
    network = DeepLabV3Plus(32, 7, encoder="mobilenet_v2")
    assert sum(p.numel() for p in network.encoder.parameters()) == mobilenet_encoder_count(32)
    assert network.n_parameters() == MOBILENET_V2_32_7 == (
        mobilenet_encoder_count(32) + decoder_count(7, deep=1280, low=24))
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes["encoder.features.0.0.weight"] == (32, 32, 3, 3)
    assert shapes["encoder.features.18.0.weight"] == (1280, 320, 1, 1)
    assert shapes["decoder.aspp.0.convs.0.0.weight"] == (256, 1280, 1, 1)
    assert shapes["decoder.block1.0.weight"] == (48, 24, 1, 1)
    assert not any(k.startswith("encoder.classifier") for k in shapes)


def test_mobilenet_v2_stage_5_is_dilated_for_output_stride_16():
    features = DeepLabV3Plus(5, 2, encoder="mobilenet_v2").encoder.features
    for index in range(14, 18):  # stage 5's inverted residuals: every depthwise 3x3
        depthwise = features[index].conv[1][0]
        assert (depthwise.stride, depthwise.dilation, depthwise.padding) == (
            (1, 1), (2, 2), (2, 2)), index
    assert features[18][0].dilation == (2, 2) and features[18][0].padding == (0, 0)
    assert features[7].conv[1][0].stride == (2, 2)  # stage 4 keeps its stride
    assert features[13].conv[1][0].dilation == (1, 1)
    assert features[14].conv[0][0].dilation == (2, 2)  # 1x1 expansion too, as smp does


def test_mobilenet_v2_stage_outputs():
    encoder = DeepLabV3Plus(5, 2, encoder="mobilenet_v2").eval().encoder
    with torch.no_grad():
        features = encoder(torch.randn(1, 5, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (16, 32, 48), (24, 16, 24), (32, 8, 12), (96, 4, 6), (1280, 4, 6)]
    assert ENCODERS["mobilenet_v2"].channels == tuple(f.shape[1] for f in features)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize(("height", "width"), [(48, 48), (16, 32), (80, 112)])
@pytest.mark.parametrize("upsampling", [1, 2, 4])
def test_logit_size_follows_upsampling(encoder, height, width, upsampling):
    network = DeepLabV3Plus(6, 3, encoder=encoder, upsampling=upsampling).eval()
    with torch.no_grad():
        logits = network(torch.randn(1, 6, height, width))
    assert logits.shape == (1, 3, height // 4 * upsampling, width // 4 * upsampling)
    assert isinstance(network.segmentation_head[1], torch.nn.Identity) == (upsampling == 1)


def test_upsampling_is_bilinear_with_aligned_corners():
    network = DeepLabV3Plus(4, 3, encoder="mobilenet_v2", upsampling=1).eval()
    upsampled = DeepLabV3Plus(4, 3, encoder="mobilenet_v2", upsampling=4).eval()
    upsampled.load_state_dict(network.state_dict())
    x = torch.randn(1, 4, 32, 48)
    with torch.no_grad():
        quarter, full = network(x), upsampled(x)
    expected = torch.nn.functional.interpolate(quarter, scale_factor=4, mode="bilinear",
                                               align_corners=True)
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(full[..., ::31, ::47], quarter[..., ::7, ::11])  # the corners


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_output_stride_8_dilates_two_stages(encoder):
    network = DeepLabV3Plus(4, 3, encoder=encoder, encoder_output_stride=8).eval()
    stages = network.encoder.stages()
    dilations = {conv.dilation for conv in stages[3].modules()
                 if isinstance(conv, torch.nn.Conv2d)}
    assert dilations == {(2, 2)}
    assert {conv.dilation for conv in stages[4].modules()
            if isinstance(conv, torch.nn.Conv2d)} == {(4, 4)}
    with torch.no_grad():
        assert network(torch.randn(1, 4, 40, 56)).shape == (1, 3, 40, 56)
    with pytest.raises(ValueError, match=r"multiples of 8.*pad to 48 x 56"):
        network(torch.randn(1, 4, 41, 56))
    with pytest.raises(ValueError, match="encoder_output_stride"):
        DeepLabV3Plus(4, 3, encoder=encoder, encoder_output_stride=32)


def test_unknown_encoder_is_refused_naming_the_argument():
    with pytest.raises(ValueError,
                       match=r"encoder='resnet101'.*resnet34, resnet50, mobilenet_v2"):
        DeepLabV3Plus(4, 3, encoder="resnet101")
    with pytest.raises(ValueError, match="upsampling"):
        DeepLabV3Plus(4, 3, upsampling=0)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_initialisation_follows_smp_032(encoder):
    torch.manual_seed(0)
    patched = DeepLabV3Plus(13, 7, encoder=encoder)
    plain = DeepLabV3Plus(3, 7, encoder=encoder)
    first = next(m for m in patched.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    first3 = next(m for m in plain.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = first.weight[0].numel()
    # smp's patch_first_conv resets a non-RGB first convolution: torch's U(+-1/sqrt(fan_in))
    assert first.weight.abs().max() <= fan_in ** -0.5
    # torchvision's encoder initialisation: He-normal over the fan-out
    fan_out = first3.out_channels * first3.kernel_size[0] * first3.kernel_size[1]
    assert first3.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    # the decoder and the head keep torch's defaults (smp 0.3.2 never initialises them)
    head = patched.segmentation_head[0]
    assert head.weight.abs().max() <= head.weight[0].numel() ** -0.5
    assert head.bias.abs().max() > 0


# -- resnet50 (SEnSeIv2-DeepLabv3-S2-unambiguous) ---------------------------------------------


def torchvision_resnet50_keys() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet50 state-dict keys and shapes without ``fc``, written out from
    its definition (v1.5 bottlenecks, layers 3, 4, 6, 3; torchvision is not a dependency)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(name, channels):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{suffix}"] = (channels,)
        keys[f"{name}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    stages = zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)
    for layer, (planes, blocks) in enumerate(stages, start=1):
        for index in range(blocks):
            name = f"layer{layer}.{index}"
            keys[f"{name}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{name}.bn1", planes)
            keys[f"{name}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{name}.bn2", planes)
            keys[f"{name}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{name}.bn3", planes * 4)
            if index == 0:
                keys[f"{name}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{name}.downsample.1", planes * 4)
            inplanes = planes * 4
    return keys


def test_resnet50_is_torchvisions_without_fc():
    encoder = ENCODERS["resnet50"].build(3)
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    expected = torchvision_resnet50_keys()
    assert list(shapes) == list(expected)  # names, shapes and order of torchvision's
    assert shapes == expected and len(shapes) == 318  # torchvision's 320, less fc.weight/bias
    assert sum(p.numel() for p in encoder.parameters()) == RESNET50_WITHOUT_FC == 23_508_032
    assert counted(encoder.state_dict()) == RESNET50_WITHOUT_FC
    assert ENCODERS["resnet50"].channels == (64, 256, 512, 1024, 2048)


def test_resnet50_deeplab_parameter_count_and_smp_layout():
    network = DeepLabV3Plus(32, 4, encoder="resnet50", upsampling=1)
    encoder = sum(p.numel() for p in network.encoder.parameters())
    assert encoder == RESNET50_WITHOUT_FC + 64 * 7 * 7 * (32 - 3) == 23_598_976
    assert network.n_parameters() == RESNET50_32_4 == encoder + decoder_count(4, deep=2048,
                                                                             low=256)
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes["encoder.conv1.weight"] == (64, 32, 7, 7)  # smp's patch_first_conv shape
    assert shapes["encoder.layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["decoder.aspp.0.convs.0.0.weight"] == (256, 2048, 1, 1)
    assert shapes["decoder.block1.0.weight"] == (48, 256, 1, 1)  # layer1: 256 channels
    assert shapes["segmentation_head.0.weight"] == (4, 256, 1, 1)
    expected = {f"encoder.{k}": v for k, v in torchvision_resnet50_keys().items()}
    expected["encoder.conv1.weight"] = (64, 32, 7, 7)
    assert {k: v for k, v in shapes.items() if k.startswith("encoder.")} == expected


def test_resnet50_stage_5_is_dilated_as_smp_does():
    """smp's replace_strides_with_dilation on layer4: every convolution stride 1 and
    dilation 2, padding (k // 2) * 2 (3x3 conv2: 2; 1x1 conv1/conv3/downsample: 0)."""
    network = DeepLabV3Plus(5, 2, encoder="resnet50").eval()
    encoder = network.encoder
    for block in encoder.layer4:
        assert (block.conv2.stride, block.conv2.dilation, block.conv2.padding) == (
            (1, 1), (2, 2), (2, 2))
        for conv in (block.conv1, block.conv3):
            assert (conv.stride, conv.dilation, conv.padding) == ((1, 1), (2, 2), (0, 0))
    shortcut = encoder.layer4[0].downsample[0]
    assert (shortcut.stride, shortcut.dilation, shortcut.padding) == ((1, 1), (2, 2), (0, 0))
    # layer3 keeps torchvision's stride on conv2 and on the shortcut (v1.5)
    assert encoder.layer3[0].conv2.stride == (2, 2) and encoder.layer3[0].conv1.stride == (1, 1)
    assert encoder.layer3[0].downsample[0].stride == (2, 2)
    assert encoder.layer1[0].downsample is not None  # 64 -> 256 channels at stride 1
    with torch.no_grad():
        features = encoder(torch.randn(1, 5, 64, 96))
        logits = network(torch.randn(2, 5, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 48), (256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 4, 6)]
    assert logits.shape == (2, 2, 64, 96)


def test_bottleneck_computes_torchvisions_block():
    """The bottleneck's forward, written out: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(
    conv1(x))))))) + downsample(x))."""
    from xcloud.models.deeplabv3plus import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(16, 8, stride=2).eval()
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 12, 10)
    f = torch.nn.functional

    def bn(m, t):
        return f.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0, m.eps)

    out = f.relu(bn(block.bn1, f.conv2d(x, block.conv1.weight)))
    out = f.relu(bn(block.bn2, f.conv2d(out, block.conv2.weight, stride=2, padding=1)))
    out = bn(block.bn3, f.conv2d(out, block.conv3.weight))
    shortcut = bn(block.downsample[1], f.conv2d(x, block.downsample[0].weight, stride=2))
    with torch.no_grad():
        torch.testing.assert_close(block(x), f.relu(out + shortcut))
    assert block(x).shape == (2, 32, 6, 5)
