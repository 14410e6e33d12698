"""Data: templates (maps and atomic models), the simulator, and datasets on disk."""
