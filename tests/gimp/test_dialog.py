"""GIMP 3 with its user interface (under Xvfb): the procedure's dialog,
answered by a test hook as a user would, remembers the values of the last
run, offers the installed models (the daemon's, or the models folder's when
none runs, or a first-run hint when there are none), edits the prompts as
wrapped lines of text, and gives no two controls the same Alt-letter; and
one Ctrl+Z in the image's window takes the whole result away, the image's
scaling included."""

import json
import re

import pytest
from gimp_cases import IMAGE_SIZE, SELECTION, Case
from gimp_fake_daemon import FAKE_UPSCALERS, FakeDaemon

import tessera_gimp as core
from tessera_client import Channels, JobParams, ModelEntry, ModelKind, Sampler

DEFAULTS = {a.name: a.default for a in core.ARGUMENTS}
#: A prompt typed into the dialog, on two lines.
TYPED_PROMPT = "a watercolour landscape,\nsoft morning light"
#: Diffusion parameters a user changes in the first run: main and advanced.
CHANGED = {
    "creativity": 0.6,
    "seed": 7,
    "tile-width": 64,
    "sampler": "ddim",
    "negative-prompt": "blurry",
}
#: What the stand-in daemon has installed besides its upscalers.
CHECKPOINTS = ("juggernaut_reborn", "dreamshaper")
DAEMON_MODELS = [
    *(ModelEntry(ModelKind.UPSCALER, n, f"upscalers/{n}.pth", 1) for n in FAKE_UPSCALERS),
    *(ModelEntry(ModelKind.CHECKPOINT, n, f"checkpoints/{n}.safetensors", 1) for n in CHECKPOINTS),
    ModelEntry(ModelKind.VAE, "ft-mse", "vae/ft-mse.safetensors", 1),
    ModelEntry(ModelKind.CONTROL_NET, "tile", "controlnet/tile.pth", 1),
    ModelEntry(ModelKind.LORA, "more_details", "loras/more_details.safetensors", 1),
]


