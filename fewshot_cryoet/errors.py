"""The one exception type users see.

Every failure caused by the user's input (a corrupt file, a bad option, an output folder that
already holds data) is raised as :class:`FscError` with a one-line message that names the file
or option and says how to fix it. The command line prints that line and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FscError(Exception):
    """A user-facing error with a one-line, actionable message."""
