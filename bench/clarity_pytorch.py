#!/usr/bin/env python3
"""The workload of `tessera bench clarity`, in PyTorch eager: the same default Clarity job on
random full-size models built from diffusers and transformers components (SD 1.5's UNet,
ControlNet tile, VAE, CLIP ViT-L/14 text encoder) and a 64-filter 23-block ESRGAN, fp32, with
the same number of network evaluations at the same shapes:

- ESRGAN ×4 over the same tiles as Tessera's default (the fewest of at most 320 pixels,
  overlap 32: one tile at 256²; ``--esrgan-tiles a1111`` for A1111's 192-pixel tiles), then
  PIL Lanczos to the canvas;
- the two prompts through the text encoder (one 77-token chunk each);
- VAE encode of the canvas;
- per sampler evaluation and MultiDiffusion tile: ControlNet (with its hint encoder, which
  diffusers runs every time, as Refiners does) and UNet on the cond/uncond pair (batch 2);
- VAE decode.

With ``--refiners-statistics`` it also runs what Refiners' MultiUpscaler adds to every job: its
tiled autoencoder's statistics pass, an encode and a decode of the stage's image resized to
1024 × 1024 with every GroupNorm's per-group mean and variance recorded (Refiners freezes them
for its tiles; Tessera runs such a pass only when the VAE must tile, on a smaller proxy). It is
timed as its own phase and reported as a second total.

Usage (the PyTorch venv of the fixtures has everything):

    /root/fixture-venv/bin/python bench/clarity_pytorch.py --size 256 --scale 2 --threads 2

It prints the seconds of each phase and the total. `bench/compare.sh` runs it beside
`tessera bench clarity` and prints the ratio.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel


class RDB(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, padding=1) for i in range(5)
        )

    def forward(self, x):
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(F.leaky_relu(y, 0.2))
        return x + 0.2 * y


class RRDB(nn.Module):
    def __init__(self):
        super().__init__()
        self.rdbs = nn.Sequential(RDB(), RDB(), RDB())

    def forward(self, x):
        return x + 0.2 * self.rdbs(x)


class RRDBNet(nn.Module):
    """ESRGAN ×4 with 64 filters and 23 RRDBs (4x-UltraSharp's shape)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Sequential(*[RRDB() for _ in range(23)])
        self.trunk = nn.Conv2d(64, 64, 3, padding=1)
        self.up1 = nn.Conv2d(64, 64, 3, padding=1)
        self.up2 = nn.Conv2d(64, 64, 3, padding=1)
        self.hr = nn.Conv2d(64, 64, 3, padding=1)
        self.last = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, x):
        f = self.first(x)
        f = f + self.trunk(self.body(f))
        f = F.leaky_relu(self.up1(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        f = F.leaky_relu(self.up2(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        return self.last(F.leaky_relu(self.hr(f), 0.2))


def models():
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    ).eval()
    controlnet = ControlNetModel.from_unet(unet).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    ).eval()
    return unet, controlnet, vae, text, RRDBNet().eval()


def test_image(size: int) -> np.ndarray:
    """The same image as `tessera bench clarity`: gradients and a checker."""
    y, x = np.mgrid[0:size, 0:size]
    r = x * 255 // size
    g = y * 255 // size
    b = ((x // 8 + y // 8) % 2) * 160 + (x * y) % 64
    return np.stack([r, g, b]).astype(np.float32) / 255.0


def a1111_tiles(length: int, tile: int = 192, overlap: int = 8):
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    return [min(int(i * (length - tile) / (n - 1)), length - tile) for i in range(n)], tile


def fewest_tiles(length: int, tile: int = 320, overlap: int = 32):
    """Tessera's default: the fewest tiles of at most ``tile``, all of one size."""
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    return [min(int(i * (length - size) / (n - 1)), length - size) for i in range(n)], size


ESRGAN_TILES = {"fewest": fewest_tiles, "a1111": a1111_tiles}


def esrgan_tiled(net, img: np.ndarray, placement: str = "fewest") -> np.ndarray:
    _, h, w = img.shape
    tiles = ESRGAN_TILES[placement]
    ys, th = tiles(h)
    xs, tw = tiles(w)
    out = np.zeros((3, h * 4, w * 4), np.float32)
    for y in ys:
        for x in xs:
            t = torch.from_numpy(np.ascontiguousarray(img[:, y : y + th, x : x + tw]))[None]
            o = net(t)[0].clamp(0, 1).numpy()
            out[:, y * 4 : (y + th) * 4, x * 4 : (x + tw) * 4] = o
    return out


def clarity_grid(w: int, h: int, tw: int = 112, th: int = 144):
    ov = 4
    if math.ceil((w - ov) / (tw - ov)) <= 1 and math.ceil((h - ov) / (th - ov)) <= 1:
        return [(0, 0, w, h)]
    tw, th = min(tw, w), min(th, h)

    def axis(length, tile):
        n = max(1, math.ceil((length - ov) / (tile - ov)))
        step = (length - tile) / (n - 1) if n > 1 else 0
        return [min(int(i * step), length - tile) for i in range(n)]

    return [(x, y, tw, th) for y in axis(h, th) for x in axis(w, tw)]


def stage_multipliers(scale: float):
    if scale <= 2:
        return [scale]
    out, rest = [], scale
    while rest >= 2:
        out.append(2.0)
        rest /= 2
    if rest > 1:
        out.append(rest)
    return out


def group_norm_statistics(vae: nn.Module, image: torch.Tensor) -> int:
    """Refiners' statistics pass: encode and decode ``image`` resized to 1024², recording every
    GroupNorm's per-group mean and (biased) variance; returns how many were recorded."""
    stats = []

    def record(module, inputs, _output):
        x = inputs[0].reshape(inputs[0].shape[0], module.num_groups, -1)
        stats.append((x.mean(-1), x.var(-1, unbiased=False)))

    hooks = [m.register_forward_hook(record) for m in vae.modules() if isinstance(m, nn.GroupNorm)]
    try:
        proxy = F.interpolate(image, size=(1024, 1024), mode="bicubic").clamp(-1, 1)
        z = vae.encode(proxy).latent_dist.mean
        vae.decode(z)
    finally:
        for h in hooks:
            h.remove()
    return len(stats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument(
        "--esrgan-tiles",
        choices=sorted(ESRGAN_TILES),
        default="fewest",
        help="ESRGAN tiles as Tessera's default (fewest, of at most 320 px) or A1111's 192 px",
    )
    ap.add_argument(
        "--refiners-statistics",
        action="store_true",
        help="also run Refiners' per-job VAE statistics pass (a 1024² encode and decode)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    times: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - since
        return now

    t = time.perf_counter()
    unet, controlnet, vae, text, esrgan = models()
    t = lap("load", t)
    with torch.inference_mode():
        ids = torch.randint(0, 49407, (1, 77))
        cond = text(ids).last_hidden_state
        uncond = text(ids).last_hidden_state
        context = torch.cat([cond, uncond])
        t = lap("text", t)
        image = test_image(args.size)
        size = args.size
        creativity = 0.35
        evaluations = 0
        for k, m in enumerate(stage_multipliers(args.scale)):
            if k > 0:
                creativity *= 0.8
            canvas = int(size * m) // 8 * 8
            up = image
            while up.shape[1] < canvas:
                up = esrgan_tiled(esrgan, up, args.esrgan_tiles)
            pil = Image.fromarray((up.transpose(1, 2, 0) * 255).astype(np.uint8))
            pil = pil.resize((canvas, canvas), Image.LANCZOS)
            canvas_img = np.asarray(pil).astype(np.float32).transpose(2, 0, 1) / 255.0
            t = lap("upscale", t)
            x = torch.from_numpy(canvas_img * 2 - 1)[None]
            if args.refiners_statistics:
                group_norm_statistics(vae, x)
                t = lap("statistics", t)
            z = vae.encode(x).latent_dist.mean * 0.18215
            t = lap("encode", t)
            hint = torch.from_numpy(canvas_img)[None]
            lat = canvas // 8
            evals = int(min(creativity, 0.999) * args.steps) + 1
            tiles = clarity_grid(lat, lat)
            for _ in range(evals):
                total = torch.zeros_like(z)
                for tx, ty, tw, th in tiles:
                    sample = torch.cat([z[:, :, ty : ty + th, tx : tx + tw]] * 2)
                    h = hint[:, :, ty * 8 : (ty + th) * 8, tx * 8 : (tx + tw) * 8]
                    tt = torch.tensor([230.0, 230.0])
                    down, mid = controlnet(
                        sample, tt, context, torch.cat([h, h]), return_dict=False
                    )
                    eps = unet(
                        sample,
                        tt,
                        context,
                        down_block_additional_residuals=down,
                        mid_block_additional_residual=mid,
                    ).sample
                    total[:, :, ty : ty + th, tx : tx + tw] += eps[:1]
                evaluations += 1
            t = lap("denoise", t)
            decoded = vae.decode(z / 0.18215).sample
            image = ((decoded[0] + 1) / 2).clamp(0, 1).numpy()
            size = canvas
            t = lap("decode", t)
    total = sum(v for k, v in times.items() if k not in ("load", "statistics"))
    print(f"PyTorch {torch.__version__} eager, fp32, {args.threads} threads")
    for name, s in times.items():
        print(f"  {name:<10} {s:>8.1f} s")
    denoise = times.get("denoise", 0.0)
    print(f"UNet + ControlNet: {evaluations} evaluations, {denoise / evaluations:.2f} s each")
    print(f"job without load: {total:.1f} s")
    if "statistics" in times:
        with_statistics = total + times["statistics"]
        print(f"job with Refiners' statistics pass: {with_statistics:.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
