"""Decoding what real uploads contain, and the patches, checked against torchvision on real files.

Every file here is written by Pillow in the test, in the format and mode under test.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import defaults
from service.preprocess import (
    ALLOWED_FORMATS,
    DecodeLimits,
    ImageError,
    crop_patches,
    decode_image,
    image_to_crops,
    patch_boxes,
    prepare_image,
    resize_square,
)

SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"

LIMITS = DecodeLimits(max_pixels=defaults.MAX_PIXELS, draft=defaults.JPEG_DRAFT)  # the service's


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int = 300, height: int = 200) -> Image.Image:
    """A smooth RGB image (lossy codecs keep it close), different along x, y and per channel."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


# -- formats ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "tolerance"), [
    ("JPEG", 8), ("PNG", 0), ("WEBP", 8), ("BMP", 0), ("TIFF", 0), ("GIF", 40),
])
def test_formats_decode_to_rgb(fmt, tolerance):
    src = gradient()
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    img = decode_image(encode(src, fmt, **kwargs), 256, LIMITS)
    assert img.mode == "RGB"
    assert img.size == src.size
    # GIF is 256 colours: the palette quantisation is the only loss
    assert np.abs(as_array(img) - as_array(src)).mean() <= tolerance


def test_allowed_formats_open_only_what_uploads_need():
    assert {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"} <= set(ALLOWED_FORMATS)
    ppm = encode(gradient(), "PPM")  # Pillow reads PPM, but it is no upload format
    with pytest.raises(ImageError) as err:
        decode_image(ppm, 256, LIMITS)
    assert err.value.status == 415


def test_gif_first_frame():
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = decode_image(data, 256, LIMITS)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert tuple(np.asarray(img)[10, 10]) == (255, 0, 0)


def test_multi_page_tiff_and_animated_webp_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    tiff = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    for data in (tiff, webp):
        assert tuple(np.asarray(decode_image(data, 256, LIMITS))[5, 5]) == (0, 200, 0)


@pytest.mark.parametrize(("orientation", "size", "red_side"), [
    (1, (300, 200), "top"), (3, (300, 200), "bottom"), (6, (200, 300), "right"), (8, (200, 300), "left"),
])
def test_exif_orientation_is_applied(orientation, size, red_side):
    """Top half red, bottom half blue as stored; orientation 6 means 'rotate 90° clockwise to show'."""
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:100, :, 0] = 255
    arr[100:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data, 256, LIMITS)
    assert img.size == size
    a = np.asarray(img).astype(int)
    w, h = img.size
    region = {"top": a[: h // 4], "bottom": a[-h // 4:], "left": a[:, : w // 4], "right": a[:, -w // 4:]}[red_side]
    assert region[..., 0].mean() > 200 and region[..., 2].mean() < 50


# -- modes --------------------------------------------------------------------------------------------------
def test_grayscale_and_bilevel_become_rgb():
    gray = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (20, 1)), "L")
    img = decode_image(encode(gray, "PNG"), 256, LIMITS)
    assert img.mode == "RGB"
    a = np.asarray(img)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert (a[..., 0] == np.asarray(gray)).all()
    bilevel = gray.point(lambda v: 255 if v > 127 else 0).convert("1")
    for fmt in ("PNG", "BMP", "TIFF"):
        b = np.asarray(decode_image(encode(bilevel, fmt), 256, LIMITS))
        assert set(np.unique(b)) == {0, 255}


