"""Annotation documents (shapes, undo/redo, saving as you go) shared by the GUI tools; no Qt here."""
