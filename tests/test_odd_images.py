"""Odd catalogue files (grayscale, CMYK, 16-bit, transparent, truncated, empty, bombs, strips ...): each
image is decoded correctly or refused with a reason that reads well, a model error on one image stays
that image's failure, and a refresh over all of them in one segment succeeds."""

import io
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from clothret.datasets.catalogue import manifest_from_folder, write_manifest
from clothret.pipeline.reader import (
    BAD_INPUT,
    ImageFailure,
    ImageLimits,
    UnusableImage,
    decode_image,
    iter_images,
    load_image,
)
from odd_images import png_claiming_size, write_odd_images


@pytest.fixture(scope="module")
def picture(tiny_workdir) -> np.ndarray:
    """A shop image of the tiny synthetic split: the tiny detector finds garments in it."""
    path = sorted((tiny_workdir / "data" / "validation" / "image").iterdir())[0]
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, picture):
    folder = tmp_path_factory.mktemp("odd") / "images"
    expected = write_odd_images(folder, picture)
    return folder, expected


@pytest.fixture(scope="module")
def models(tiny_workdir):
    from clothret.models import load_bundle, load_models

    return load_models(load_bundle(str(tiny_workdir / "models" / "bundle.yaml")))


def _reads_well(reason: str) -> bool:
    return not re.search(r"0x[0-9a-fA-F]{6,}|<[^>]* object|BytesIO", reason)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_each_odd_file_is_decoded_or_refused_with_a_reason_that_reads_well(odd_folder, picture):
    folder, expected = odd_folder
    for image_id, (status, fragment) in expected.items():
        [path] = [p for p in folder.iterdir() if p.stem == image_id]
        out = load_image(str(path))
        if status == "ok":
            assert isinstance(out, np.ndarray), (image_id, out)
            assert out.dtype == np.uint8 and out.shape == picture.shape, image_id
            # every lossless or lossy variant of the picture is close to it (no clipped or inverted colours)
            grey = image_id in ("grayscale", "sixteen_bit")
            reference = np.repeat(np.asarray(Image.fromarray(picture).convert("L"))[:, :, None], 3, 2) if grey else picture
            if image_id == "rgba":
                reference = picture.copy()
                reference[:, : picture.shape[1] // 8] = 255  # the transparent strip, on white
            assert np.abs(out.astype(int) - reference).mean() < 4, image_id
        else:
            assert isinstance(out, ImageFailure) and out.kind == BAD_INPUT, (image_id, out)
            assert fragment in out.reason, (image_id, out.reason)
            assert _reads_well(out.reason), out.reason


def test_sixteen_bit_images_are_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    out = decode_image(_png(Image.fromarray(ramp)))
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[..., 0], np.round(ramp / 257).astype(np.uint8))
    assert 0 < out.mean() < 200  # Pillow's own convert("RGB") clips to 255 almost everywhere


def test_transparent_and_palette_images_are_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 20:, 3] = 255  # right half opaque red, left half fully transparent
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")))
    assert (out[:, :20] == 255).all() and (out[:, 20:] == (200, 0, 0)).all()

    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 10, 120, 10] + [0] * 762)
    palette.paste(0, (0, 0, 40, 10))
    palette.info["transparency"] = 0
    out = decode_image(_png(palette))
    assert (out[:10] == 255).all() and (out[10:] == (10, 120, 10)).all()


def test_cmyk_and_exif_orientation():
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :40] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue())
    assert np.abs(out.astype(int) - rgb).mean() < 4

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif)
    upright = decode_image(buf.getvalue())
    assert upright.shape == (80, 40, 3)
    assert upright[:40].mean(axis=(0, 1))[0] > 150 > upright[40:].mean(axis=(0, 1))[0]  # red on top


def test_limits_are_keyword_arguments():
    data = _png(Image.new("RGB", (300, 300)))
    with pytest.raises(UnusableImage, match=r"image is 300x300 = 90000 px, over the 1000 px limit"):
        decode_image(data, limits=ImageLimits(max_pixels=1000))
    assert decode_image(_png(Image.new("RGB", (200, 10))), limits=ImageLimits(min_side=8, max_aspect=25)).shape == (10, 200, 3)
    with pytest.raises(UnusableImage, match="aspect ratio 20 is over 10"):
        decode_image(_png(Image.new("RGB", (200, 10))), limits=ImageLimits(min_side=8))
    with pytest.raises(UnusableImage, match=r"image is 70000x70000 = 4900 Mpx, over the 40 Mpx limit"):
        decode_image(png_claiming_size(70000, 70000))  # beyond Pillow's own bomb limit too


