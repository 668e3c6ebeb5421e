"""DeepLabV3+ (ResNet-34): smp's layout, parameter count, shapes, train/eval behaviour."""

import pytest
import torch

from xcloud.models.deeplabv3plus import DeepLabV3Plus

RESNET34_WITHOUT_FC = 21_797_672 - (512 * 1000 + 1000)  # torchvision's count, less the classifier
PARAMETERS_13_7 = 22_470_359


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
        low, deep = encoder(torch.randn(1, 13, 64, 96))
    assert low.shape == (1, 64, 16, 24) and deep.shape == (1, 512, 4, 6)


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
