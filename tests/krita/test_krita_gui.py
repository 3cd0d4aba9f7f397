"""The whole Krita, under Xvfb: the plug-in loaded from its profile like a
user's (enabled in ``kritarc``), its docker and actions driven by a test-only
plug-in against a real ``tessera serve``. Progress must reach the docker, a
cancel mid-job must leave the document untouched, and an in-place result
must undo in one step per change."""

import pytest
from krita_support import install_gui_driver, run_krita

from tessera_krita.params import SPECS

SELECTION = [16, 8, 192, 160]


@pytest.fixture(scope="module")
def gui(krita_home, daemon, tmp_path_factory):
    install_gui_driver(krita_home)
    out = tmp_path_factory.mktemp("gui")
    spec = {
        "out_dir": str(out),
        "width": 224,
        "height": 176,
        "selection": SELECTION,
        "model": "tiny-x4",
        "scale": 4,
        # Not a multiple of 72: Krita's own scaleImage would make it 288.
        "resolution": 300.0,
    }
    run = run_krita(krita_home, None, spec, daemon.env, gui=True)
    print(f"krita under xvfb-run: {run.seconds:.1f} s")
    return run.report


def test_the_plugin_loads_with_its_actions_and_docker(gui):
    assert gui["actions"] == {
        "tessera_upscale": "Upscale Selection or Layer (Tessera)",
        "tessera_cancel": "Cancel Tessera Upscale",
    }
    assert gui["docker_found"]
    assert gui["active_node_settled"], "the test document's layer never became active"
    # Every parameter the daemon takes (protocol v2: the diffusion ones too).
    params = sorted(k for k in gui["docker_widgets"] if k.startswith("tessera_param_"))
    assert params == sorted("tessera_param_" + spec.key for spec in SPECS)
    assert gui["connected"], gui["status_text"]
    assert gui["status_text"].startswith("Connected · idle · 0 queued · ")
    assert "tiny-x4" in gui["models_in_combo"]
    assert gui["creativity_enabled_for_upscaler"] is False, "the Upscaler-only preset ignores it"


def test_progress_reaches_the_docker_and_a_cancel_leaves_the_document_untouched(gui):
    cancel = gui["cancel"]
    assert gui["progress_reached_docker"] and gui["busy_when_cancelled"]
    assert any(0 < value < 1000 for value in cancel["values"]), cancel["values"]
    assert any(stage.startswith("Upscale · tile ") for stage in cancel["stages"]), cancel
    assert gui["idle_after_cancel"]
    assert cancel["message"] == "Cancelled; the document was left as it was."
    assert cancel["document_untouched"]
    assert cancel["documents"][0] == cancel["documents"][1], "no new document either"
    first = gui["outcomes"][0]
    assert first["cancelled"] and "CANCELLED" in first["error"], first  # the daemon's Failed


def test_an_in_place_result_arrives_and_undoes_one_step_per_change(gui):
    in_place = gui["in_place"]
    assert gui["idle_after_upscale"] and gui["outcomes"][1]["ok"], in_place["message"]
    assert in_place["message"].startswith("Upscaled 192×160 to 768×640 as a new layer")
    assert in_place["final_value"] == 1000
    before, after = in_place["before"], in_place["after"]
    assert after["size"] == [896, 704]
    assert before["resolution"] == after["resolution"] == [300.0, 300.0]
    names = [layer[0] for layer in after["layers"]]
    new = "Layer 1 ×4 (768×640) [Tessera]"
    assert names.index(new) == names.index("Layer 1") + 1
    assert after["layers"][names.index(new)][1] == [64, 32, 768, 640]
    # Undo 1: the layer goes; undo 2: the resolution that Krita's scaling
    # rounded to 288 ppi and the plug-in set back; undo 3: the canvas is its
    # old size, all as before.
    assert [layer[0] for layer in gui["after_one_undo"]["layers"]] == [
        layer[0] for layer in before["layers"]
    ]
    assert gui["after_one_undo"]["size"] == [896, 704]
    assert gui["after_one_undo"]["resolution"] == [300.0, 300.0]
    steps = gui["undos_after_the_layer"]
    assert [(s["size"], s["resolution"]) for s in steps] == [
        ([896, 704], [288.0, 288.0]),
        ([224, 176], [300.0, 300.0]),
    ]
    assert gui["after_all_undos"] == before


def test_preview_shows_the_selection_upscaled_as_one_layer_that_one_undo_removes(gui):
    assert gui["preview_button_beside_upscale"]
    preview = gui["preview"]
    assert gui["idle_after_preview"] and gui["outcomes"][2]["ok"], preview["message"]
    assert preview["message"].startswith("Preview of 192×160 (×4: 768×640) shown as a layer")
    before, after = preview["before"], preview["after"]
    assert after["size"] == before["size"], "the canvas keeps its size"
    names = [layer[0] for layer in after["layers"]]
    new = "Preview ×4 (768×640) [Tessera]"
    assert len(names) == len(before["layers"]) + 1
    assert names.index(new) == names.index("Layer 1") + 1
    # Over the selection, at the document's scale.
    assert after["layers"][names.index(new)][1] == SELECTION
    assert after["merged"] != before["merged"]
    assert preview["active"] == "Layer 1", "the painter's layer stays the active one"
    assert gui["after_preview_undo"] == before
