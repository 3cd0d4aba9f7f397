"""A test-only Krita plug-in that drives the real Tessera plug-in through the
GUI, like a user: it opens a document with a layer and a selection, shows
the Tessera docker, triggers the actions, cancels mid-job, lets a second job
finish in place, undoes it, and writes what it saw to a report. It does
nothing unless ``TESSERA_KRITA_SPEC`` is set (by ``tests/krita``)."""

import os

if os.environ.get("TESSERA_KRITA_SPEC"):
    from krita import Extension, Krita

    class _Driver(Extension):
        def setup(self):
            from . import driver

            Krita.instance().notifier().windowCreated.connect(driver.start)

        def createActions(self, window):
            pass

    Krita.instance().addExtension(_Driver(Krita.instance()))
