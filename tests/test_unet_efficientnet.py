import pytest
import torch

from xcloud.models.unet_efficientnet import EfficientNetUNet, EfficientNetUNetConfig, MBConvConfig


def tiny_config(in_channels=4, classes=3):
    def block(i, o, e, s):
        return MBConvConfig(i, o, e, max(1, i // 4), 3, s, (0, 1) if s == 2 else (1, 1))

    blocks = (
        block(8, 8, 8, 1), block(8, 12, 24, 2), block(12, 16, 48, 2),
        block(16, 24, 64, 2), block(24, 32, 96, 2),
    )
    return EfficientNetUNetConfig(in_channels, classes, 8, (0, 1), blocks, (2, 3, 4, 5),
                                  decoder_channels=(32, 16, 16, 8, 8))


def test_config_round_trips_through_a_dict():
    config = tiny_config()
    assert EfficientNetUNetConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 160)])
def test_any_multiple_of_32_and_batch_size(height, width):
    network = EfficientNetUNet(tiny_config()).eval()
    with torch.no_grad():
        out = network(torch.randn(3, 4, height, width))
    assert out.shape == (3, 3, height, width)


def test_other_sizes_are_refused_with_advice():
    network = EfficientNetUNet(tiny_config()).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        network(torch.randn(1, 4, 50, 64))


def test_parameter_names_follow_smp():
    names = set(EfficientNetUNet(tiny_config()).state_dict())
    assert "model.encoder._blocks.1._depthwise_conv.weight" in names
    assert "model.decoder.blocks.0.conv1.0.weight" in names
    assert "model.segmentation_head.0.bias" in names
