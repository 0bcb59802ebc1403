"""The kit's own exceptions: errors a user can cause, printed by the CLI without a traceback."""


class SegkitError(Exception):
    """Base of every user-facing error; the message says what went wrong and where."""


class ConfigError(SegkitError):
    """A config file or override is wrong (unknown key, bad type, bad value)."""


class DataError(SegkitError):
    """A dataset file is missing, corrupt, or inconsistent with its neighbours."""


class RLEError(SegkitError):
    """A run-length encoding is malformed or does not fit the image."""


class SubmissionError(SegkitError):
    """A submission file is invalid for its competition."""


class TrainingError(SegkitError):
    """Training or prediction cannot proceed (missing checkpoints, incompatible run)."""


class KaggleError(SegkitError):
    """The Kaggle API refused or failed a call, or credentials are missing."""


class StorageError(SegkitError):
    """A file or folder cannot be written: disk full, read-only file system, a file where a folder should be."""
