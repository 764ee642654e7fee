"""Training loops: the teacher and the shared one-step trainer."""
