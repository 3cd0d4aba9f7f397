"""The one place that imports Qt.

Krita 5 embeds PyQt5; Krita 6 embeds PyQt6 and refuses ``import PyQt5``. Every
other module of the plug-in imports Qt names from here, and uses only what
both bindings offer: fully scoped enum names (``Qt.AlignmentFlag.AlignLeft``,
``QLocalSocket.LocalSocketState.ConnectedState``), which PyQt5 5.15 accepts
too, and the helpers below where the two APIs differ.
"""

import os


def qt_major_version() -> int:
    """5 or 6: what Krita says (``pykrita.qt_major_version()``, Krita 5.2.4
    and later), else whichever binding is already loaded or importable, in
    that order. ``TESSERA_QT`` (``5`` or ``6``) overrides it, for tests."""
    forced = os.environ.get("TESSERA_QT", "")
    if forced in ("5", "6"):
        return int(forced)
    try:
        import pykrita  # type: ignore[import-not-found]

        return int(pykrita.qt_major_version())
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    import sys

    if "PyQt6" in sys.modules:
        return 6
    if "PyQt5" in sys.modules:
        return 5
    try:
        import PyQt5  # noqa: F401

        return 5
    except ImportError:
        return 6


QT_MAJOR = qt_major_version()

if QT_MAJOR == 6:  # pragma: no cover - Krita 6
    from PyQt6 import QtCore, QtGui, QtNetwork, QtWidgets  # type: ignore[import-not-found]
    from PyQt6.QtCore import (  # type: ignore[import-not-found]
        QByteArray,
        QEventLoop,
        QObject,
        QSettings,
        Qt,
        QTimer,
        QUrl,
        pyqtSignal,
    )
    from PyQt6.QtGui import QDesktopServices  # type: ignore[import-not-found]
    from PyQt6.QtNetwork import QLocalSocket  # type: ignore[import-not-found]
    from PyQt6.QtWidgets import (  # type: ignore[import-not-found]
        QApplication,
        QCheckBox,
        QComboBox,
        QDockWidget,
        QDoubleSpinBox,
        QFormLayout,
        QFrame,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSizePolicy,
        QSpinBox,
        QToolButton,
        QVBoxLayout,
        QWidget,
    )
else:
    from PyQt5 import QtCore, QtGui, QtNetwork, QtWidgets
    from PyQt5.QtCore import (
        QByteArray,
        QEventLoop,
        QObject,
        QSettings,
        Qt,
        QTimer,
        QUrl,
        pyqtSignal,
    )
    from PyQt5.QtGui import QDesktopServices
    from PyQt5.QtNetwork import QLocalSocket
    from PyQt5.QtWidgets import (
        QApplication,
        QCheckBox,
        QComboBox,
        QDockWidget,
        QDoubleSpinBox,
        QFormLayout,
        QFrame,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSizePolicy,
        QSpinBox,
        QToolButton,
        QVBoxLayout,
        QWidget,
    )


def exec_(obj, *args):
    """``exec()`` of a dialog, menu or event loop (PyQt5 names it ``exec_``)."""
    run = getattr(obj, "exec", None) or obj.exec_
    return run(*args)


def socket_error_signal(socket):
    """The signal a ``QLocalSocket`` emits on errors: ``errorOccurred`` (Qt
    5.15 and 6), or the overloaded ``error`` of older Qt 5."""
    signal = getattr(socket, "errorOccurred", None)
    if signal is not None:
        return signal
    return socket.error  # pragma: no cover - Qt < 5.15


def to_bytes(data) -> bytes:
    """A ``QByteArray`` (or anything bytes-like) as ``bytes``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, QByteArray):
        return data.data()
    return bytes(data)


__all__ = [
    "QT_MAJOR",
    "QApplication",
    "QByteArray",
    "QCheckBox",
    "QComboBox",
    "QDesktopServices",
    "QDockWidget",
    "QDoubleSpinBox",
    "QEventLoop",
    "QFormLayout",
    "QFrame",
    "QHBoxLayout",
    "QLabel",
    "QLineEdit",
    "QLocalSocket",
    "QMessageBox",
    "QObject",
    "QPlainTextEdit",
    "QProgressBar",
    "QPushButton",
    "QScrollArea",
    "QSettings",
    "QSizePolicy",
    "QSpinBox",
    "QTimer",
    "QToolButton",
    "QUrl",
    "QVBoxLayout",
    "QWidget",
    "Qt",
    "QtCore",
    "QtGui",
    "QtNetwork",
    "QtWidgets",
    "exec_",
    "pyqtSignal",
    "socket_error_signal",
    "to_bytes",
]
