#!/usr/bin/env python3
"""Refiners' own ``MultiUpscaler.upscale()`` (its real code, from a checkout of the refiners
repository put on ``sys.path``), PyTorch eager fp32 on the CPU, on random SD 1.5-sized weights,
with an ESRGAN pre-upscale as the Refiners Space does: the same 64-filter 23-block RRDBNet as
``clarity_pytorch.py`` over the whole image (one tile, as Tessera's default tiling takes a 256²
input), then PIL Lanczos to the canvas, in place of the library's plain Lanczos.

Two steps, two processes, so that the measured process's peak memory is the job's:

    python bench/refiners_multi_upscaler.py --refiners .cache/refiners/src write DIR
    python bench/refiners_multi_upscaler.py --refiners .cache/refiners/src run DIR \\
        --size 256 --scale 2 --threads 2 --runs 2

``write`` builds the library's own networks (``StableDiffusion_1``: UNet, CLIP text encoder,
autoencoder; the tile ``Controlnet``) with their random initialisation and saves them in the
library's own format. ``run`` loads them through ``MultiUpscaler(UpscalerCheckpoints(…))`` and
calls ``upscale()`` with its defaults (Clarity's numbers: 18 steps, strength 0.35, tiles of
144 × 112 latents, DPM-Solver, autoencoder tiles of 1024) ``--runs`` times with different seeds,
printing each job's seconds, the ESRGAN part of it, the model loading and the peak RSS.
The weights are random on both sides of a comparison and drawn apart (the same shapes, not the
same numbers): fp32 dense arithmetic costs the same whatever the values.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path


def refiners_on_path(src: str) -> None:
    path = Path(src).resolve()
    if not (path / "refiners").is_dir():
        sys.exit(f"{path} holds no refiners package (give the checkout's src/ folder)")
    sys.path.insert(0, str(path))


def write(out: Path) -> None:
    import torch
    from refiners.fluxion.utils import save_to_safetensors
    from refiners.foundationals.latent_diffusion.stable_diffusion_1.controlnet import (
        SD1ControlnetAdapter,
    )
    from refiners.foundationals.latent_diffusion.stable_diffusion_1.model import (
        StableDiffusion_1,
    )

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sd = StableDiffusion_1(device=torch.device("cpu"), dtype=torch.float32)
    save_to_safetensors(out / "unet.safetensors", sd.unet.state_dict())
    save_to_safetensors(out / "text_encoder.safetensors", sd.clip_text_encoder.state_dict())
    save_to_safetensors(out / "lda.safetensors", sd.lda.state_dict())
    adapter = SD1ControlnetAdapter(target=sd.unet, name="tile")
    save_to_safetensors(out / "controlnet_tile.safetensors", adapter.controlnet.state_dict())
    print(f"refiners weights written to {out} in {time.perf_counter() - started:.1f} s")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(weights: Path, size: int, scale: float, threads: int, runs: int, steps: int) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from refiners.foundationals.latent_diffusion.stable_diffusion_1.multi_upscaler import (
        MultiUpscaler,
        UpscalerCheckpoints,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clarity_pytorch import RRDBNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class EsrganMultiUpscaler(MultiUpscaler):
        """The library's upscaler with an ESRGAN pre-upscale (the Refiners Space's)."""

        esrgan_seconds = 0.0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.esrgan = RRDBNet().eval()

        @torch.no_grad()
        def pre_upscale(self, image: Image.Image, upscale_factor: float) -> Image.Image:
            started = time.perf_counter()
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
            y = self.esrgan(x.permute(2, 0, 1).unsqueeze(0)).clamp(0, 1)[0]
            up = Image.fromarray((y.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
            canvas = (
                int((image.width * upscale_factor) // 8 * 8),
                int((image.height * upscale_factor) // 8 * 8),
            )
            result = up.resize(canvas, resample=Image.Resampling.LANCZOS)
            self.esrgan_seconds += time.perf_counter() - started
            return result

    started = time.perf_counter()
    upscaler = EsrganMultiUpscaler(
        checkpoints=UpscalerCheckpoints(
            unet=weights / "unet.safetensors",
            clip_text_encoder=weights / "text_encoder.safetensors",
            lda=weights / "lda.safetensors",
            controlnet_tile=weights / "controlnet_tile.safetensors",
        ),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    load = time.perf_counter() - started
    print(f"Refiners MultiUpscaler, {size}² ×{scale}, {steps} steps, {threads} threads")
    print(f"models loaded in {load:.1f} s (not counted in the jobs)")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for job in range(1, runs + 1):
        upscaler.esrgan_seconds = 0.0
        started = time.perf_counter()
        result = upscaler.upscale(
            image,
            upscale_factor=scale,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(job),
        )
        seconds = time.perf_counter() - started
        print(
            f"refiners job {job}: {seconds:.1f} s ({result.width}×{result.height}; "
            f"ESRGAN + Lanczos {upscaler.esrgan_seconds:.1f} s)"
        )
    print(f"refiners peak RSS: {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refiners", required=True, help="the refiners checkout's src/ folder")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the library's random networks")
    w.add_argument("dir", type=Path)
    r = sub.add_parser("run", help="time MultiUpscaler.upscale()")
    r.add_argument("dir", type=Path)
    r.add_argument("--size", type=int, default=256)
    r.add_argument("--scale", type=float, default=2.0)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--runs", type=int, default=2)
    r.add_argument("--steps", type=int, default=18)
    args = parser.parse_args()
    refiners_on_path(args.refiners)
    if args.command == "write":
        write(args.dir)
    else:
        run(args.dir, args.size, args.scale, args.threads, args.runs, args.steps)


if __name__ == "__main__":
    main()
