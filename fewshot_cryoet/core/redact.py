"""Masking credentials in anything we print.

Storage URLs (``--storage``, later ``--store``) carry passwords in several forms, and users paste
whichever their tool printed. :func:`mask_secrets` is the one function that hides them; the
command line passes every error, warning and log line through it, and every message that names a
storage URL builds it with :func:`mask_secrets` too. Forms covered:

* URL userinfo, with or without a scheme: ``postgresql://user:secret@host/db``, ``user:secret@host``,
  ``redis://:secret@host`` (no user);
* query parameters: ``...?password=secret&sslmode=require`` (also ``sslpassword``, ``passwd``, ``pwd``);
* libpq key=value strings: ``host=h user=u password='se cret'``.
"""

from __future__ import annotations

import re

MASK = "***"

# With a scheme the user may be empty (``redis://:secret@host``); without one it may not, so that
# ordinary text such as ``at 12:30@home`` is left alone.
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"?#]*|[^\s:/@'\"?#]+):(?P<secret>[^\s@/'\"]+)@")
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:ssl)?(?:password|passwd|pwd)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """``text`` with every password it contains replaced by ``***``."""
    text = _KEY_VALUE.sub(lambda m: m.group("key") + MASK, str(text))
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
