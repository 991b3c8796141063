"""The format's one error (engine/errors.py re-exports it among the runtime's; web/errors.js is the twin)."""


class PackageError(ValueError):
    """The package is malformed, corrupt, of another format version, or needs what the adapter lacks."""
