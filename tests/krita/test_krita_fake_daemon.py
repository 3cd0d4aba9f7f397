"""Inside Krita (``kritarunner``), the plug-in's request path against a
scripted daemon, for what the real one does not do on demand: a crash in
the middle of a job, another protocol version, a colour space to convert."""

from krita_support import run_krita


def case(name, **kw):
    base = {"name": name, "width": 24, "height": 16, "depth": "U8", "output": "in-place"}
    base.update(kw)
    return base


def test_a_daemon_crash_mid_job_is_reported_and_leaves_the_document_untouched(
    krita_home, fake_daemon, tmp_path
):
    fake = fake_daemon("--mode", "crash-mid-job", "--steps", "6", "--delay", "0.05")
    spec = {"out_dir": str(tmp_path), "cases": [case("crash", values={"scale": 2})]}
    entry = run_krita(krita_home, "krita_api", spec, fake.env).report["cases"]["crash"]
    assert not entry["ok"] and not entry["cancelled"]
    assert "connection to the Tessera daemon was lost" in entry["message"]
    assert any(fraction > 0 for fraction, _ in entry["progress"])
    assert entry["after"] == entry["before"]


def test_a_daemon_of_another_protocol_version_is_refused_in_words(
    krita_home, fake_daemon, tmp_path
):
    fake = fake_daemon("--mode", "version-mismatch")
    spec = {"out_dir": str(tmp_path), "cases": [case("version")]}
    entry = run_krita(krita_home, "krita_api", spec, fake.env).report["cases"]["version"]
    assert not entry["ok"]
    assert entry["message"].startswith("The plug-in and the daemon are from different releases.")
    assert entry["after"] == entry["before"]


def test_fake_upscale_in_place_and_other_colour_spaces_offer_conversion(
    krita_home, fake_daemon, tmp_path
):
    fake = fake_daemon()
    spec = {
        "out_dir": str(tmp_path),
        "cases": [
            case("fake", selection=[4, 2, 10, 8], values={"scale": 2}),
            case("gray", model="GRAYA", convert=True, values={"scale": 2}),
        ],
    }
    cases = run_krita(krita_home, "krita_api", spec, fake.env).report["cases"]
    fake_case = cases["fake"]
    assert fake_case["ok"], fake_case["message"]
    assert fake_case["layer"]["bounds"] == [8, 4, 20, 16]
    assert fake_case["document_size"] == [48, 32]
    gray = cases["gray"]
    assert not gray["ok"] and "grayscale" in gray["message"]
    assert gray["offers"][0][0] == ["RGBA", "U8"]
    assert gray["converted_model"][:2] == ["RGBA", "U8"]
    assert gray["after_conversion"]["ok"], gray["after_conversion"]
