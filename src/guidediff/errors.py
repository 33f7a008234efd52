"""User-facing errors: one line that names the problem and the fix."""


class UsageError(Exception):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with status 2."""


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)


def in_flags(error: UsageError, flags: dict[str, str]) -> UsageError:
    """The library's error in a command's words: a message that opens with a parameter name
    (``batch_size must be >= 1``) opens with its flag instead (``--batch-size must be >= 1``)."""
    message = str(error)
    name, sep, rest = message.partition(" ")
    return UsageError(flags[name] + sep + rest) if name in flags else error
