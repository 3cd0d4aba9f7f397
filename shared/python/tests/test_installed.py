"""The models folder read from disk, by the daemon's rules (the daemon's own
answer for the same folder is compared in ``tests/python/test_daemon.py``)."""

import os

from tessera_client import ModelEntry, ModelKind, list_installed
from tessera_client.installed import list_kind, names


def touch(path, size=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_each_kind_takes_its_own_extensions_and_names_files_by_their_stem(tmp_path):
    models = tmp_path / "models"
    touch(models / "upscalers" / "RealESRGAN_x4plus.pth", 5)
    touch(models / "upscalers" / "4x-UltraSharp.safetensors", 7)
    touch(models / "upscalers" / "notes.txt")
    touch(models / "upscalers" / "model.ckpt")  # not an upscaler extension
    touch(models / "checkpoints" / "juggernaut.SAFETENSORS", 11)
    touch(models / "checkpoints" / "old.ckpt")
    touch(models / "loras" / "more_details.safetensors")
    touch(models / "embeddings" / "neg.pt")
    assert list_kind(str(tmp_path), ModelKind.UPSCALER) == [
        ModelEntry(ModelKind.UPSCALER, "4x-UltraSharp", "upscalers/4x-UltraSharp.safetensors", 7),
        ModelEntry(ModelKind.UPSCALER, "RealESRGAN_x4plus", "upscalers/RealESRGAN_x4plus.pth", 5),
    ]
    every = list_installed(str(tmp_path))
    assert [(m.kind, m.name) for m in every] == [
        (ModelKind.CHECKPOINT, "juggernaut"),
        (ModelKind.CHECKPOINT, "old"),
        (ModelKind.UPSCALER, "4x-UltraSharp"),
        (ModelKind.UPSCALER, "RealESRGAN_x4plus"),
        (ModelKind.LORA, "more_details"),
        (ModelKind.EMBEDDING, "neg"),
    ]
    assert names(every, ModelKind.CHECKPOINT) == ["juggernaut", "old"]
    assert list_installed(str(tmp_path), [ModelKind.LORA]) == [
        ModelEntry(ModelKind.LORA, "more_details", "loras/more_details.safetensors", 3)
    ]


def test_diffusers_folders_count_for_the_kinds_that_have_them(tmp_path):
    models = tmp_path / "models"
    touch(models / "checkpoints" / "sd15" / "unet" / "weights.bin", 4)
    touch(models / "checkpoints" / "sd15" / "model_index.json", 2)
    touch(models / "upscalers" / "folder" / "x.pth")
    touch(models / "controlnet" / ".hidden.safetensors")
    every = list_installed(str(tmp_path))
    assert every == [ModelEntry(ModelKind.CHECKPOINT, "sd15", "checkpoints/sd15", 6)]


def test_links_are_followed_and_dangling_ones_skipped(tmp_path):
    elsewhere = tmp_path / "shared" / "vae.safetensors"
    touch(elsewhere, 9)
    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    os.symlink(elsewhere, folder / "linked.safetensors")
    os.symlink(tmp_path / "gone.safetensors", folder / "dangling.safetensors")
    assert list_installed(str(tmp_path)) == [
        ModelEntry(ModelKind.VAE, "linked", "vae/linked.safetensors", 9)
    ]


def test_a_missing_data_directory_has_no_models(tmp_path):
    assert list_installed(str(tmp_path / "nowhere")) == []
