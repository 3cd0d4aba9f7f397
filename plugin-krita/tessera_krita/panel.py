"""The docker's contents: parameters, Upscale and Cancel, progress, the
daemon's state and messages.

A plain ``QWidget`` (the Krita ``DockWidget`` in :mod:`.docker` only wraps
it), built from the parameter specs that the protocol takes today.
"""

import html
import os
from typing import Any, Dict, List, Optional

from . import params, texts
from .connection import CONNECTED
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    Qt,
    QToolButton,
    QUrl,
    QVBoxLayout,
    QWidget,
)
from .settings import OUTPUTS, SOURCES
from .upscaler import IDLE

DEFAULT_MODEL_LABEL = "Daemon default"


class Panel(QWidget):
    def __init__(self, link: Any, upscaler: Any, settings: Any, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.link = link
        self.upscaler = upscaler
        self.settings = settings
        self.inputs: Dict[str, QWidget] = {}
        self._model_combos: List[Any] = []

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        status_row = QHBoxLayout()
        self.status_label = QLabel(texts.status_text(None, link.state))
        self.status_label.setObjectName("tessera_status")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("The Tessera daemon that runs the networks")
        self.refresh_button = QToolButton()
        self.refresh_button.setText("⟳")
        self.refresh_button.setToolTip("Connect to the daemon now and refresh its list of models")
        self.refresh_button.clicked.connect(link.reconnect_now)
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.refresh_button)
        layout.addLayout(status_row)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._build_parameters(form)
        self.source_combo = self._choice_combo("tessera_source", SOURCES, settings.source)
        self.source_combo.currentIndexChanged.connect(
            lambda _: setattr(settings, "source", self.source_combo.currentData())
        )
        form.addRow(self._label("Source", self.source_combo), self.source_combo)
        self.output_combo = self._choice_combo("tessera_output", OUTPUTS, settings.output)
        self.output_combo.currentIndexChanged.connect(
            lambda _: setattr(settings, "output", self.output_combo.currentData())
        )
        form.addRow(self._label("Result in", self.output_combo), self.output_combo)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.upscale_button = QPushButton("Upscale")
        self.upscale_button.setObjectName("tessera_upscale_button")
        self.upscale_button.setToolTip(
            "Upscale the selection (its bounding box) or, without one, the whole layer"
        )
        self.upscale_button.clicked.connect(lambda: upscaler.upscale())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("tessera_cancel_button")
        self.cancel_button.setToolTip("Stop the upscale; the document is left as it was")
        self.cancel_button.clicked.connect(upscaler.cancel)
        buttons.addWidget(self.upscale_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("tessera_progress")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(8)
        layout.addWidget(self.progress_bar)
        self.stage_label = QLabel("")
        self.stage_label.setObjectName("tessera_stage")
        layout.addWidget(self.stage_label)

        self.message_label = QLabel("")
        self.message_label.setObjectName("tessera_message")
        self.message_label.setWordWrap(True)
        self.message_label.setTextFormat(Qt.TextFormat.RichText)
        self.message_label.setOpenExternalLinks(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        layout.addWidget(self.message_label)

        self._build_daemon_settings(layout)
        layout.addStretch(1)

        link.stateChanged.connect(self._show_status)
        link.statusChanged.connect(self._show_status)
        link.modelsChanged.connect(self._fill_models)
        link.problem.connect(lambda text: self.show_message(text, error=True))
        upscaler.phaseChanged.connect(self._phase_changed)
        upscaler.progressed.connect(self._progressed)
        upscaler.finished.connect(self._finished)
        self._fill_models(link.models)
        self._phase_changed(upscaler.phase)
        self._show_status()

    # --- Building -----------------------------------------------------------------

    def _label(self, text: str, widget: QWidget) -> QLabel:
        label = QLabel(text)
        label.setToolTip(widget.toolTip())
        label.setBuddy(widget)
        return label

    def _choice_combo(self, name: str, choices: Any, current: str) -> QComboBox:
        combo = QComboBox()
        combo.setObjectName(name)
        for index, choice in enumerate(choices):
            combo.addItem(choice.label, choice.value)
            combo.setItemData(index, choice.tooltip, Qt.ItemDataRole.ToolTipRole)
        combo.setCurrentIndex(max(0, [c.value for c in choices].index(current)))
        combo.setToolTip("\n".join(f"{c.label}: {c.tooltip}" for c in choices))
        return combo

    def _build_parameters(self, form: QFormLayout) -> None:
        values = self.settings.values()
        row: Optional[QHBoxLayout] = None
        row_group = ""
        for spec in self.settings.specs:
            widget = self._parameter_widget(spec, values.get(spec.key, spec.default))
            widget.setObjectName("tessera_param_" + spec.key)
            widget.setToolTip(spec.tooltip)
            self.inputs[spec.key] = widget
            if spec.group and spec.group == row_group and row is not None:
                row.addWidget(widget)
                continue
            if spec.group:
                row = QHBoxLayout()
                row.addWidget(widget)
                row_group = spec.group
                form.addRow(self._label(spec.label, widget), row)
                continue
            row, row_group = None, ""
            form.addRow(self._label(spec.label, widget), widget)

    def _parameter_widget(self, spec: params.Spec, value: Any) -> QWidget:
        key = spec.key
        if spec.kind == params.FLOAT:
            box = QDoubleSpinBox()
            box.setDecimals(spec.decimals)
            box.setRange(spec.minimum, spec.maximum)
            box.setSingleStep(spec.step or 0.1)
            box.setValue(float(value))
            if key == "scale":
                box.setSuffix(" ×")
            box.valueChanged.connect(lambda v, key=key: self._store(key, v))
            return box
        if spec.kind == params.INT:
            box = QSpinBox()
            box.setRange(int(spec.minimum), int(spec.maximum))
            box.setSingleStep(int(spec.step or 1))
            box.setValue(int(value))
            box.valueChanged.connect(lambda v, key=key: self._store(key, v))
            return box
        if spec.kind == params.TEXT:
            edit = QPlainTextEdit()
            edit.setPlainText(value or "")
            edit.setMaximumHeight(edit.fontMetrics().lineSpacing() * 3 + 12)
            edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            edit.textChanged.connect(lambda key=key, e=edit: self._store(key, e.toPlainText()))
            return edit
        combo = QComboBox()
        combo.setProperty("tessera_kind", int(spec.model_kind))
        combo.setProperty("tessera_key", key)
        self._model_combos.append(combo)
        self._set_model_items(combo, [], value)
        combo.currentIndexChanged.connect(
            lambda _, key=key, c=combo: self._store(key, c.currentData() or None)
        )
        return combo

    def _build_daemon_settings(self, layout: QVBoxLayout) -> None:
        self.daemon_toggle = QToolButton()
        self.daemon_toggle.setText("Daemon settings")
        self.daemon_toggle.setCheckable(True)
        self.daemon_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.daemon_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.daemon_box = QWidget()
        box_layout = QFormLayout(self.daemon_box)
        box_layout.setContentsMargins(0, 0, 0, 0)
        self.program_edit = QLineEdit(self.settings.tessera_path)
        self.program_edit.setObjectName("tessera_program")
        self.program_edit.setPlaceholderText("tessera on PATH")
        self.program_edit.setToolTip(
            "The tessera program to start when no daemon is running; empty: look for "
            "tessera on PATH"
        )
        self.program_edit.editingFinished.connect(
            lambda: setattr(self.settings, "tessera_path", self.program_edit.text())
        )
        box_layout.addRow(self._label("Program", self.program_edit), self.program_edit)
        self.auto_start_box = QCheckBox("Start the daemon when needed")
        self.auto_start_box.setChecked(self.settings.auto_start)
        self.auto_start_box.toggled.connect(
            lambda on: setattr(self.settings, "auto_start", bool(on))
        )
        box_layout.addRow(self.auto_start_box)
        self.daemon_box.setVisible(False)

        def toggle(on: bool) -> None:
            self.daemon_box.setVisible(on)
            self.daemon_toggle.setArrowType(
                Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow
            )

        self.daemon_toggle.toggled.connect(toggle)
        layout.addWidget(self.daemon_toggle)
        layout.addWidget(self.daemon_box)

    # --- Reacting -----------------------------------------------------------------

    def _store(self, key: str, value: Any) -> None:
        try:
            self.settings.set_value(key, value)
        except params.InvalidParameter as e:
            self.show_message(str(e), error=True)

    def _set_model_items(self, combo: QComboBox, names: List[str], current: Optional[str]) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(DEFAULT_MODEL_LABEL, "")
        for name in names:
            combo.addItem(name, name)
        if current and current not in names:
            combo.addItem(f"{current} (not found)", current)
        index = combo.findData(current or "")
        combo.setCurrentIndex(max(0, index))
        combo.blockSignals(False)

    def _fill_models(self, models: Any) -> None:
        values = self.settings.values()
        for combo in self._model_combos:
            kind = combo.property("tessera_kind")
            names = sorted({m.name for m in models or [] if int(m.kind) == kind})
            self._set_model_items(combo, names, values.get(combo.property("tessera_key")))

    def _show_status(self, *_args: Any) -> None:
        self.status_label.setText(texts.status_text(self.link.status, self.link.state))
        agent = self.link.daemon_agent if self.link.state == CONNECTED else None
        tip = f"Socket: {self.link.address}"
        if agent:
            tip = f"{agent}\n{tip}"
        self.status_label.setToolTip(tip)

    def _phase_changed(self, phase: str) -> None:
        busy = phase != IDLE
        self.upscale_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _progressed(self, fraction: float, text: str) -> None:
        self.stage_label.setText(text)
        self.message_label.setText("")
        self.progress_bar.setValue(texts.percent(fraction))

    def _finished(self, outcome: Any) -> None:
        if not outcome.ok:
            self.progress_bar.setValue(0)
            self.stage_label.setText("")
        self.show_message(outcome.message, error=not outcome.ok and not outcome.cancelled)

    def log_folder(self) -> str:
        return os.path.join(self.link.data_dir, "logs")

    def show_message(self, text: str, error: bool = False) -> None:
        body = html.escape(text)
        if error:
            url = QUrl.fromLocalFile(self.log_folder()).toString()
            link = html.escape(url, quote=True)
            body = (
                f'<span style="color:#d04040">{body}</span> '
                f'<a href="{link}">Open the log folder</a>'
            )
        self.message_label.setText(body)
