"""One exception type for mistakes a user can fix, so the CLI and notebook can show one clear line."""


class UserError(ValueError):
    """Bad input or settings; the message says what to do."""
