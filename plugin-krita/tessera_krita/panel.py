"""The docker's contents: parameters, Upscale, Preview and Cancel, progress, the
daemon's state and messages.

A plain ``QWidget`` (the Krita ``DockWidget`` in :mod:`.extension` only wraps
it), built from the parameter specs of :mod:`.params`. Its shape
fits a laptop screen beside Krita's own dockers: what a painter uses on every
upscale is at the top — the daemon's state, the Upscale, Preview and Cancel buttons,
the progress and the result line, then scale, creativity, resemblance and
prompt — everything else in a folded *Advanced* section, and all of it in a
scroll area. The docker asks Krita for no more height than the part down to
the result line (see :meth:`Panel.minimum_height`): Krita stacks its default
dockers in the same column, and on a 768-pixel screen they leave little.
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
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
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
#: The most height the docker asks for, whatever the fonts.
MAX_MINIMUM_HEIGHT = 400
#: Lines of text the prompt boxes show.
PROMPT_LINES = 3


class Panel(QWidget):
    def __init__(self, link: Any, upscaler: Any, settings: Any, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.link = link
        self.upscaler = upscaler
        self.settings = settings
        self.inputs: Dict[str, QWidget] = {}
        self._model_combos: List[Any] = []

        self.scroll = QScrollArea()
        self.scroll.setObjectName("tessera_scroll")
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        content = QWidget()
        content.setObjectName("tessera_content")
        self.scroll.setWidget(content)
        layout = QVBoxLayout(content)
        layout.setContentsMargins(6, 6, 6, 6)
        self._content_layout = layout

        # The part that always shows, however small Krita makes the docker:
        # the daemon, the buttons, and what happened.
        self.top = QWidget()
        top = QVBoxLayout(self.top)
        top.setContentsMargins(0, 0, 0, 0)
        top.addLayout(self._build_status(link))
        top.addLayout(self._build_buttons(upscaler))
        top.addLayout(self._build_feedback())
        layout.addWidget(self.top)

        # Then the main parameters, shown as far as there is room.
        self.first_run_label = QLabel(texts.first_run_html())
        self.first_run_label.setObjectName("tessera_first_run")
        self.first_run_label.setWordWrap(True)
        self.first_run_label.setTextFormat(Qt.TextFormat.RichText)
        self.first_run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.first_run_label.setVisible(False)
        layout.addWidget(self.first_run_label)
        main_form = self._form()
        advanced_form = self._form()
        self._build_parameters(main_form, advanced_form)
        layout.addLayout(main_form)

        # Everything else, folded.
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setObjectName("tessera_advanced_toggle")
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        self._tip(
            self.advanced_toggle,
            "Where the pixels come from and where the result goes, the other diffusion "
            "parameters, the models, and how the daemon is started.",
        )
        self.advanced_box = QWidget()
        self.advanced_box.setObjectName("tessera_advanced")
        box = QVBoxLayout(self.advanced_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(self._build_choices())
        box.addLayout(advanced_form)
        box.addLayout(self._build_daemon_settings())
        self.advanced_box.setVisible(False)
        self.advanced_toggle.toggled.connect(self._fold)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced_box)
        layout.addStretch(1)

        link.stateChanged.connect(self._show_status)
        link.statusChanged.connect(self._show_status)
        link.modelsChanged.connect(self._fill_models)
        link.problem.connect(lambda text: self.show_message(text, error=True))
        upscaler.phaseChanged.connect(self._phase_changed)
        upscaler.progressed.connect(self._progressed)
        upscaler.finished.connect(self._finished)
        # A warning shows at once (a job the CPU took over runs far longer than expected).
        upscaler.warned.connect(lambda text: self.show_message(texts.warnings_note([text])))
        self._fill_models(link.models)
        self._phase_changed(upscaler.phase)
        self._show_status()
        self._update_minimum()

    # --- Building -----------------------------------------------------------------

    @staticmethod
    def _tip(widget: QWidget, text: str) -> None:
        widget.setToolTip(texts.tooltip_html(text))

    @staticmethod
    def _form() -> QFormLayout:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        return form

    def _label(self, text: str, widget: QWidget) -> QLabel:
        label = QLabel(text)
        label.setToolTip(widget.toolTip())
        label.setBuddy(widget)
        return label

    def _build_status(self, link: Any) -> QHBoxLayout:
        row = QHBoxLayout()
        self.status_label = QLabel(texts.status_text(None, link.state))
        self.status_label.setObjectName("tessera_status")
        self.status_label.setWordWrap(True)
        self.refresh_button = QToolButton()
        self.refresh_button.setObjectName("tessera_refresh")
        self.refresh_button.setText("⟳")
        self._tip(self.refresh_button, "Connect to the daemon now and refresh its list of models.")
        self.refresh_button.clicked.connect(link.reconnect_now)
        row.addWidget(self.status_label, 1)
        row.addWidget(self.refresh_button)
        return row

    def _build_buttons(self, upscaler: Any) -> QHBoxLayout:
        row = QHBoxLayout()
        self.upscale_button = QPushButton("Upscale")
        self.upscale_button.setObjectName("tessera_upscale_button")
        self._tip(
            self.upscale_button,
            "Upscale the selection (its bounding box) or, without one, the whole layer.",
        )
        self.upscale_button.clicked.connect(lambda: upscaler.upscale())
        self.preview_button = QPushButton("Preview")
        self.preview_button.setObjectName("tessera_preview_button")
        self._tip(
            self.preview_button,
            "Show how the selection will look in the upscale of the whole layer, quickly: "
            "the daemon computes only that part (with some of the layer around it), and it "
            "comes back as a layer over the selection, which undo (Ctrl+Z) removes.",
        )
        self.preview_button.clicked.connect(lambda: upscaler.preview())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("tessera_cancel_button")
        self._tip(self.cancel_button, "Stop the upscale; the document is left as it was.")
        self.cancel_button.clicked.connect(upscaler.cancel)
        for button in (self.upscale_button, self.preview_button, self.cancel_button):
            # Qt's styles ask 80 pixels of every text button; three of them must share a
            # narrow docker, so each may shrink to its text.
            text = button.fontMetrics().horizontalAdvance(button.text())
            button.setMinimumWidth(text + 2 * button.fontMetrics().averageCharWidth())
            row.addWidget(button)
        return row

    def _build_feedback(self) -> QVBoxLayout:
        column = QVBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("tessera_progress")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(8)
        column.addWidget(self.progress_bar)
        self.stage_label = QLabel("")
        self.stage_label.setObjectName("tessera_stage")
        # Room for a line each, so that the space for progress and result is
        # counted in the docker's minimum height before there is any.
        line = self.stage_label.fontMetrics().lineSpacing()
        self.stage_label.setMinimumHeight(line)
        column.addWidget(self.stage_label)
        self.message_label = QLabel("")
        self.message_label.setObjectName("tessera_message")
        self.message_label.setWordWrap(True)
        self.message_label.setTextFormat(Qt.TextFormat.RichText)
        self.message_label.setOpenExternalLinks(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.message_label.setMinimumHeight(line)
        column.addWidget(self.message_label)
        return column

    def _choice_combo(self, name: str, choices: Any, current: str) -> QComboBox:
        combo = QComboBox()
        combo.setObjectName(name)
        for index, choice in enumerate(choices):
            combo.addItem(choice.label, choice.value)
            combo.setItemData(
                index, texts.tooltip_html(choice.tooltip), Qt.ItemDataRole.ToolTipRole
            )
        combo.setCurrentIndex(max(0, [c.value for c in choices].index(current)))
        self._tip(combo, "\n".join(f"{c.label}: {c.tooltip}" for c in choices))
        return combo

    def _build_choices(self) -> QFormLayout:
        form = self._form()
        settings = self.settings
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
        return form

    def _build_parameters(self, main: QFormLayout, advanced: QFormLayout) -> None:
        values = self.settings.values()
        row: Optional[QHBoxLayout] = None
        row_group = ""
        for spec in self.settings.specs:
            form = main if spec.key in params.MAIN_KEYS else advanced
            widget = self._parameter_widget(spec, values.get(spec.key, spec.default))
            widget.setObjectName("tessera_param_" + spec.key)
            self._tip(widget, spec.tooltip)
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
        self._follow_preset(values.get("preset"))

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
            edit.setTabChangesFocus(True)
            margins = edit.contentsMargins()
            lines = edit.fontMetrics().lineSpacing() * PROMPT_LINES
            edit.setFixedHeight(
                lines + 2 * int(edit.document().documentMargin()) + margins.top() + margins.bottom()
            )
            edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            edit.textChanged.connect(lambda key=key, e=edit: self._store(key, e.toPlainText()))
            return edit
        if spec.kind == params.CHOICE:
            combo = QComboBox()
            for name, label, _ in spec.choices:
                combo.addItem(label, name)
            combo.setCurrentIndex(max(0, combo.findData(value)))
            combo.currentIndexChanged.connect(
                lambda _, key=key, c=combo: self._choose(key, c.currentData())
            )
            return combo
        combo = QComboBox()
        combo.setProperty("tessera_kind", int(spec.model_kind))
        combo.setProperty("tessera_key", key)
        self._model_combos.append(combo)
        self._set_model_items(combo, [], value)
        combo.currentIndexChanged.connect(
            lambda _, key=key, c=combo: self._store(key, c.currentData() or None)
        )
        return combo

    def _build_daemon_settings(self) -> QFormLayout:
        form = self._form()
        self.program_edit = QLineEdit(self.settings.tessera_path)
        self.program_edit.setObjectName("tessera_program")
        self.program_edit.setPlaceholderText("tessera on PATH")
        self._tip(
            self.program_edit,
            "The tessera program to start when no daemon is running; empty: look for tessera "
            "on PATH and in the usual install folders.",
        )
        self.program_edit.editingFinished.connect(
            lambda: setattr(self.settings, "tessera_path", self.program_edit.text())
        )
        form.addRow(self._label("Program", self.program_edit), self.program_edit)
        self.auto_start_box = QCheckBox(texts.AUTO_START_LABEL)
        self.auto_start_box.setObjectName("tessera_auto_start")
        self._tip(
            self.auto_start_box,
            "When no daemon answers and you upscale, start `tessera serve` in the "
            "background; it keeps running after Krita closes.",
        )
        self.auto_start_box.setChecked(self.settings.auto_start)
        self.auto_start_box.toggled.connect(
            lambda on: setattr(self.settings, "auto_start", bool(on))
        )
        form.addRow(self.auto_start_box)
        return form

    # --- Size -----------------------------------------------------------------------

    def minimum_height(self) -> int:
        """The height the docker needs to show its top part (the daemon line,
        the buttons, the progress and the result line) without scrolling, at
        most :data:`MAX_MINIMUM_HEIGHT`."""
        margins = self._content_layout.contentsMargins()
        width = self.top.width()
        if width > 0 and self.top.hasHeightForWidth():
            # The status line wraps when the docker is narrow.
            height = self.top.heightForWidth(width)
        else:
            height = self.top.sizeHint().height()
        return min(height + margins.top() + margins.bottom(), MAX_MINIMUM_HEIGHT)

    def _update_minimum(self) -> None:
        needed = self.minimum_height()
        if needed != self.scroll.minimumHeight():
            self.scroll.setMinimumHeight(needed)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        # Sizes are final only once the style has polished the widgets.
        self._update_minimum()
        super().showEvent(event)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._update_minimum()

    def _fold(self, unfolded: bool) -> None:
        self.advanced_box.setVisible(unfolded)
        self.advanced_toggle.setArrowType(
            Qt.ArrowType.DownArrow if unfolded else Qt.ArrowType.RightArrow
        )
        if unfolded:
            self.scroll.ensureWidgetVisible(self.advanced_toggle)

    # --- Reacting -----------------------------------------------------------------

    def _store(self, key: str, value: Any) -> None:
        try:
            self.settings.set_value(key, value)
        except params.InvalidParameter as e:
            self.show_message(str(e), error=True)

    def _choose(self, key: str, value: Any) -> None:
        self._store(key, value)
        if key == "preset":
            self._follow_preset(value)

    def _follow_preset(self, preset: Any) -> None:
        """Greys out what the Upscaler-only preset ignores."""
        diffusion = preset != "upscaler"
        for key in params.DIFFUSION_KEYS:
            widget = self.inputs.get(key)
            if widget is not None:
                widget.setEnabled(diffusion)

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
        first_run = self.link.models_known and not models
        if first_run != self.first_run_label.isVisibleTo(self):
            self.first_run_label.setVisible(first_run)

    def _show_status(self, *_args: Any) -> None:
        self.status_label.setText(
            texts.status_text(self.link.status, self.link.state, self.link.refused)
        )
        agent = self.link.daemon_agent if self.link.state == CONNECTED else None
        tip = f"The Tessera daemon that runs the networks.\nSocket: {self.link.address}"
        if agent:
            tip = f"{agent}\n{tip}"
        self.status_label.setToolTip(texts.tooltip_html(tip))
        self._update_minimum()

    def _phase_changed(self, phase: str) -> None:
        busy = phase != IDLE
        self.upscale_button.setEnabled(not busy)
        self.preview_button.setEnabled(not busy)
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
        if text:
            self.scroll.ensureWidgetVisible(self.message_label)
