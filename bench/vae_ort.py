"""An exported VAE decoder run by ONNX Runtime's own Python API, with and without its CPU memory
arena, and where the time went by operator: what tells the cost of the graph from the cost of how
the daemon runs it (`tessera bench vae`).

    tessera models export-onnx --checkpoint CKPT --vae VAE --no-text-encoder DIR
    python bench/vae_ort.py DIR/vae_decoder.onnx --side 1024 --threads 2
"""

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort


def run(model: str, side: int, threads: int, arena: bool) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "vae")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    latent = np.random.default_rng(0).standard_normal((1, 4, side // 8, side // 8), np.float32)
    start = time.perf_counter()
    session.run(None, {name: latent})
    seconds = time.perf_counter() - start
    by_op = collections.Counter()
    with open(session.end_profiling()) as profile:
        for event in json.load(profile):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"].get("op_name", "?")] += event["dur"]
    top = ", ".join(f"{op} {us / 1e6:.1f} s" for op, us in by_op.most_common(4))
    print(f"  arena {'on ' if arena else 'off'} {seconds:8.1f} s   {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="vae_decoder.onnx written by tessera models export-onnx")
    parser.add_argument("--side", type=int, default=1024, help="output side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"VAE decoder, {args.side}², ONNX Runtime {ort.__version__}, {args.threads} threads")
    for arena in (True, False):
        run(args.model, args.side, args.threads, arena)


if __name__ == "__main__":
    main()
