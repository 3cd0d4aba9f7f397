#!/usr/bin/env python3
"""Tessera Upscale for GIMP 3: Filters ▸ Enhance ▸ Tessera Upscale…

Sends the selected part of the active layer (or all of it) to the Tessera
daemon, shows its progress, and puts the upscaled pixels in a new layer above
the source at the selection's position — with the image scaled by the same
factor first when the result would not fit, or when asked — as one undo
step, or in a new image.

GIMP runs this file as its own process: it must sit in a folder of the same
name inside a ``plug-ins`` folder, be executable, and have ``tessera_gimp.py``
and the ``tessera_client`` package beside it (``plugin-gimp/install.py`` puts
them there). GIMP's Cancel button kills this process; the daemon then cancels
the job because its connection dropped.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
# Run from a source checkout: the client is in shared/python.
_CHECKOUT_CLIENT = os.path.join(HERE, os.pardir, os.pardir, "shared", "python")
if not os.path.isdir(os.path.join(HERE, "tessera_client")) and os.path.isdir(_CHECKOUT_CLIENT):
    sys.path.insert(1, os.path.normpath(_CHECKOUT_CLIENT))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

import tessera_gimp as core  # noqa: E402
from tessera_client import Image, data_dir  # noqa: E402

# --- Test hooks ---------------------------------------------------------------
# Only read when the variables are set (by tests/gimp/): a log of what the
# plug-in did, and an automatic answer to its dialog.
TEST_LOG_ENV = "TESSERA_GIMP_TEST_LOG"
TEST_DIALOG_ENV = "TESSERA_GIMP_TEST_DIALOG"


def _test_log(event, **fields):
    path = os.environ.get(TEST_LOG_ENV)
    if not path:
        return
    fields.update(event=event, pid=os.getpid())
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\n")
        f.flush()


# --- Registration -------------------------------------------------------------


def _add_argument(procedure, argument):
    flags = GObject.ParamFlags.READWRITE
    if argument.kind == "double":
        procedure.add_double_argument(
            argument.name,
            argument.nick,
            argument.blurb,
            argument.minimum,
            argument.maximum,
            argument.default,
            flags,
        )
    elif argument.kind == "int":
        procedure.add_int_argument(
            argument.name,
            argument.nick,
            argument.blurb,
            int(argument.minimum),
            int(argument.maximum),
            argument.default,
            flags,
        )
    elif argument.kind == "string":
        procedure.add_string_argument(
            argument.name, argument.nick, argument.blurb, argument.default, flags
        )
    elif argument.kind == "choice":
        choice = Gimp.Choice.new()
        for number, (nick, label, help_text) in enumerate(argument.choices):
            choice.add(nick, number, label, help_text)
        procedure.add_choice_argument(
            argument.name, argument.nick, argument.blurb, choice, argument.default, flags
        )
    else:
        raise ValueError(f"unknown argument kind {argument.kind!r}")


class TesseraUpscale(Gimp.PlugIn):
    def do_query_procedures(self):
        return [core.PROCEDURE_NAME]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(core.MENU_LABEL)
        procedure.add_menu_path(core.MENU_PATH)
        procedure.set_documentation(
            "Upscale the selection or layer with Tessera's AI upscaler",
            "Sends the selection (clipped to the active layer), or the whole layer, to the "
            "Tessera daemon, which enlarges it and (with the Clarity or Refiners preset) "
            "repaints its detail with Stable Diffusion, and puts the result in a new layer "
            "above it at the selection's position, or in a new image. Starts the daemon when "
            "it is not running.",
            name,
        )
        procedure.set_attribution("Tessera contributors", "Tessera contributors", "2026")
        for argument in core.ARGUMENTS:
            _add_argument(procedure, argument)
        procedure.add_image_return_value(
            "result-image",
            "Result image",
            "The image holding the result",
            True,
            GObject.ParamFlags.READWRITE,
        )
        procedure.add_layer_return_value(
            "result-layer",
            "Result layer",
            "The new layer with the result",
            True,
            GObject.ParamFlags.READWRITE,
        )
        return procedure


# --- Running ------------------------------------------------------------------


def _failure(procedure, status, message):
    _test_log("error", status=status.value_nick, message=message)
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(status, error)


def run(procedure, run_mode, image, drawables, config, data):
    _test_log("start", run_mode=run_mode.value_nick)
    if len(drawables) != 1:
        return _failure(
            procedure,
            Gimp.PDBStatusType.CALLING_ERROR,
            "Tessera Upscale works on one layer at a time: select a single layer.",
        )
    drawable = drawables[0]
    if run_mode == Gimp.RunMode.INTERACTIVE:
        if not _dialog(procedure, config):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    values = {argument.name: config.get_property(argument.name) for argument in core.ARGUMENTS}
    _test_log("values", values=values)
    try:
        result_image, layer = _upscale(image, drawable, values, run_mode)
    except Exception as error:  # every failure becomes GIMP's error message
        return _failure(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, core.error_text(error))
    finally:
        Gimp.progress_end()
    Gimp.displays_flush()
    return Gimp.ValueArray.new_from_values(
        [
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Image, result_image),
            GObject.Value(Gimp.Layer, layer),
        ]
    )


#: Ids of the dialog's Advanced section (an expander around a box).
ADVANCED = "advanced"
ADVANCED_BOX = "advanced-box"
#: Id of the line under the model fields.
MODELS_HINT = "models-hint"
#: Lines of text a prompt field shows before it grows.
PROMPT_LINES = 3


def _box_id(name):
    """The dialog id of a multi-line argument's box (its label over its text)."""
    return name + "-box"


