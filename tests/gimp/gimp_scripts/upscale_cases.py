# Runs inside GIMP 3 (python-fu-eval, `exec`ed from `-b`): for each case in
# the JSON file named by $TESSERA_TEST_ARGS, builds an image, selects, calls
# the Tessera procedure as a script would, and writes what came out.
#
# A case: {"name", "precision": "U16_NON_LINEAR", "base": "RGB"|"GRAY",
#   "image_size": [w, h], "layer": {"size": [w, h], "offset": [x, y],
#   "alpha": bool, "pixels": PATH, "babl": FORMAT, "in_group": bool},
#   "selection": [x, y, w, h] or null (image coordinates), "run_mode":
#   "NONINTERACTIVE"|"INTERACTIVE", "arguments": {"scale": 2.0, ...},
#   "read_babl": FORMAT, "out": PATH prefix}
# writes OUT.json (status, error, layers, result) and OUT.raw (the result's
# pixels in read_babl). With "undo": true (GIMP with its user interface only),
# the image gets a window, and after the call Ctrl+Z is pressed in it once,
# as a user would (xdotool): OUT.json's "stack_undone" is the layer stack then.

import json
import os
import subprocess
import time
import traceback

from gi.repository import Gegl, Gimp

PROCEDURE = "plug-in-tessera-upscale"


def _layer_type(base, alpha):
    if base == "GRAY":
        return Gimp.ImageType.GRAYA_IMAGE if alpha else Gimp.ImageType.GRAY_IMAGE
    return Gimp.ImageType.RGBA_IMAGE if alpha else Gimp.ImageType.RGB_IMAGE


def _describe(layer):
    _, x, y = layer.get_offsets()
    parent = layer.get_parent()
    return {
        "name": layer.get_name(),
        "offset": [x, y],
        "size": [layer.get_width(), layer.get_height()],
        "alpha": bool(layer.has_alpha()),
        "parent": parent.get_name() if parent is not None else None,
    }


def _image(image):
    """The image's size and resolution."""
    _, x_resolution, y_resolution = image.get_resolution()
    return {
        "size": [image.get_width(), image.get_height()],
        "resolution": [round(x_resolution, 3), round(y_resolution, 3)],
    }


def _stack(image):
    """Layer names top to bottom, group members indented as "group/name"."""
    names = []

    def walk(layers, prefix):
        for layer in layers:
            names.append(prefix + layer.get_name())
            if layer.is_group():
                walk(layer.get_children(), prefix + layer.get_name() + "/")

    walk(image.get_layers(), "")
    return names


def run_case(case):
    out = {"name": case["name"]}
    spec = case["layer"]
    image = Gimp.Image.new_with_precision(
        case["image_size"][0],
        case["image_size"][1],
        getattr(Gimp.ImageBaseType, case["base"]),
        getattr(Gimp.Precision, case["precision"]),
    )
    base_type = _layer_type(case["base"], True)
    width, height = case["image_size"]
    background = Gimp.Layer.new(
        image, "background", width, height, base_type, 100.0, Gimp.LayerMode.NORMAL
    )
    image.insert_layer(background, None, 0)
    parent = None
    if spec.get("in_group"):
        parent = Gimp.GroupLayer.new(image, "group")
        image.insert_layer(parent, None, 0)
    layer = Gimp.Layer.new(
        image,
        "source",
        spec["size"][0],
        spec["size"][1],
        _layer_type(case["base"], spec["alpha"]),
        100.0,
        Gimp.LayerMode.NORMAL,
    )
    image.insert_layer(layer, parent, 0)
    layer.set_offsets(*spec["offset"])
    top = Gimp.Layer.new(image, "top", 8, 8, base_type, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(top, parent, 0)
    image.reorder_item(top, parent, 0)
    image.reorder_item(layer, parent, 1)
    with open(spec["pixels"], "rb") as f:
        pixels = f.read()
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, spec["size"][0], spec["size"][1]), spec["babl"], pixels)
    buffer.flush()
    if case.get("selection"):
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *case["selection"])
    if case.get("resolution"):
        image.set_resolution(*case["resolution"])
    out["stack_before"] = _stack(image)
    out["images_before"] = len(Gimp.get_images())
    out["image_before"] = _image(image)
    display = Gimp.Display.new(image) if case.get("undo") else None

    procedure = Gimp.get_pdb().lookup_procedure(PROCEDURE)
    config = procedure.create_config()
    config.set_property("run-mode", getattr(Gimp.RunMode, case.get("run_mode", "NONINTERACTIVE")))
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    for name, value in case.get("arguments", {}).items():
        config.set_property(name, value)
    results = procedure.run(config)
    status = results.index(0)
    out["status"] = status.value_nick
    if status != Gimp.PDBStatusType.SUCCESS:
        out["error"] = results.index(1) if results.length() > 1 else None
    else:
        result_image = results.index(1)
        result_layer = results.index(2)
        out["same_image"] = result_image.get_id() == image.get_id()
        out["result_image"] = {
            "size": [result_image.get_width(), result_image.get_height()],
            "precision": result_image.get_precision().value_nick,
            "base": result_image.get_base_type().value_nick,
            "layers": len(result_image.get_layers()),
        }
        out["result"] = _describe(result_layer)
        w, h = result_layer.get_width(), result_layer.get_height()
        data = result_layer.get_buffer().get(
            Gegl.Rectangle.new(0, 0, w, h), 1.0, case["read_babl"], Gegl.AbyssPolicy.NONE
        )
        with open(case["out"] + ".raw", "wb") as f:
            f.write(data)
    out["stack_after"] = _stack(image)
    out["images_after"] = len(Gimp.get_images())
    out["image_after"] = _image(image)
    out["source_after"] = _describe(layer)
    if display is not None:
        _press_undo(image)
        deadline = time.monotonic() + 20
        while _stack(image) == out["stack_after"] and time.monotonic() < deadline:
            time.sleep(0.05)
        out["stack_undone"] = _stack(image)
        out["image_undone"] = _image(image)
        out["selection_undone"] = bool(Gimp.Selection.bounds(image)[1])
    out["source_unchanged"] = (
        layer.get_buffer().get(
            Gegl.Rectangle.new(0, 0, spec["size"][0], spec["size"][1]),
            1.0,
            spec["babl"],
            Gegl.AbyssPolicy.NONE,
        )
        == pixels
    )
    if display is not None:
        display.delete()
    return out


def _press_undo(image):
    """Ctrl+Z in the image's window (its title holds "-<image id>.")."""
    Gimp.displays_flush()
    marker = f"-{image.get_id()}."
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "GIMP"],
            capture_output=True,
            text=True,
        ).stdout.split()
        for window in found:
            name = subprocess.run(
                ["xdotool", "getwindowname", window], capture_output=True, text=True
            ).stdout
            if marker in name:
                subprocess.run(
                    [
                        "xdotool",
                        "windowfocus",
                        "--sync",
                        window,
                        "key",
                        "--clearmodifiers",
                        "ctrl+z",
                    ],
                    check=True,
                )
                return
        time.sleep(0.2)
    raise RuntimeError(f"no window for image {image.get_id()}")


def main():
    with open(os.environ["TESSERA_TEST_ARGS"]) as f:
        cases = json.load(f)
    for case in cases:
        try:
            out = run_case(case)
        except Exception:
            out = {"name": case["name"], "exception": traceback.format_exc()}
        with open(case["out"] + ".json", "w") as f:
            json.dump(out, f)


main()
