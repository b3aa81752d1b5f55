"""What a workbench feature is: a controller that owns its dock widget, its menu actions and its job callbacks.

The main window only lays out what the feature table (app.gui.features.FEATURES) lists and routes navigation;
a feature reaches the window's shared parts (browser, image view, review panel, open dataset, engine link)
through `self.window`, and the other features by their table name (`self.window.scoring`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QWidget

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


@dataclass(frozen=True)
class MenuEntry:
    menu: str  # the menu's title as shown, e.g. "&Model"
    text: str
    slot: Callable[[], Any]
    shortcut: str | None = None
    separator_before: bool = False


class Feature(QObject):
    """Base of every feature controller; made once per window, in table order, after the window's own parts."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window

    def dock_widget(self) -> QWidget | None:
        """The content of this feature's dock (its table row names the dock); None: no dock, or made later."""
        return None

    def menu_entries(self) -> list[MenuEntry]:
        return []

    def report_failure(self, what: str) -> Callable[[Any], None]:
        """An on_finished callback for jobs whose success needs nothing: a failure shows its error."""

        def handle(job: Any) -> None:
            if job.state == "failed":
                self.window.show_error(f"{what} failed: {job.error}")

        return handle