def _dialog(procedure, config):
    """Shows the procedure's dialog (GIMP fills it with the last values used);
    True when the user pressed OK. The main arguments are at the top
    (``core.DIALOG_MAIN``), the others in a folded Advanced section; the
    prompts are several lines of wrapped text, and the model fields list the
    installed models (the daemon's list, or the models folder when it is not
    running), with a first-run hint when there are none."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(core.PROCEDURE_NAME)
    # GIMP hands an empty string argument back as None, which an entry cannot show.
    for argument in core.ARGUMENTS:
        if argument.kind == "string" and config.get_property(argument.name) is None:
            config.set_property(argument.name, "")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Tessera Upscale")
    models, source = core.installed_models()
    folder = os.path.join(data_dir().path, "models")
    hint = core.models_hint(models, source, folder)
    hint_label = dialog.get_label(MODELS_HINT, hint, False, False)
    hint_label.set_line_wrap(True)
    hint_label.set_max_width_chars(60)
    hint_label.set_xalign(0.0)
    # Sliders for the main values; numbers to type for the rest (the seed has
    # two billion), the tile sides stepping by 8 as the daemon wants them.
    for name in ("scale", "creativity", "resemblance"):
        dialog.get_widget(name, GimpUi.SpinScale.__gtype__)
    dialog.get_widget("seed", GimpUi.LabelSpin.__gtype__)
    for name in ("tile-width", "tile-height"):
        dialog.get_widget(name, GimpUi.LabelSpin.__gtype__).set_increments(8, 32)
    for name in core.MULTI_LINE:
        _multi_line(dialog, name, Gtk)

    def placed(names):
        return [_box_id(n) if n in core.MULTI_LINE else n for n in names]

    main = placed(core.DIALOG_MAIN)
    main.insert(main.index("upscaler") + 1, MODELS_HINT)
    dialog.fill_box(ADVANCED_BOX, placed(core.DIALOG_ADVANCED))
    dialog.get_label("advanced-title", "Advanced", False, False)
    dialog.fill_expander(ADVANCED, "advanced-title", False, ADVANCED_BOX)
    dialog.fill(main + [ADVANCED])
    for name in core.MULTI_LINE:
        _frame(dialog.get_widget(name, GObject.TYPE_NONE), Gtk)
    combos = {
        name: _offer_models(dialog, config, name, core.model_names(models, kind), Gtk)
        for name, kind in core.MODEL_ARGUMENTS.items()
    }
    upscaler_only = Gimp.ValueArray.new_from_values(
        [GObject.Value(GObject.TYPE_STRING, "upscaler")]
    )
    for name in core.DIFFUSION_ONLY:
        dialog.set_sensitive_if_in(name, None, "preset", upscaler_only, False)
    answer = os.environ.get(TEST_DIALOG_ENV)
    if answer:
        _test_log("dialog-hint", text=hint, source=source)
        _answer_dialog_for_test(dialog, config, json.loads(answer), combos, Gtk)
    confirmed = dialog.run()
    dialog.destroy()
    _test_log("dialog-closed", confirmed=bool(confirmed))
    return confirmed


def _multi_line(dialog, name, Gtk):
    """A wrapped text box for ``name`` under a label of its own, with the
    argument's mnemonic: GIMP's text view for a string has no label."""
    nick = next(a.nick for a in core.ARGUMENTS if a.name == name)
    view = dialog.get_widget(name, Gtk.TextView.__gtype__)
    view.set_wrap_mode(Gtk.WrapMode.WORD_CHAR)
    view.set_accepts_tab(False)
    lines = view.create_pango_layout("X").get_pixel_size()[1] * PROMPT_LINES
    view.set_size_request(-1, lines + view.get_top_margin() + view.get_bottom_margin())
    label = dialog.get_label(name + "-label", nick, False, True)
    label.set_xalign(0.0)
    label.set_mnemonic_widget(view)
    view.bind_property("sensitive", label, "sensitive", GObject.BindingFlags.SYNC_CREATE)
    dialog.fill_box(_box_id(name), [name + "-label", name])


def _frame(view, Gtk):
    """Puts a text view in a sunken frame where it is, so it reads as a field."""
    parent = view.get_parent()
    position = parent.child_get_property(view, "position")
    parent.remove(view)
    frame = Gtk.Frame()
    frame.set_shadow_type(Gtk.ShadowType.IN)
    frame.add(view)
    parent.pack_start(frame, False, True, 0)
    parent.reorder_child(frame, position)
    frame.show_all()


def _offer_models(dialog, config, name, names, Gtk):
    """Gives the model argument ``name`` a combo box listing ``names`` (the
    installed models of its kind) in which a name can still be typed, bound
    to the argument. GIMP's own entry for it stays, hidden, in its labelled
    row; the combo takes its place beside the label."""
    labeled = dialog.get_widget(name, GObject.TYPE_NONE)
    entry = labeled.get_entry()
    combo = Gtk.ComboBoxText.new_with_entry()
    for model in names:
        combo.append_text(model)
    text = combo.get_child()
    text.set_placeholder_text("Tessera's default")
    text.set_tooltip_text(entry.get_tooltip_text() or labeled.get_tooltip_text())
    config.bind_property(
        name,
        text,
        "text",
        GObject.BindingFlags.BIDIRECTIONAL | GObject.BindingFlags.SYNC_CREATE,
    )
    combo.set_hexpand(True)
    entry.set_no_show_all(True)
    entry.hide()
    left = labeled.child_get_property(entry, "left-attach")
    top = labeled.child_get_property(entry, "top-attach")
    labeled.attach(combo, left + 1, top, 1, 1)
    labeled.get_label().set_mnemonic_widget(text)
    combo.show_all()
    return combo


def _answer_dialog_for_test(dialog, config, answer, combos, Gtk):
    """Test hook: once the dialog is shown, log the values it shows (and the
    model lists, the prompt fields, every mnemonic with the Advanced section
    unfolded), set ``answer["set"]`` as a script would, type ``answer["type"]``
    into text fields and pick ``answer["choose"]`` in model lists as a user
    would, and press OK (or Cancel)."""
    from gi.repository import Gdk

    def widget(name):
        return dialog.get_widget(name, GObject.TYPE_NONE)

    def sensitive():
        return {a.name: bool(widget(a.name).get_sensitive()) for a in core.ARGUMENTS}

    def mnemonics():
        found = []

        def walk(item):
            if isinstance(item, Gtk.Label):
                key = item.get_mnemonic_keyval()
                if key != Gdk.KEY_VoidSymbol and item.get_mapped():
                    found.append([Gdk.keyval_name(key).lower(), item.get_text()])
            if isinstance(item, Gtk.Container):
                item.forall(walk)

        walk(dialog)
        return found

    def text_of(view):
        buffer = view.get_buffer()
        return buffer.get_text(buffer.get_start_iter(), buffer.get_end_iter(), True)

    def settle():
        while Gtk.events_pending():
            Gtk.main_iteration()

    def screenshot(suffix):
        prefix = answer.get("screenshot")
        if prefix:
            window = dialog.get_window()
            shot = Gdk.pixbuf_get_from_window(window, 0, 0, window.get_width(), window.get_height())
            shot.savev(f"{prefix}-{suffix}.png", "png", [], [])

    def respond():
        shown = {argument.name: config.get_property(argument.name) for argument in core.ARGUMENTS}
        advanced = widget(ADVANCED)
        folded = bool(advanced.get_expanded())
        settle()
        screenshot("folded")
        advanced.set_expanded(True)
        settle()
        screenshot("unfolded")
        prompts = {
            name: {
                "widget": type(widget(name)).__name__,
                "text": text_of(widget(name)),
                "wraps": widget(name).get_wrap_mode() != Gtk.WrapMode.NONE,
                "height": widget(name).get_preferred_height()[0],
                "label": dialog.get_widget(name + "-label", GObject.TYPE_NONE).get_text(),
            }
            for name in core.MULTI_LINE
        }
        lists = {
            name: {
                "items": [row[0] for row in combo.get_model()],
                "text": combo.get_child().get_text(),
                "shown": bool(combo.get_mapped()),
            }
            for name, combo in combos.items()
        }
        _test_log(
            "dialog-shown",
            values=shown,
            visible=bool(dialog.get_visible()),
            advanced=[a.name for a in core.ARGUMENTS if widget(a.name).is_ancestor(advanced)],
            advanced_expanded=folded,
            tile_step=widget("tile-width").get_spin_button().get_increments()[0],
            sensitive=sensitive(),
            mnemonics=mnemonics(),
            prompts=prompts,
            models=lists,
        )
        for name, value in answer.get("set", {}).items():
            config.set_property(name, value)
        for name, value in answer.get("type", {}).items():
            widget(name).get_buffer().set_text(value)
        for name, value in answer.get("choose", {}).items():
            combo = combos[name]
            items = [row[0] for row in combo.get_model()]
            combo.set_active(items.index(value))
        advanced.set_expanded(folded)
        _test_log(
            "dialog-set",
            sensitive=sensitive(),
            models={name: combo.get_child().get_text() for name, combo in combos.items()},
        )
        ok = answer.get("response", "ok") == "ok"
        dialog.response(Gtk.ResponseType.OK if ok else Gtk.ResponseType.CANCEL)
        return False

    dialog.connect("map", lambda *_: GLib.timeout_add(int(answer.get("delay_ms", 200)), respond))


def _upscale(image, drawable, values, run_mode):
    """Reads, sends, waits, writes; returns the result's image and layer."""
    non_empty, x, y, width, height = drawable.mask_intersect()
    if not non_empty or width <= 0 or height <= 0:
        raise RuntimeError(
            "the selection does not cover any of the active layer; select part of it"
        )
    layout = core.layout_for(
        image.get_precision().value_nick, image.get_base_type().value_nick, drawable.has_alpha()
    )
    pixels = drawable.get_buffer().get(
        Gegl.Rectangle.new(x, y, width, height), 1.0, layout.babl, Gegl.AbyssPolicy.NONE
    )
    source = Image(width, height, layout.channels, layout.sample, layout.transfer, pixels)
    params = core.job_params(values)
    _test_log(
        "submit",
        x=x,
        y=y,
        width=width,
        height=height,
        babl=layout.babl,
        channels=layout.channels.name,
        sample=layout.sample.name,
        transfer=layout.transfer.name,
        params=params,
    )

    Gimp.progress_init("Tessera: connecting…")
    client = core.connect_or_start(
        on_start=lambda binary: Gimp.progress_set_text("Tessera: starting its service…"),
        on_spawn=lambda pid: _test_log("daemon-started", daemon_pid=pid),
    )
    shown = [None]

    def on_progress(progress):
        text = core.progress_text(progress)
        if text != shown[0]:
            Gimp.progress_set_text(text)
            shown[0] = text
        Gimp.progress_update(min(max(progress.fraction, 0.0), 1.0))
        _test_log("progress", fraction=progress.fraction, text=text)

    def on_warning(warning):
        # E.g. the GPU could not be used and the CPU took over: the user should know why the
        # job is slow, and GIMP's messages reach them (a dialog, or its error console).
        Gimp.message(core.warning_text(warning))
        _test_log("warning", text=warning)

    with client:
        Gimp.progress_set_text("Tessera: waiting for the daemon…")
        result, timings = client.upscale(
            source, params, on_progress=on_progress, on_warning=on_warning
        )
    if (result.channels, result.sample, result.transfer) != (
        layout.channels,
        layout.sample,
        layout.transfer,
    ):
        raise RuntimeError(f"the daemon answered in another pixel layout ({result!r})")
    Gimp.progress_update(1.0)
    _test_log("done", width=result.width, height=result.height, timings=len(timings))

    name = f"{drawable.get_name()} ×{params['scale']:g} (Tessera)"
    if values["output"] == core.OUTPUT_NEW_IMAGE:
        return _to_new_image(image, name, layout, result, run_mode)
    return image, _to_new_layer(
        image, drawable, (x, y, width, height), name, layout, result, values["output"]
    )


