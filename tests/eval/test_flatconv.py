"""The CPU evaluation executor for ResNets (core/eval/flatconv.py) gives the module forward's logits."""
import mlx.core as mx
import numpy as np
import pytest

from conftest import needs_mirror
from core import data
from core.eval.flatconv import FlatResNet
from core.models import registry as models
from core.models import resnet
from core.quant.actquant import QuantizedInput
from core.quant.layers import dequantize_model, quantize_model
from core.quant.spec import QuantSpec


def _images(n: int) -> mx.array:
    images, _ = data.load_cifar10("test")
    return resnet.preprocess(images[:n])


@needs_mirror
@pytest.mark.parametrize("name,bits,n", [("resnet20", 16, 33), ("resnet20", 4, 8), ("resnet56", 16, 5),
                                         ("resnet20", 16, 1)])
def test_flat_path_gives_the_module_forward_logits(name, bits, n):
    """resnet56 covers the re-padding of deep stages; bits 4 the de-quantized weights; n=1 a single image."""
    model = models.load_vision(models.resolve(name))
    if bits < 16:
        quantize_model(model, QuantSpec(bits, 64))
        dequantize_model(model)
    x = _images(n)
    expected = np.array(model(x))
    got = np.array(FlatResNet(model)(x))
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("size", [30, 27])
def test_odd_sizes_at_the_stride_2_convolutions(size):
    """30 -> 15 -> 8 and 27 -> 14 -> 7: a stride-2 convolution of an odd size pads its phases with zeros."""
    model = resnet.build("resnet20")
    mx.eval(model.parameters())
    x = mx.random.normal((3, size, size, 3), key=mx.random.key(size))
    np.testing.assert_allclose(np.array(FlatResNet(model)(x)), np.array(model(x)), rtol=1e-4, atol=2e-4)


def test_models_it_cannot_run_are_refused_not_misrun():
    model = resnet.build("resnet20")
    assert FlatResNet.try_build(model) is not None
    quantize_model(model, QuantSpec(4, 64))  # packed convolutions: de-quantize first
    assert FlatResNet.try_build(model) is None
    float_model = resnet.build("resnet20")
    float_model.layer1[0].conv1 = QuantizedInput(float_model.layer1[0].conv1, -1.0, 1.0, 8)  # simulated A8
    assert FlatResNet.try_build(float_model) is None


@needs_mirror
def test_classify_over_cpu_streams_keeps_every_row_in_order():
    """Batches spread over several streams (a ragged last one included) come back in input order."""
    model = models.load_vision(models.resolve("resnet20"))
    x = _images(230)
    got = FlatResNet(model).classify(x, batch_size=50)
    expected = np.array(model(x))
    assert got.shape == (230, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
