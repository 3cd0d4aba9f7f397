"""The SD 1.5 VAE in PyTorch eager, whole passes on a square canvas: what `tessera bench vae`
times for its whole passes, on the same shapes, for a side-by-side ratio.

Random weights (diffusers' AutoencoderKL with SD 1.5's configuration; fp32 dense arithmetic costs
the same whatever the values). Prints one line per pass: side, pass, seconds (the best of
``--runs``), and the process's peak RSS so far.

    python bench/vae_pytorch.py --sides 512,1024 --threads 2 --runs 1
"""

import argparse
import resource
import time

import torch
from diffusers import AutoencoderKL


def sd15_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    ).eval()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="1024", help="canvas sides in pixels, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = sd15_vae()
    print(f"SD 1.5 VAE, random weights, PyTorch {torch.__version__} eager, {args.threads} threads")
    print("  side  pass      seconds   peak MiB")
    with torch.inference_mode():
        for side in (int(s) for s in args.sides.split(",")):
            image = torch.rand(1, 3, side, side) * 2 - 1
            latent = torch.randn(1, 4, side // 8, side // 8)
            seconds = best_of(args.runs, lambda x=image: vae.encode(x).latent_dist.mean)
            print(f"  {side:>5} encode {seconds:>10.1f} {peak_mib():>10.0f}")
            seconds = best_of(args.runs, lambda z=latent: vae.decode(z).sample)
            print(f"  {side:>5} decode {seconds:>10.1f} {peak_mib():>10.0f}")


if __name__ == "__main__":
    main()
