"""The error types every distgnn command turns into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad user input: a file, column, row, flag or argument that cannot be used.

    The message is one line and names the offending file, column, row or flag, so
    the CLI can print it as is (`partition: error: <message>`) and exit with 2.
    """


class ShardError(InputError):
    """A shard folder that is missing, incomplete, of an unknown format or whose
    checksum no longer matches the manifest."""
