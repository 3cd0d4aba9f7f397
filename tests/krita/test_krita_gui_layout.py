"""The whole Krita under Xvfb on laptop and desktop screens (1366×768 and
1920×1080), with a fresh profile, so with Krita's default dockers: the
Tessera docker shown as a user shows it (Settings ▸ Dockers) must fit beside
them with its Upscale button on the screen — checked on a screenshot — and,
with no daemon running and no models installed, say so plainly.

The screenshots (``screen.png``, ``tooltip.png``, ``message.png``) stay in
each run's folder under pytest's temporary directory."""

import shutil

import pytest
from krita_support import install_gui_driver, run_krita, short_temp_dir

from tessera_krita import texts

#: The most height the docker may ask for (its title bar aside).
MAX_MINIMUM_HEIGHT = 400

SCREENS = [(1366, 768), (1920, 1080)]


@pytest.fixture(scope="module", params=SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def layout(request, krita_home, tmp_path_factory):
    width, height = request.param
    install_gui_driver(krita_home, {"auto_start": "false"})
    data = short_temp_dir("tl")  # no models, no daemon
    out = tmp_path_factory.mktemp(f"layout-{width}x{height}")
    spec = {"out_dir": str(out), "scenario": "layout", "screen": [width, height]}
    env = {"TESSERA_DATA_DIR": str(data), "TESSERA_SOCKET": str(data / "tessera.sock")}
    try:
        run = run_krita(krita_home, None, spec, env, gui=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    report = run.report
    print(
        f"\n{width}×{height}: docker minimum {report['docker_minimum']} px "
        f"(panel {report['panel_minimum']} px), height {report['docker_height']} px, "
        f"main window minimum {report['window_minimum']} px "
        f"(before the docker {report['window_minimum_before']} px), "
        f"beside {report['dockers_beside']} (shown at start: {report['docker_shown_at_start']}); "
        f"tooltip {report['tooltip_size']}; "
        f"'{report['no_daemon_message']}' after {report['no_daemon_seconds']:.3f} s; "
        f"screenshots in {out}"
    )
    return report


def test_the_docker_fits_the_screen_beside_kritas_default_dockers(layout):
    assert layout["docker_found"]
    assert layout["default_dockers"], "Krita showed none of its default dockers"
    assert layout["docker_visible"]
    assert layout["panel_minimum"] <= MAX_MINIMUM_HEIGHT
    assert layout["docker_minimum"] <= MAX_MINIMUM_HEIGHT + 40  # with its title bar
    available = layout["available"]
    assert layout["window_minimum"] <= available[3]
    x, y, width, height = layout["window"]
    assert y >= available[1] and y + height <= available[1] + available[3], layout["window"]


def test_a_screenshot_shows_the_upscale_button(layout):
    for key in ("upscale_button", "upscale_button_after"):
        button = layout[key]
        assert button["visible"] and button["inside_screen"], button
        assert button["matching_pixels"] >= 0.98, button
    # The comparison can tell a button from another one.
    assert layout["cancel_at_upscale_place"] < 0.9
    x, y, width, height = layout["result_line"]
    assert y + height <= layout["available"][1] + layout["available"][3]


def test_the_status_line_says_not_running_on_every_attempt(layout):
    assert layout["status_attempts"] >= 3
    assert set(layout["status_texts"]) == {"Daemon not running"}, layout["status_texts"]


def test_with_no_models_a_first_run_hint_names_the_command(layout):
    assert layout["first_run_visible"]
    assert f"<code>{texts.INSTALL_COMMAND}</code>" in layout["first_run_text"]


def test_tooltips_are_rich_text_and_shown_wrapped(layout):
    tips = layout["tooltips_rich"]
    assert "tessera_param_creativity" in tips and "tessera_upscale_button" in tips
    assert all(tips.values()), [name for name, rich in tips.items() if not rich]
    width, height = layout["tooltip_size"]
    assert width <= 640 and height >= 3 * 12, layout["tooltip_size"]


def test_with_starting_turned_off_the_message_names_the_setting(layout):
    message = layout["no_daemon_message"]
    assert texts.AUTO_START_LABEL in message and "tessera serve" in message, message
    assert "path" not in message
