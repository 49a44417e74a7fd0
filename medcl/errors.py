"""User-facing errors.

Anything a user can cause (a bad file, a bad config key, a missing case) raises :class:`MedclError` with one
readable sentence naming the file or key and the problem. The CLI prints the message without a traceback
(``--debug`` shows it) and exits with status 1.
"""

from __future__ import annotations

import re


class MedclError(Exception):
    """An error caused by the user's input, reported as one readable message."""


class ConfigError(MedclError):
    """An unknown, missing or ill-typed configuration key."""


class DataError(MedclError):
    """A dataset, case file or splits file that cannot be used."""


def one_line(text: object) -> str:
    """A (multi-line) message on one line, lines joined by ``; `` (state files, failure lists)."""
    return re.sub(r"\s*\n\s*", "; ", str(text).strip())
