"""The segment engine on a CUDA GPU: nvJPEG decoding, device-resident detection and crops, bf16 autocast,
concurrent detector streams and compilation give the CPU's results within the precision they trade away."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)


@pytest.fixture(scope="module")
def bundle(tiny_workdir) -> str:
    return str(tiny_workdir / "models" / "bundle.yaml")


@pytest.fixture(scope="module")
def cpu_models(bundle):
    from clothret.models import load_bundle, load_models

    return load_models(load_bundle(bundle), device="cpu")


@pytest.fixture(scope="module")
def gpu_models(bundle):
    from clothret.models import load_bundle, load_models

    return load_models(load_bundle(bundle), device="cuda")


@pytest.fixture(scope="module")
def entries(tiny_workdir):
    from clothret.datasets.catalogue import manifest_from_folder

    return manifest_from_folder(str(tiny_workdir / "data" / "validation" / "image"))


def _matched_cosines(a, b, min_iou: float = 0.5) -> np.ndarray:
    """Cosines of the features of boxes of the same image that overlap most (IoU >= ``min_iou``)."""
    from torchvision.ops import box_iou

    out = []
    for i in np.unique(a.box_image):
        ra, rb = np.nonzero(a.box_image == i)[0], np.nonzero(b.box_image == i)[0]
        if not len(ra) or not len(rb):
            continue
        iou = box_iou(torch.from_numpy(a.boxes[ra]), torch.from_numpy(b.boxes[rb])).numpy()
        best = iou.argmax(axis=1)
        ok = iou.max(axis=1) >= min_iou
        fa = a.features[ra][ok].astype(np.float32)
        fb = b.features[rb][best[ok]].astype(np.float32)
        out.append((fa * fb).sum(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def _replicated_chroma(data: bytes) -> np.ndarray:
    """A JPEG decoded as nvJPEG does, its chroma samples repeated over 2x2 pixels where libjpeg-turbo (Pillow)
    interpolates them: Pillow's decode, chroma averaged over each 2x2 block and repeated, back to RGB (a 4:2:0
    JPEG; one without chroma subsampling as Pillow decodes it)."""
    from PIL import JpegImagePlugin

    picture = Image.open(io.BytesIO(data))
    if JpegImagePlugin.get_sampling(picture) != 2:
        return np.asarray(picture.convert("RGB"))
    ycc = np.asarray(picture.convert("RGB").convert("YCbCr")).astype(np.float64)
    h, w = ycc.shape[:2]
    for ch in (1, 2):
        plane = np.pad(ycc[:, :, ch], ((0, h % 2), (0, w % 2)), mode="edge")
        blocks = plane.reshape(plane.shape[0] // 2, 2, plane.shape[1] // 2, 2).mean(axis=(1, 3))
        ycc[:, :, ch] = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:h, :w]
    return np.asarray(Image.fromarray(ycc.round().clip(0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def test_nvjpeg_decodes_like_pillow():
    from clothret.pipeline.decode import decode_on_device, for_device

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    data = []
    for (w, h), subsampling in (((160, 120), -1), ((97, 61), -1), ((97, 61), 0)):  # 4:2:0, odd sizes, 4:4:4
        buf = io.BytesIO()
        Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC).save(
            buf, format="JPEG", quality=92, subsampling=subsampling)
        data.append(buf.getvalue())
    images = decode_on_device([for_device(d) for d in data], torch.device("cuda"))
    for img, d in zip(images, data):
        pil = np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).astype(int)
        assert img.is_cuda and img.dtype == torch.uint8 and tuple(img.shape) == (3, *pil.shape[:2])
        # nvJPEG repeats the chroma samples where libjpeg-turbo interpolates them: on an H200 it differed from
        # Pillow by 2.4 levels (of 255) on the 160x120 picture and 4.3 on the 97x61 one, as much as repeated
        # chroma does (2.6, 4.3); with no chroma subsampling (4:4:4) only the IDCT's rounding differs. A swapped
        # channel or a shifted row differs by tens.
        expected = np.abs(_replicated_chroma(d).astype(int) - pil).mean()
        assert np.abs(img.permute(1, 2, 0).cpu().numpy().astype(int) - pil).mean() <= 1.25 * expected + 1.0


def test_float32_on_the_gpu_gives_the_cpus_outputs(cpu_models, gpu_models, entries):
    from clothret.pipeline.engine_config import EngineConfig
    from clothret.pipeline.segment import run_segment

    torch.backends.cudnn.allow_tf32 = False
    try:
        engine = EngineConfig(autocast="fp32", decode_on_device=False, channels_last=False)
        cpu = run_segment(entries, cpu_models, engine=engine)
        gpu = run_segment(entries, gpu_models, engine=engine)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert gpu.status == cpu.status
    # GPU kernels sum in another order: a box at a top-k or NMS boundary may flip, nearly all others match
    cosines = _matched_cosines(gpu, cpu, min_iou=0.95)
    assert len(cosines) >= 0.95 * len(cpu.boxes) and abs(len(gpu.boxes) - len(cpu.boxes)) <= 0.05 * len(cpu.boxes)
    assert np.median(cosines) >= 0.9999 and cosines.min() >= 0.99


@pytest.mark.parametrize(
    "settings",
    [{}, {"concurrent_detectors": False}, {"fusion_processes": 2}, {"autocast": "fp16"}, {"batches_in_flight": 1},
     {"fold_norms": False}, {"fuse_convs": False}],
    ids=["default", "one-stream", "fusion-processes", "fp16", "one-in-flight", "norms-not-folded", "convs-not-fused"],
)
def test_default_gpu_engine_is_close_to_the_cpu(cpu_models, gpu_models, entries, settings):
    """bf16/fp16, nvJPEG and channels-last move scores a little: most boxes and their features stay."""
    from clothret.pipeline.engine_config import EngineConfig
    from clothret.pipeline.segment import run_segment

    cpu = run_segment(entries, cpu_models, engine=EngineConfig(channels_last=False))
    gpu = run_segment(entries, gpu_models, engine=EngineConfig(**settings))
    assert gpu.status == cpu.status
    cosines = _matched_cosines(gpu, cpu)
    assert len(cosines) >= 0.8 * len(cpu.boxes)
    assert np.median(cosines) >= 0.99


def test_cuda_graphs_give_the_eager_segment(gpu_models, entries):
    """Each detector replays its own graphs on its own stream; the embedder replays one graph per batch."""
    from clothret.pipeline.engine_config import EngineConfig
    from clothret.pipeline.segment import run_segment

    eager = run_segment(entries, gpu_models, engine=EngineConfig(batch_size=4))
    graphed = run_segment(entries, gpu_models, engine=EngineConfig(batch_size=4, cuda_graphs=True))
    assert graphed.status == eager.status
    assert all(d._parts.graphs.replays > 0 for d in gpu_models.detectors)
    assert all(e._forward.replays > 0 for e in gpu_models.embedders)
    cosines = _matched_cosines(graphed, eager, min_iou=0.9)
    assert len(cosines) >= 0.95 * len(eager.boxes)
    assert np.median(cosines) >= 0.999


def test_peak_memory_and_compile_run(gpu_models, entries):
    from clothret.pipeline.engine_config import EngineConfig
    from clothret.pipeline.segment import run_segment

    torch.cuda.reset_peak_memory_stats()
    eager = run_segment(entries, gpu_models, engine=EngineConfig(autocast="fp32"))
    assert torch.cuda.max_memory_reserved() < 4e9  # tiny models: far below
    compiled = run_segment(entries, gpu_models, engine=EngineConfig(autocast="fp32", compile="default"))
    assert compiled.status == eager.status
    assert np.median(_matched_cosines(compiled, eager)) >= 0.999


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_group_norm_stays_in_bf16_and_its_layout_under_cuda_autocast(channels_last):
    """On CUDA, autocast runs GroupNorm in float32 (and its kernel makes a channels-last input NCHW); the
    inference copies' GroupNorm keeps bf16 and the layout, with the same values."""
    from clothret.inference_copy import InferenceGroupNorm

    torch.manual_seed(0)
    plain = torch.nn.GroupNorm(8, 64).cuda()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    kept = InferenceGroupNorm.of(plain)
    x = (torch.randn(4, 64, 32, 32, device="cuda") * 3 + 1).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, got = plain(x), kept(x)
    assert want.dtype == torch.float32 and got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.03)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_conv_relu_runs_cudnns_fused_kernel_under_autocast(dtype):
    """ConvReLU takes cuDNN's fused conv + bias (+ residual) + ReLU kernel on CUDA under autocast and gives
    what the separate ops give, to the dtype's rounding; in float32 it runs the plain ops."""
    from torch.profiler import ProfilerActivity, profile

    from clothret.fused_convs import ConvReLU

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1).cuda().to(memory_format=torch.channels_last)
    fused = ConvReLU(conv)
    x = torch.randn(4, 32, 40, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    z = torch.randn(4, 64, 20, 28, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        want, want_z = torch.relu(conv(x)), torch.relu(conv(x) + z)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            got, got_z = fused(x), fused(x, z)
    ops = {e.key for e in prof.key_averages()}
    assert {"aten::cudnn_convolution_relu", "aten::cudnn_convolution_add_relu"} <= ops
    assert got.dtype == got_z.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    tol = {torch.bfloat16: 0.05, torch.float16: 0.01}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(got_z.float(), want_z.float(), rtol=tol, atol=tol)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        plain = fused(x)
    assert "aten::cudnn_convolution_relu" not in {e.key for e in prof.key_averages()}
    torch.testing.assert_close(plain, torch.relu(conv(x)))
