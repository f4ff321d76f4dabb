"""The error types every distgnn command turns into a one-line message (exit code 2 for bad input)."""


class InputError(ValueError):
    """Bad user input: a file, column, row, flag or argument that cannot be used.

    The message is one line and names the offending file, column, row or flag, so
    the CLI can print it as is (`partition: error: <message>`) and exit with 2.
    """


class ShardError(InputError):
    """A shard folder that is missing, incomplete, of an unknown format or whose
    checksum no longer matches the manifest."""


class ProcessLost(RuntimeError):
    """A process this one depends on has died (a trainer's sampler process, for one).

    Not bad input: the CLI prints the one-line message (`train: error: <message>`) and exits
    with 1 at once, instead of waiting on a peer that will never answer.
    """


class RunFailure(RuntimeError):
    """This process cannot go on for a reason outside the user's input (a full disk while
    writing a checkpoint, for one): one line (`train: error: <message>`), exit code 1."""
