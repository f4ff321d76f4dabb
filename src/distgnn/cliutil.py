"""What every command line of distgnn shares: one-line usage errors and defaults in --help."""

from __future__ import annotations

import argparse

from distgnn.errors import InputError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are an InputError (the command prints it as one
    line and exits 2, as for any other bad input) and whose --help shows every default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise InputError(message)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds '(default: X)' to an option's help unless the help already talks about its
    default, the default is None or False (nothing to say), or the help is suppressed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text == argparse.SUPPRESS or "default" in text.lower() or "%(default)" in text:
            return text
        default = action.default
        # identity, not ==: a default of 0 is worth showing, False (a flag) is not
        if default is None or default is False or default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(default, list) and not default:
            return text
        return f"{text} (default: %(default)s)".lstrip()
