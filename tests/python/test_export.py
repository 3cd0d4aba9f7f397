"""`tessera models export-onnx` writes standard .onnx files that onnxruntime for Python loads
and runs, with the same outputs as diffusers on the same weights (the references of
tests/fixtures/sd/, written by tests/fixtures/gen_sd.py)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[2]
SD = REPO / "tests" / "fixtures" / "sd"
TINY = ["--attention-heads", "2", "--norm-groups", "2"]
TOLERANCE = 1e-4
# fp16 graphs against the fp32 reference, relative to the largest reference magnitude.
FP16_RELATIVE = 3e-2


def read_safetensors(path):
    """The f32 tensors of a .safetensors file (the format is a JSON header and raw data)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F32", name
        begin, end = entry["data_offsets"]
        raw = data[8 + n + begin : 8 + n + end]
        out[name] = np.frombuffer(raw, dtype="<f4").reshape(entry["shape"])
    return out


REF = read_safetensors(SD / "reference.safetensors")


def hint_image(batch, h, w):
    """The ControlNet hint, as gen_sd.hint_image defines it."""
    b, c, y, x = np.meshgrid(
        np.arange(batch), np.arange(3), np.arange(h), np.arange(w), indexing="ij"
    )
    v = (x * 2 + y * 3 + c * 40 + ((x * y) % 23) * 4 + 97 * b) % 256
    return v.astype(np.float32) / np.float32(255.0)


def tessera(*args, data_dir):
    exe = REPO / "target" / "debug" / ("tessera.exe" if os.name == "nt" else "tessera")
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: build it first (cargo build, as scripts/test does)")
    return subprocess.run(
        [str(exe), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def export(root, name, *args):
    out = root / name
    result = tessera(
        "models",
        "export-onnx",
        "--checkpoint",
        str(SD / "tiny-ldm.safetensors"),
        *TINY,
        *args,
        str(out),
        data_dir=root / "data",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cn = ["--controlnet", str(SD / "tiny-controlnet.pth")]
    return {
        "plain": export(root, "plain", *cn, "--embedding", str(SD / "tiny-embedding.pt")),
        "lora": export(
            root, "lora", "--lora", str(SD / "tiny-lora-kohya.safetensors") + ":0.7", *cn
        ),
        "fp16": export(root, "fp16", "--fp16", "--no-text-encoder", *cn),
    }


def session(folder, name):
    return ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def unet_feed():
    return {
        "sample": REF["unet.sample"],
        "timestep": REF["unet.timestep"],
        "encoder_hidden_states": REF["unet.encoder_hidden_states"],
    }


def residual_names():
    return [f"down_block_{i}_additional_residual" for i in range(12)] + [
        "mid_block_additional_residual"
    ]


def check(got, want, limit=TOLERANCE):
    err = float(np.abs(got - want).max())
    assert err <= limit, err


def test_unet_without_and_with_residuals(exports):
    (out,) = session(exports["plain"], "unet").run(["out_sample"], unet_feed())
    check(out, REF["unet.ldm.out_sample"])
    feed = unet_feed()
    feed.update({n: REF[f"unet.{n}"] for n in residual_names()})
    (out,) = session(exports["plain"], "unet_controlnet").run(["out_sample"], feed)
    check(out, REF["unet.ldm.out_sample_residuals"])


def test_unet_with_a_fused_lora(exports):
    (out,) = session(exports["lora"], "unet").run(["out_sample"], unet_feed())
    check(out, REF["lora.kohya.out_sample"])


def test_text_encoder_plain_with_an_embedding_and_with_a_lora(exports):
    def hidden(folder, ids):
        (out,) = session(folder, "text_encoder").run(
            ["last_hidden_state"], {"input_ids": ids.astype(np.int64)}
        )
        return out[:, :8]

    ids = REF["te.input_ids"]
    check(hidden(exports["plain"], ids), REF["te.plain.last_hidden_state"])
    check(
        hidden(exports["plain"], REF["te.embedding.input_ids"]),
        REF["te.embedding.last_hidden_state"],
    )
    check(hidden(exports["lora"], ids), REF["te.kohya-0.7.last_hidden_state"])


def test_vae_encoder_and_decoder(exports):
    mean, logvar = session(exports["plain"], "vae_encoder").run(
        ["latent_mean", "latent_logvar"], {"sample": REF["vae.image"]}
    )
    check(mean, REF["vae.ldm.mean"])
    check(logvar, REF["vae.ldm.logvar"])
    (image,) = session(exports["plain"], "vae_decoder").run(
        ["sample"], {"latent_sample": REF["vae.latent"]}
    )
    check(image, REF["vae.ldm.decoded"])


def test_controlnet_full_and_split(exports):
    hint = hint_image(2, 64, 128)
    names = residual_names()
    feed = unet_feed()
    full = session(exports["plain"], "controlnet").run(names, {**feed, "controlnet_cond": hint})
    (embedding,) = session(exports["plain"], "controlnet_cond_encoder").run(
        ["controlnet_cond_embedding"], {"controlnet_cond": hint}
    )
    body = session(exports["plain"], "controlnet_body")
    ones = np.ones(len(names), dtype=np.float32)
    split = body.run(
        names, {**feed, "controlnet_cond_embedding": embedding, "conditioning_scales": ones}
    )
    for name, a, b in zip(names, full, split):
        check(a, REF[f"controlnet.ldm.{name}"])
        check(b, REF[f"controlnet.ldm.{name}"])
    # Residual i comes out multiplied by conditioning_scales[i].
    scales = np.linspace(0.1, 1.3, len(names), dtype=np.float32)
    scaled = body.run(
        names, {**feed, "controlnet_cond_embedding": embedding, "conditioning_scales": scales}
    )
    for k, a, b in zip(scales, split, scaled):
        check(b, k * a)


def test_fp16_graphs_keep_fp32_io_and_stay_close(exports):
    unet = session(exports["fp16"], "unet")
    assert [i.type for i in unet.get_inputs()] == ["tensor(float)"] * 3
    (out,) = unet.run(["out_sample"], unet_feed())
    want = REF["unet.ldm.out_sample"]
    check(out, want, FP16_RELATIVE * max(1.0, float(np.abs(want).max())))
    (image,) = session(exports["fp16"], "vae_decoder").run(
        ["sample"], {"latent_sample": REF["vae.latent"]}
    )
    want = REF["vae.ldm.decoded"]
    check(image, want, FP16_RELATIVE * max(1.0, float(np.abs(want).max())))


def test_weights_sit_beside_the_graphs(exports):
    folder = exports["plain"]
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(
        [
            "unet.onnx",
            "unet_controlnet.onnx",
            "unet.safetensors",
            "vae_encoder.onnx",
            "vae_decoder.onnx",
            "vae.safetensors",
            "controlnet.onnx",
            "controlnet_cond_encoder.onnx",
            "controlnet_body.onnx",
            "controlnet.safetensors",
            "text_encoder.onnx",
            "text_encoder.safetensors",
        ]
    )


def test_embeddings_without_the_text_encoder_are_an_error(tmp_path):
    result = tessera(
        "models",
        "export-onnx",
        "--checkpoint",
        str(SD / "tiny-ldm.safetensors"),
        *TINY,
        "--no-text-encoder",
        "--embedding",
        str(SD / "tiny-embedding.pt"),
        str(tmp_path / "out"),
        data_dir=tmp_path / "data",
    )
    assert result.returncode != 0
    assert "--embedding needs the text encoder" in result.stderr
