"""User-facing errors: one line that names the problem and the fix."""


class UsageError(Exception):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with status 2."""


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)
