"""One exception type for every failure a user can cause.

The CLI turns a :class:`BertkitError` into a single ``error: ...`` line on stderr and a
non-zero exit, so anything raised as this type must carry a message that tells the user
what to fix, without a traceback.
"""


class BertkitError(Exception):
    """A user-facing error: bad input, a missing model, an impossible option."""


class UsageError(BertkitError):
    """A command given options that do not go together: exit code 2, as for any usage error."""

    exit_code = 2
