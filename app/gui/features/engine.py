"""The engine connection as the user sees it: the Jobs dock, Engine ▸ Settings / Reconnect, the status-bar light
and the banner when the engine cannot be reached."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QLabel, QWidget

from app.gui.engine_link import EngineSettings, load_settings, save_settings
from app.gui.features.base import Feature, MenuEntry
from app.gui.job_dialog import EngineSettingsDialog
from app.gui.jobs_panel import JobsPanel

ENGINE_COLOURS = {"connected": "#2e7d32", "starting": "#ef8f00", "stopped": "#757575",
                  "unreachable": "#c62828", "unauthorized": "#c62828"}


if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class EngineFeature(Feature):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.jobs_panel = JobsPanel(window.link)
        self.label = QLabel()
        window.statusBar().addPermanentWidget(self.label)
        window.link.status_changed.connect(self._on_status)
        self._on_status(window.link.state, "")

    def dock_widget(self) -> QWidget:
        return self.jobs_panel

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Engine", "Engine &settings…", self.open_settings),
                MenuEntry("&Engine", "&Reconnect", lambda: self.window.link.start(load_settings()))]

    def open_settings(self) -> None:
        dialog = EngineSettingsDialog(load_settings(), self.window)
        if dialog.exec():
            settings: EngineSettings = dialog.settings()
            save_settings(settings)
            self.window.link.stop()
            self.window.link.start(settings)

    def _on_status(self, state: str, detail: str) -> None:
        link, w = self.window.link, self.window
        where = "local" if link.is_local else link.url
        colour = ENGINE_COLOURS.get(state, "#757575")
        self.label.setText(f"<span style='color:{colour}'>●</span> engine {state} ({where})")
        self.label.setToolTip(detail)
        if state in ("unreachable", "unauthorized"):
            w.show_banner(f"Engine {state}: {detail or where}. Jobs wait until it is back "
                          "(Engine ▸ Settings to change it).", "error", tag="engine")
        else:
            w.hide_banner_if("engine")
