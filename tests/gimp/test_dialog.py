"""GIMP 3 with its user interface (under Xvfb): the procedure's dialog,
answered by a test hook as a user would, remembers the values of the last
run; and one Ctrl+Z in the image's window takes the whole result away."""

import json

import pytest
from gimp_cases import SELECTION, Case
from gimp_fake_daemon import FAKE_UPSCALERS, FakeDaemon

import tessera_gimp as core
from tessera_client import Channels, JobParams, Sampler

DEFAULTS = {a.name: a.default for a in core.ARGUMENTS}
#: Diffusion parameters a user changes in the first run: main and advanced.
CHANGED = {
    "creativity": 0.6,
    "prompt": "a watercolour landscape",
    "seed": 7,
    "tile-width": 64,
    "sampler": "ddim",
    "negative-prompt": "blurry",
}


@pytest.fixture(scope="module")
def dialog_runs(gimp):
    folder = gimp.folder("dialog")
    daemon = FakeDaemon(str(folder / "tessera.sock"))
    env = {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
    answers = [
        # A user who changes the scale, the model and some diffusion
        # parameters, main and advanced, then presses OK.
        {"set": {"scale": 3.0, "upscaler": FAKE_UPSCALERS[1], **CHANGED}, "response": "ok"},
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
    assert run.of("dialog-hint")[0]["text"] == "Installed: " + ", ".join(FAKE_UPSCALERS)
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
        creativity=0.6,
        prompt="a watercolour landscape",
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
    assert _shown(run)["values"] == {
        **DEFAULTS,
        "scale": 3.0,
        "upscaler": FAKE_UPSCALERS[1],
        **CHANGED,
    }
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
        env = {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
        run = gimp.run("upscale_cases.py", [case.spec], env=env, gui=True)
    finally:
        daemon.close()
    outcome = case.outcome()
    assert "exception" not in outcome, outcome["exception"] + run.output
    assert outcome["status"] == "success", run.output
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]
    assert outcome["stack_undone"] == outcome["stack_before"]
    assert outcome["selection_undone"], "a second undo step was taken back"
