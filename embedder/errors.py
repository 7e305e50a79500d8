"""The errors embed raises: typed once here, mapped to exit codes and HTTP statuses by each front."""


class EmbedError(Exception):
    """Base of every error embed knows how to explain in one line."""


class InputError(EmbedError):
    """Bad input: unreadable file, invalid JSON at line N, missing or non-string field."""


class InputTooLong(EmbedError):
    """An input is longer than the model's max length and truncation is off."""


class ModelNotFound(EmbedError):
    """The model does not exist, is not cached while offline, or is not served."""


class ModelError(EmbedError):
    """The model exists but cannot be used: unsupported architecture or module, corrupt weights."""


class AuthError(EmbedError):
    """Missing or wrong API key."""


class Overloaded(EmbedError):
    """The request queue is full; the client should retry later."""


class NotReady(EmbedError):
    """The engine is not loaded or has failed."""