@pytest.fixture(scope="module")
def dialog_runs(gimp):
    folder = gimp.folder("dialog")
    daemon = FakeDaemon(str(folder / "tessera.sock"), models=DAEMON_MODELS)
    env = {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
    answers = [
        # A user who changes the scale and some diffusion parameters, main and
        # advanced, types a prompt and picks an upscaler and a checkpoint from
        # the lists, then presses OK.
        {
            "set": {"scale": 3.0, **CHANGED},
            "type": {"prompt": TYPED_PROMPT},
            "choose": {"upscaler": FAKE_UPSCALERS[1], "checkpoint": CHECKPOINTS[0]},
            "response": "ok",
            # Pictures of the dialog, for people to look at.
            "screenshot": gimp.inside(folder / "dialog"),
        },
        # The next time: the dialog shows those values; OK as they are.
        {"response": "ok"},
        # Then chooses the upscaler alone (the diffusion controls grey out) and cancels.
        {"set": {"scale": 5.0, "preset": "upscaler"}, "response": "cancel"},
    ]
    runs = []
    try:
        for number, answer in enumerate(answers):
            case = Case(gimp, folder, f"dialog-{number}")
            case.spec["run_mode"] = "INTERACTIVE"
            case.spec["arguments"] = {}
            run = gimp.run(
                "upscale_cases.py",
                [case.spec],
                env={**env, "TESSERA_GIMP_TEST_DIALOG": json.dumps(answer)},
                gui=True,
            )
            runs.append((case, run))
    finally:
        daemon.close()
    return runs, daemon.submissions


def _shown(run):
    shown = run.of("dialog-shown")
    assert len(shown) == 1, f"the dialog was not shown:\n{run.output}"
    return shown[0]


def test_dialog_is_shown_and_confirmed_by_the_user(dialog_runs):
    runs, submissions = dialog_runs
    case, run = runs[0]
    shown = _shown(run)
    assert shown["visible"]
    # The defaults: the protocol's (GIMP's entry widget turns an empty model name into "").
    assert shown["values"] == DEFAULTS
    # The main controls at the top, the rest in the folded Advanced section.
    assert sorted(shown["advanced"]) == sorted(core.DIALOG_ADVANCED)
    assert not shown["advanced_expanded"]
    assert shown["tile_step"] == 8
    assert all(shown["sensitive"].values()), shown["sensitive"]
    hint = run.of("dialog-hint")[0]
    assert hint["source"] == "daemon" and hint["text"] == core.models_hint(DAEMON_MODELS, "daemon")
    assert run.of("dialog-closed") == [
        {"event": "dialog-closed", "confirmed": True, "pid": shown["pid"]}
    ]
    outcome = case.outcome()
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"
    assert outcome["result"]["size"] == [SELECTION[2] * 3, SELECTION[3] * 3]
    assert outcome["result"]["offset"] == list(SELECTION[:2])
    first = submissions[0]
    assert first.params == JobParams(
        scale=3.0,
        upscaler=FAKE_UPSCALERS[1],
        checkpoint=CHECKPOINTS[0],
        creativity=0.6,
        prompt=TYPED_PROMPT,
        seed=7,
        tile_width=64,
        sampler=Sampler.DDIM,
        negative_prompt="blurry",
    )
    assert first.image.channels == Channels.RGBA
    assert bytes(first.image.data) == case.sent()


def test_dialog_remembers_the_last_values(dialog_runs):
    runs, submissions = dialog_runs
    case, run = runs[1]
    shown = _shown(run)
    assert shown["values"] == {
        **DEFAULTS,
        "scale": 3.0,
        "upscaler": FAKE_UPSCALERS[1],
        "checkpoint": CHECKPOINTS[0],
        "prompt": TYPED_PROMPT,
        **CHANGED,
    }
    # The lists show the remembered choices.
    assert shown["models"]["upscaler"]["text"] == FAKE_UPSCALERS[1]
    assert shown["models"]["checkpoint"]["text"] == CHECKPOINTS[0]
    assert shown["prompts"]["prompt"]["text"] == TYPED_PROMPT
    assert case.outcome()["status"] == "success", run.output
    assert submissions[1].params == submissions[0].params


def test_cancelling_the_dialog_changes_nothing(dialog_runs):
    runs, submissions = dialog_runs
    case, run = runs[2]
    shown = _shown(run)
    assert all(shown["sensitive"].values()), shown["sensitive"]
    # The upscaler alone ignores the diffusion arguments: they grey out.
    greyed = run.of("dialog-set")[0]["sensitive"]
    assert greyed == {a.name: a.name not in core.DIFFUSION_ONLY for a in core.ARGUMENTS}
    assert [e["confirmed"] for e in run.of("dialog-closed")] == [False]
    outcome = case.outcome()
    assert outcome["status"] == "cancel", run.output
    assert outcome["stack_after"] == outcome["stack_before"]
    assert len(submissions) == 2


def test_one_undo_removes_the_result_and_nothing_else(gimp):
    """The new layer, its position and its pixels are one undo step: a single
    Ctrl+Z removes the layer, and the step before it (the selection) stays."""
    folder = gimp.folder("undo")
    daemon = FakeDaemon(str(folder / "tessera.sock"))
    try:
        case = Case(gimp, folder, "undo")
        case.spec["undo"] = True
        scaled = Case(gimp, folder, "undo-scaled", arguments={"output": "scale-image"})
        scaled.spec["undo"] = True
        env = {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
        run = gimp.run("upscale_cases.py", [case.spec, scaled.spec], env=env, gui=True)
    finally:
        daemon.close()
    for each in (case, scaled):
        outcome = each.outcome()
        assert "exception" not in outcome, outcome["exception"] + run.output
        assert outcome["status"] == "success", run.output
        assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]
        assert outcome["stack_undone"] == outcome["stack_before"]
        assert outcome["image_undone"] == outcome["image_before"]
        assert outcome["selection_undone"], "a second undo step was taken back"
    # The image was scaled ×2 with the layer added, and one undo took both back.
    outcome = scaled.outcome()
    assert outcome["image_after"]["size"] == [IMAGE_SIZE[0] * 2, IMAGE_SIZE[1] * 2]
    assert outcome["image_undone"]["size"] == list(IMAGE_SIZE)


def test_the_model_fields_list_what_the_daemon_has_installed(dialog_runs):
    runs, _ = dialog_runs
    _, run = runs[0]
    models = _shown(run)["models"]
    assert models["upscaler"]["items"] == sorted(FAKE_UPSCALERS)
    assert models["checkpoint"]["items"] == sorted(CHECKPOINTS)
    assert models["vae"]["items"] == ["ft-mse"]
    assert models["controlnet"]["items"] == ["tile"]
    assert all(m["text"] == "" for m in models.values())  # empty: Tessera's default
    assert all(m["shown"] for m in models.values())  # Advanced unfolded: all on screen
    assert run.of("dialog-set")[0]["models"] == {
        "upscaler": FAKE_UPSCALERS[1],
        "checkpoint": CHECKPOINTS[0],
        "vae": "",
        "controlnet": "",
    }


def test_the_prompts_are_wrapped_lines_showing_the_whole_default(dialog_runs):
    runs, _ = dialog_runs
    _, run = runs[0]
    prompts = _shown(run)["prompts"]
    for name, default in (
        ("prompt", JobParams().prompt),
        ("negative-prompt", JobParams().negative_prompt),
    ):
        field = prompts[name]
        assert field["widget"] == "TextView" and field["wraps"], field
        assert field["text"] == default
        assert field["height"] >= 3 * 12, field  # three lines at least
    assert prompts["prompt"]["label"] == "Prompt"


def test_no_two_controls_share_an_alt_letter(dialog_runs):
    runs, _ = dialog_runs
    _, run = runs[0]
    found = _shown(run)["mnemonics"]
    letters = [key for key, _ in found]
    labels = [text for _, text in found]
    # The arguments with one (the Advanced section unfolded) and the buttons.
    assert {"OK", "Cancel", "Reset", "Help", "Prompt", "Steps"} <= set(labels), found
    duplicates = {key for key in letters if letters.count(key) > 1}
    assert not duplicates, [entry for entry in found if entry[0] in duplicates]
    assert not re.search(r"duplicate mnemonic", run.output), run.output


@pytest.fixture(scope="module")
def no_daemon_runs(gimp):
    """The dialog with no daemon: once with models in the folder, once with none."""
    runs = {}
    for name, files in (
        ("folder", ["checkpoints/juggernaut_reborn.safetensors", "upscalers/RealESRGAN_x4plus.pth",
                    "upscalers/4x-UltraSharp.safetensors", "vae/ft-mse.safetensors",
                    "controlnet/control_v11f1e_sd15_tile.pth", "upscalers/notes.txt"]),
        ("empty", []),
    ):  # fmt: skip
        folder = gimp.folder(f"dialog-{name}")
        for file in files:
            path = folder / "data" / "models" / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"model")
        case = Case(gimp, folder, name)
        case.spec["run_mode"] = "INTERACTIVE"
        case.spec["arguments"] = {}
        env = {
            "TESSERA_SOCKET": gimp.inside(folder / "nobody.sock"),
            "TESSERA_DATA_DIR": gimp.inside(folder / "data"),
            "TESSERA_GIMP_TEST_DIALOG": json.dumps({"response": "cancel"}),
        }
        run = gimp.run("upscale_cases.py", [case.spec], env=env, gui=True)
        runs[name] = (case, run, gimp.inside(folder / "data" / "models"))
    return runs


def test_with_no_daemon_the_model_fields_list_the_models_folder(no_daemon_runs):
    case, run, models_folder = no_daemon_runs["folder"]
    models = _shown(run)["models"]
    assert models["upscaler"]["items"] == ["4x-UltraSharp", "RealESRGAN_x4plus"]
    assert models["checkpoint"]["items"] == ["juggernaut_reborn"]
    assert models["vae"]["items"] == ["ft-mse"]
    assert models["controlnet"]["items"] == ["control_v11f1e_sd15_tile"]
    hint = run.of("dialog-hint")[0]
    assert hint["source"] == "folder"
    assert hint["text"].startswith("Tessera is not running") and models_folder in hint["text"]
    assert case.outcome()["status"] == "cancel", run.output


def test_with_no_models_at_all_the_dialog_says_how_to_install_them(no_daemon_runs):
    case, run, _ = no_daemon_runs["empty"]
    assert run.of("dialog-hint")[0]["text"] == core.FIRST_RUN_HINT
    assert "tessera-install" in core.FIRST_RUN_HINT
    assert all(m["items"] == [] for m in _shown(run)["models"].values())
    assert case.outcome()["status"] == "cancel", run.output