def _layer_type(image, layout):
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    if layout.channels.has_alpha:
        return Gimp.ImageType.GRAYA_IMAGE if gray else Gimp.ImageType.RGBA_IMAGE
    return Gimp.ImageType.GRAY_IMAGE if gray else Gimp.ImageType.RGB_IMAGE


def _fill(layer, layout, result):
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, result.width, result.height), layout.babl, result.data)
    buffer.flush()
    layer.update(0, 0, result.width, result.height)


def _to_new_layer(image, drawable, region, name, layout, result, output):
    """A new layer above the source, its corner at the selection's; with the
    image scaled by the result's factor first when ``output`` says so (or,
    for ``auto``, when the result would reach past the canvas). One undo
    step either way."""
    x, y, width, height = region
    _, offset_x, offset_y = drawable.get_offsets()
    scales, place = core.place_result(
        output,
        (image.get_width(), image.get_height()),
        (offset_x + x, offset_y + y, width, height),
        (result.width, result.height),
    )
    if drawable.is_layer_mask():
        anchor = Gimp.Layer.from_mask(drawable)
    elif drawable.is_layer():
        anchor = drawable
    else:  # a channel: on top of the layer stack
        anchor = None
    parent = anchor.get_parent() if anchor is not None else None
    position = image.get_item_position(anchor) if anchor is not None else 0
    image.undo_group_start()
    try:
        if scales:
            image.scale(place.image_width, place.image_height)
        layer = Gimp.Layer.new(
            image,
            name,
            result.width,
            result.height,
            _layer_type(image, layout),
            100.0,
            Gimp.LayerMode.NORMAL,
        )
        image.insert_layer(layer, parent, position)
        layer.set_offsets(place.x, place.y)
        _fill(layer, layout, result)
    finally:
        image.undo_group_end()
    _test_log(
        "undo-group",
        layers=len(image.get_layers()),
        scaled=scales,
        image_size=[image.get_width(), image.get_height()],
    )
    return layer


def _to_new_image(image, name, layout, result, run_mode):
    """A new image of the source's precision, profile and resolution."""
    new_image = Gimp.Image.new_with_precision(
        result.width, result.height, image.get_base_type(), image.get_precision()
    )
    new_image.undo_disable()
    profile = image.get_color_profile()
    if profile is not None:
        new_image.set_color_profile(profile)
    ok, x_resolution, y_resolution = image.get_resolution()
    if ok:
        new_image.set_resolution(x_resolution, y_resolution)
    layer = Gimp.Layer.new(
        new_image,
        name,
        result.width,
        result.height,
        _layer_type(image, layout),
        100.0,
        Gimp.LayerMode.NORMAL,
    )
    new_image.insert_layer(layer, None, 0)
    _fill(layer, layout, result)
    new_image.undo_enable()
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.Display.new(new_image)
    return new_image, layer


if __name__ == "__main__":
    Gimp.main(TesseraUpscale.__gtype__, sys.argv)
