"""The one exception type users see.

Every failure caused by the user's input (a corrupt file, a bad option, an output folder that
already holds data) is raised as :class:`FscError` with a one-line message that names the file
or option and says how to fix it. The command line prints that line and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FscError(Exception):
    """A user-facing error with a one-line, actionable message."""


class SettingError(FscError):
    """A bad value of one named setting (``budget``, ``out``, ``per_class``...). The library's
    message names the setting; the command line shows the option instead (``--budget``), so a
    library error never names a flag of some other command."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting

    def with_option(self, option: str) -> str:
        """The message with the setting's first mention replaced by ``option``."""
        import re

        text = str(self)
        pattern = rf"(?<![\w-]){re.escape(self.setting)}(?![\w-])"
        if re.search(pattern, text):
            return re.sub(pattern, option, text, count=1)
        return f"{option}: {text}"
