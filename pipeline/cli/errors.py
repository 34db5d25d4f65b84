"""Turn user-input errors into one clear line on stderr and exit code 1.

Library code raises `ValueError` (or a subclass, a domain error) naming the file or
record; `FileNotFoundError` is treated the same. Commands wrap their one library call in
`exit_on_user_error()` so users see the message, not a traceback.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import typer

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a user error as `error: <message>` and exit 1; anything else is a bug and propagates."""
    try:
        yield
    except USER_ERRORS as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
