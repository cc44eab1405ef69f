"""The user-input error every module raises (the CLI prints its one-line message and exits 2), and
what tells an interruption from a failure (:func:`interrupt_of`)."""
from __future__ import annotations

import reprlib


class ConfigError(ValueError):
    """Bad user input (config, suite, space or YAML file, ``key=value``, path); the message is one line
    naming the file, key or value."""


MAX_CHARS = 100
# a user's value in an error: at most MAX_CHARS characters of it, nested containers cut, on one line
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 2, 60, 40, 60
for _kind in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_BRIEF, _kind, 4)


def brief(value) -> str:
    """``repr(value)`` for an error message, shortened (``reprlib``): a long string, a deep or huge
    structure (e.g. a YAML value) is cut with ``...``, so an error stays one readable line."""
    text = _BRIEF.repr(value)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."


def short(text) -> str:
    """A user-written name or key for an error, unquoted: ``str(text)`` with control characters
    escaped (one line), cut in the middle to at most 60 characters (``...``)."""
    text = str(text)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= 60 else f"{shown[:28]}...{shown[-29:]}"


def names(items, limit: int = 8) -> str:
    """User-written names or keys for an error, comma-separated: each :func:`short`, at most ``limit``
    of them and then how many more."""
    items = list(items)
    shown = ", ".join(map(short, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def interrupt_of(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (a ``KeyboardInterrupt``) during which ``err`` was raised, followed along
    ``__context__`` (e.g. a library's lock clean-up failing on the way out, or Ray Tune's own
    error), so that it still means "interrupted", not a failure; None when none."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__context__
    return None
