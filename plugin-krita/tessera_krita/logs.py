"""The plug-in's log: ``<Tessera data dir>/logs/krita-plugin.log``, next to
the daemon's own logs, so that the docker's "Open the log folder" link shows
both."""

import logging
import logging.handlers
import os

FILE_NAME = "krita-plugin.log"

_handler = None


def setup(data_dir: str) -> None:
    """Logs the ``tessera_krita`` logger to the file (info and above); once."""
    global _handler
    if _handler is not None:
        return
    folder = os.path.join(data_dir, "logs")
    try:
        os.makedirs(folder, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            os.path.join(folder, FILE_NAME), maxBytes=1 << 20, backupCount=2, encoding="utf-8"
        )
    except OSError:
        return  # no log file is better than no plug-in
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("tessera_krita")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    _handler = handler
