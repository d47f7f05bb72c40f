"""Playground inputs: any PNG or JPEG becomes a 32x32 RGB image; anything else gets one clear message."""
import io

import numpy as np
import pytest
from PIL import Image

from core.errors import LabError
from core.deploy.classify import read_image, to_cifar_input
from core.deploy.generate import check_generation_settings
from core.deploy.prompts import chat_prompt_tokens


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("image,fmt", [
    (Image.new("RGB", (640, 480), (200, 30, 30)), "JPEG"),
    (Image.new("RGBA", (50, 70), (0, 0, 255, 0)), "PNG"),  # fully transparent: composited on white
    (Image.new("L", (33, 33), 128), "PNG"),
    (Image.new("1", (40, 20), 1), "PNG"),
    (Image.new("P", (64, 64), 3), "PNG"),
    (Image.new("CMYK", (64, 64), (0, 0, 0, 0)), "JPEG"),
    (Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16), "PNG"),  # 16-bit greyscale
])
def test_any_png_or_jpeg_becomes_32x32_rgb(image, fmt):
    rgb = read_image(encode(image, fmt))
    assert rgb.mode == "RGB"
    x = to_cifar_input(rgb)
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8


def test_transparency_becomes_white():
    x = to_cifar_input(read_image(encode(Image.new("RGBA", (50, 70), (0, 0, 255, 0)), "PNG")))
    assert x.min() >= 250


@pytest.mark.parametrize("data,fragment", [
    (b"", "empty"),
    (b"not an image at all", "not a readable PNG or JPEG"),
    (encode(Image.new("RGB", (64, 64)), "PNG")[:60], "not a readable PNG or JPEG"),  # truncated
    (encode(Image.new("RGB", (64, 64)), "GIF"), "GIF file"),
    (encode(Image.new("RGB", (64, 64)), "BMP"), "BMP file"),
])
def test_bad_files_get_one_clear_message(data, fragment):
    with pytest.raises(LabError, match=fragment):
        read_image(data)


def test_a_50_megapixel_image_is_refused_before_decoding():
    # A 10000x5000 PNG of one colour compresses to a few hundred kB; it must be refused from its header.
    data = encode(Image.new("L", (10000, 5000), 0), "PNG")
    with pytest.raises(LabError, match="50 megapixels"):
        read_image(data)


def test_generation_settings_are_checked():
    for args in [(0, 0.5, 1.0), (10_000, 0.5, 1.0), (16, -1.0, 1.0), (16, 0.5, 1.5)]:
        with pytest.raises(LabError):
            check_generation_settings(*args)
    check_generation_settings(16, 0.7, 0.9)


def test_prompts_are_checked(smollm2):
    _, tokenizer = smollm2
    assert chat_prompt_tokens(tokenizer, [{"role": "user", "content": "Hi"}])[-3:] == tokenizer.encode("<|im_start|>assistant\n")[-3:]
    for bad in ([], [{"role": "user", "content": ""}], [{"role": "user", "content": "a" * 5000}],
                [{"role": "user", "content": None}]):
        with pytest.raises(LabError):
            chat_prompt_tokens(tokenizer, bad)