def test_palette_and_palette_transparency():
    src = gradient(64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img = decode_image(encode(src, "PNG"), 256, LIMITS)
    assert img.mode == "RGB" and (np.asarray(img) == np.asarray(src.convert("RGB"))).all()
    # a palette image whose index 0 is transparent: those pixels are composited on white
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    p.paste(1, (0, 0, 16, 32))
    for fmt in ("PNG", "GIF"):
        a = np.asarray(decode_image(encode(p, fmt, transparency=0), 256, LIMITS))
        assert tuple(a[5, 5]) == (255, 0, 0)  # opaque red
        assert tuple(a[5, 25]) == (255, 255, 255)  # transparent → white


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_is_composited_on_white(fmt):
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[..., 0] = 255  # red...
    arr[:, :20, 3] = 255  # ...opaque on the left
    arr[:, 20:, 3] = 0  # transparent on the right
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    a = np.asarray(decode_image(encode(Image.fromarray(arr, "RGBA"), fmt, **kwargs), 256, LIMITS))
    assert tuple(a[10, 5]) == (255, 0, 0)
    assert tuple(a[10, 35]) == (255, 255, 255)


def test_la_is_composited_on_white():
    arr = np.zeros((30, 30, 2), np.uint8)
    arr[..., 0] = 40
    arr[:, :15, 1] = 255
    a = np.asarray(decode_image(encode(Image.fromarray(arr, "LA"), "PNG"), 256, LIMITS))
    assert tuple(a[3, 3]) == (40, 40, 40)
    assert tuple(a[3, 25]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt):
    cmyk = Image.new("CMYK", (50, 40), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    img = decode_image(encode(cmyk, fmt, **kwargs), 256, LIMITS)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[20, 25].astype(int)
    assert r > 230 and g < 25 and b < 25


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt):
    values = np.array([[0, 257 * 64, 32896, 65535]], np.uint16).repeat(10, axis=0).repeat(10, axis=1)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    data = encode(src, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    a = np.asarray(decode_image(data, 256, LIMITS))
    assert a.shape == (10, 40, 3)
    assert [int(a[0, 10 * i + 5, 0]) for i in range(4)] == [0, 64, 128, 255]


def test_small_images_are_upscaled():
    for size in ((50, 40), (1, 1), (255, 300), (17, 600)):
        patches = image_to_crops(encode(gradient(*size), "PNG"), "ten", 256, 224, LIMITS, "bilinear")
        assert patches.shape == (10, 224, 224, 3) and patches.dtype == np.uint8


# -- patches against torchvision --------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (50, 40), (256, 256), (257, 1000), (1000, 256), (333, 333)])
def test_patches_equal_torchvision_tencrop(size, interpolation):
    from torchvision.transforms import v2

    mode = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}[interpolation]
    src = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), np.uint8))
    ref = v2.Compose([v2.Resize(256, interpolation=mode, antialias=True), v2.CenterCrop(256), v2.TenCrop(224)])(src)
    expected = np.stack([np.asarray(p) for p in ref])
    got = crop_patches(resize_square(src, 256, interpolation), 224, "ten")
    assert got.shape == expected.shape == (10, 224, 224, 3)
    assert (got == expected).all()
    centre = v2.Compose([v2.Resize(256, interpolation=mode, antialias=True), v2.CenterCrop(256),
                         v2.CenterCrop(224)])(src)
    assert (crop_patches(resize_square(src, 256, interpolation), 224, "center")[0] == np.asarray(centre)).all()
    if min(size) != 256:  # a resize happens, and the two filters really differ: the model's choice is obeyed
        other = "bicubic" if interpolation == "bilinear" else "bilinear"
        assert (resize_square(src, 256, other) != resize_square(src, 256, interpolation)).any()



TEN_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right", "center",  # TenCrop's order, by the region
             "top-right-flipped", "top-left-flipped", "bottom-right-flipped", "bottom-left-flipped", "center-flipped"]


@pytest.mark.parametrize(("size", "crop"), [(256, 224), (257, 224), (300, 227), (227, 227)])
def test_patch_boxes_describe_torchvision_tencrop(size, crop):
    """Each box, cut from the square (and mirrored when flipped), is the TenCrop patch at its position."""
    from torchvision.transforms import v2

    square = Image.fromarray(np.random.default_rng(size + crop).integers(0, 256, (size, size, 3), np.uint8))
    expected = [np.asarray(p) for p in v2.TenCrop(crop)(square)]
    boxes = patch_boxes(size, crop, "ten")
    assert [b.name for b in boxes] == TEN_NAMES
    assert [b.flipped for b in boxes] == [False] * 5 + [True] * 5
    for box, want in zip(boxes, expected, strict=True):
        region = square.crop(box.box)
        got = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if box.flipped else region
        assert (np.asarray(got) == want).all(), box
    # each corner's mirror image is the flipped patch of the same region; the mirrored square's centre cut lies
    # at size - crop - c in the square: the centre's region, or one pixel beside it when size - crop is odd
    by_name = {b.name: b for b in boxes}
    for name in ("top-left", "top-right", "bottom-left", "bottom-right"):
        assert by_name[name + "-flipped"].box == by_name[name].box
    assert by_name["center-flipped"].left == size - crop - by_name["center"].left
    (centre,) = patch_boxes(size, crop, "center")
    assert centre.name == "center" and not centre.flipped
    assert (np.asarray(square.crop(centre.box)) == np.asarray(v2.CenterCrop(crop)(square))).all()


def test_patch_boxes_of_the_paper():
    assert [b.box for b in patch_boxes(256, 224, "ten")] == [
        (0, 0, 224, 224), (32, 0, 256, 224), (0, 32, 224, 256), (32, 32, 256, 256), (16, 16, 240, 240),
        (32, 0, 256, 224), (0, 0, 224, 224), (32, 32, 256, 256), (0, 32, 224, 256), (16, 16, 240, 240)]
    with pytest.raises(ValueError, match="unknown crop scheme"):
        patch_boxes(256, 224, "five")  # type: ignore[arg-type]


