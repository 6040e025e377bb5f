"""The one exception type of errors a user can cause and fix."""


class MlmkitError(Exception):
    """An error the user can cause and fix; the CLI prints it as one line and exits 2."""
