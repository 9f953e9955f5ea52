"""Typed library errors. The CLI turns every ``QuantkitError`` into a one-line click error.

``UsageError`` subclasses (bad names, bad values, bad files given by the user) exit with code 2;
other ``QuantkitError``s (e.g. a CUDA out-of-memory that was caught) exit with code 1.
"""


class QuantkitError(Exception):
    """Base class of every error quantkit raises on purpose."""

    exit_code = 1


class UsageError(QuantkitError):
    """The user asked for something that does not exist or is malformed (exit code 2)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """An unknown model, GPU, dtype, method or plan name."""


class ConfigError(UsageError):
    """A malformed or incomplete config.json, recipe or plan file (names the field)."""


class InputError(UsageError):
    """Bad input data: a missing folder, a corrupted checkpoint, a non-positive batch."""


class OutputExistsError(UsageError):
    """The output path exists and --force was not given."""


class OfflineError(UsageError):
    """Something had to be fetched from the Hugging Face Hub and there is no network."""


class DependencyError(QuantkitError):
    """An optional dependency (bitsandbytes, triton, CUDA) that the request needs is missing."""

    exit_code = 2


class OutOfMemoryError(QuantkitError):
    """The GPU ran out of memory; the message says what the estimate says would fit."""


class FormatError(UsageError):
    """The request cannot be stored in the checkpoint format other tools load (compressed-tensors):
    e.g. a group size that does not divide a layer's input features; names the valid values."""