def test_prepare_image_keeps_the_square_its_patches_are_cut_from():
    prepared = prepare_image(encode(gradient(400, 300), "PNG"), ("ten",), 256, 224, LIMITS, "bilinear")
    assert prepared.square.shape == (256, 256, 3)
    assert (prepared.patches["ten"] == crop_patches(prepared.square, 224, "ten")).all()


def test_extreme_aspect_ratio_resizes_only_the_centre():
    """A 10×4000 strip would become 256×102400 if resized whole; the centre-only path stays close to it."""
    src = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4000, 10, 3), np.uint8))
    got = resize_square(src, 256)
    full = np.asarray(src.resize((256, 102400), Image.Resampling.BILINEAR))
    top = round((102400 - 256) / 2)
    assert got.shape == (256, 256, 3)
    assert np.abs(got.astype(int) - full[top:top + 256].astype(int)).max() <= 1


# -- draft mode ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_large_jpeg_is_decoded_in_draft_mode_and_stays_close(orientation):
    photo = Image.open(SKLEARN_IMAGES / "china.jpg").convert("RGB")  # 640×427, a real photograph
    big = photo.resize((2400, 1601), Image.Resampling.BICUBIC)  # 1601: not a multiple of the 1/4 scale
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(big, "JPEG", quality=95, exif=exif.tobytes())
    drafted = decode_image(data, 256, LIMITS)
    full = decode_image(data, 256, DecodeLimits(max_pixels=LIMITS.max_pixels, draft=False))
    assert full.size == ((2400, 1601) if orientation in (1, 3) else (1601, 2400))
    assert max(drafted.size) <= 601  # decoded at 1/4 scale: 16× fewer pixels
    a, b = resize_square(drafted, 256).astype(int), resize_square(full, 256).astype(int)
    diff = np.abs(a - b)
    # measured: mean 0.77 grey levels, 99th percentile 5 (3.3 and 25 without the exact-extent mapping)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8
    # shorter side below 2 × 256: no reduction is possible, the pixels are those of a full decode
    medium = encode(photo, "JPEG", quality=95)
    assert (np.asarray(decode_image(medium, 256, LIMITS)) ==
            np.asarray(decode_image(medium, 256, DecodeLimits(max_pixels=LIMITS.max_pixels, draft=False)))).all()


# -- bad input ----------------------------------------------------------------------------------------------
def _status(data: bytes, limits: DecodeLimits | None = None) -> tuple[int, str]:
    with pytest.raises(ImageError) as err:
        image_to_crops(data, "ten", 256, 224, limits or LIMITS, "bilinear")
    return err.value.status, str(err.value)


def test_bad_inputs_get_their_status():
    jpeg = encode(gradient(), "JPEG", quality=90)
    png = encode(gradient(), "PNG")
    assert _status(b"") == (422, "the file is empty")
    assert _status(b"hello, this is text and not an image\n" * 20)[0] == 415
    assert _status(b"%PDF-1.4\n" + b"0" * 2000)[0] == 415
    status, message = _status(jpeg[: len(jpeg) // 2])
    assert status == 400 and "truncated" in message
    status, message = _status(png[: len(png) // 2])
    assert status == 400 and "truncated" in message
    corrupt = bytearray(png)
    corrupt[200:400] = bytes(200)
    assert _status(bytes(corrupt))[0] == 400
    # a file that begins like an accepted format but cannot be read is corrupt (400), not unsupported (415)
    for broken in (jpeg[:3], jpeg[:30], png[:20], b"GIF89a" + bytes(4), b"RIFF\x00\x00\x00\x00WEBPVP8 "):
        assert _status(broken)[0] == 400, broken


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (10_000, 6_000)), "PNG")  # 60 M pixels in a few kB
    assert len(bomb) < 100_000
    status, message = _status(bomb)
    assert status == 413 and "60,000,000 pixels" in message
    status, _ = _status(encode(gradient(100, 100), "PNG"), DecodeLimits(max_pixels=5_000, draft=True))
    assert status == 413
    huge = encode(Image.new("1", (20_000, 10_000)), "PNG")  # beyond Pillow's own hard limit as well
    assert _status(huge)[0] == 413


def test_prepare_image_reports_format_and_stored_size_and_cuts_every_scheme_from_one_decode():
    data = encode(gradient(300, 200), "WEBP")
    prepared = prepare_image(data, ["center", "ten"], 256, 224, LIMITS, "bilinear")
    assert (prepared.format, prepared.width, prepared.height) == ("WEBP", 300, 200)
    assert prepared.patches["center"].shape == (1, 224, 224, 3) and prepared.patches["ten"].shape == (10, 224, 224, 3)
    np.testing.assert_array_equal(prepared.patches["ten"], image_to_crops(data, "ten", 256, 224, LIMITS, "bilinear"))
    np.testing.assert_array_equal(prepared.patches["center"][0], prepared.patches["ten"][4])  # the same centre