def test_a_model_error_on_one_image_is_that_images_failure(models, picture, caplog):
    from clothret.pipeline.mapper import map_batch, map_isolated

    wide = np.full((20, 10000, 3), 90, np.uint8)  # what the reader refuses: here it reaches the models
    flipped = np.ascontiguousarray(picture[:, ::-1])
    with pytest.raises(RuntimeError, match="Input and output sizes should be greater than 0"):
        map_batch(models, [picture, wide, flipped])

    caplog.set_level(logging.WARNING, logger="clothret.pipeline.mapper")
    out = map_isolated(models, [picture, wide, flipped], ["a", "wide", "b"])
    assert isinstance(out[1], ImageFailure) and out[1].kind == BAD_INPUT and out[1].uri == "wide"
    assert out[1].reason.startswith(
        "model failed on this image: RuntimeError: Input and output sizes should be greater than 0, but got input (H: 20, W: 10000)"
    )
    for got, image in ((out[0], picture), (out[2], flipped)):
        [alone] = map_batch(models, [image])
        np.testing.assert_allclose(got.detections.boxes, alone.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(got.features, alone.features, atol=1e-4)
    assert any("running them one by one" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # one image at fault: no error


def test_a_batch_where_every_image_fails_alone_logs_one_error(models, caplog):
    from clothret.pipeline.mapper import map_isolated

    caplog.set_level(logging.WARNING, logger="clothret.pipeline.mapper")
    strips = [np.full((20, 10000, 3), v, np.uint8) for v in (10, 90, 200)]
    out = map_isolated(models, strips, ["s1", "s2", "s3"])
    assert all(isinstance(o, ImageFailure) and o.kind == BAD_INPUT for o in out)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "every image of a batch of 3 failed alone" in errors[0].getMessage()


class _MemoryBoundDetector:
    """The real tiny detector on a device whose memory holds at most ``max_images`` images a batch."""

    def __init__(self, inner, max_images: int) -> None:
        self.inner, self.name, self.max_images = inner, inner.name, max_images

    def detect(self, images):
        import torch

        if len(images) > self.max_images:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.detect(images)


def test_out_of_memory_on_a_batch_runs_its_images_one_by_one(models, picture):
    import dataclasses

    from clothret.pipeline.mapper import map_batch, map_isolated
    from clothret.pipeline.reader import TRANSIENT

    flipped = np.ascontiguousarray(picture[:, ::-1])
    one_at_a_time = dataclasses.replace(models, detectors=[_MemoryBoundDetector(d, 1) for d in models.detectors])
    out = map_isolated(one_at_a_time, [picture, flipped], ["a", "b"])
    for got, image in zip(out, (picture, flipped)):
        assert not isinstance(got, ImageFailure)
        np.testing.assert_allclose(got.features, map_batch(models, [image])[0].features, atol=1e-4)

    none_fit = dataclasses.replace(models, detectors=[_MemoryBoundDetector(d, 0) for d in models.detectors])
    out = map_isolated(none_fit, [picture, flipped], ["a", "b"])
    assert [o.kind for o in out] == [TRANSIENT, TRANSIENT]  # retried by the next refresh, not bad input
    assert out[0].reason == "out of memory on this image alone: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_run_segment_isolates_a_model_error_past_relaxed_limits(models, odd_folder):
    """With the reader's guards relaxed, the 10000x20 strip reaches the detector, as it did when the issue was
    filed: the segment still completes and only that image fails."""
    from clothret.pipeline.segment import run_segment

    folder, expected = odd_folder
    entries = manifest_from_folder(str(folder))
    result = run_segment(entries, models, batch_size=16, limits=ImageLimits(min_side=1, max_aspect=1e6))
    status = dict(zip(result.image_ids, zip(result.status, result.reasons)))
    assert status["wide"][0] == BAD_INPUT
    assert status["wide"][1].startswith("model failed on this image: RuntimeError: Input and output sizes should be greater")
    for image_id, (kind, fragment) in expected.items():
        if kind == "ok":
            assert status[image_id] == ("ok", ""), image_id
    assert status["one_pixel"][0] == "ok"  # the models cope with 1x1 once let through
    assert set(np.unique(result.box_image)) >= {result.image_ids.index(i) for i, (k, _) in expected.items() if k == "ok"}


def test_iter_images_passes_limits_to_every_image(odd_folder):
    folder, _ = odd_folder
    uris = [str(folder / "wide.png"), str(folder / "valid.jpg")]
    default = [image for _, image in iter_images(uris)]
    relaxed = [image for _, image in iter_images(uris, limits=ImageLimits(min_side=1, max_aspect=1e6))]
    assert isinstance(default[0], ImageFailure) and isinstance(relaxed[0], np.ndarray)
    assert isinstance(default[1], np.ndarray) and isinstance(relaxed[1], np.ndarray)


@pytest.mark.slow
def test_refresh_over_odd_files_in_one_segment(prefect_server, tiny_workdir, odd_folder, tmp_path, capsys):
    """`clothret catalogue --folder` then `clothret refresh` over the odd files, all in one segment."""
    from clothret.cli import main
    from clothret.index.search import SearchIndex
    from clothret.store.feature_store import committed_segments, read_segment, segment_url

    folder, expected = odd_folder
    manifest = str(tmp_path / "manifest.jsonl")
    write_manifest(manifest_from_folder(str(folder)), manifest)
    assert sorted(json.loads(line)["image_id"] for line in open(manifest)) == sorted(expected)
    store, index = str(tmp_path / "store"), str(tmp_path / "index")
    code = main(["refresh", "--manifest", manifest, "--bundle", str(tiny_workdir / "models" / "bundle.yaml"),
                 "--store", store, "--index", index, "--segment-size", "100", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    build = json.loads(capsys.readouterr().out)
    n_bad = sum(status != "ok" for status, _ in expected.values())
    assert build["segments_computed"] == 1 and build["images_failed"] == n_bad
    assert build["images_failed_by_kind"] == {"bad_input": n_bad}

    [segment_id] = committed_segments(store, build["model_version"])
    segment = read_segment(segment_url(store, build["model_version"], segment_id))
    status = dict(zip(segment.image_ids, zip(segment.status, segment.reasons)))
    for image_id, (kind, fragment) in expected.items():
        assert status[image_id][0] == kind, (image_id, status[image_id])
        assert fragment in status[image_id][1] and _reads_well(status[image_id][1]), status[image_id]

    served = set(SearchIndex.load(index).gallery.image_ids.tolist())
    good = {image_id for image_id, (kind, _) in expected.items() if kind == "ok"}
    assert served == good
