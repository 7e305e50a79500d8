"""The errors embed raises: typed once here, mapped to exit codes and HTTP statuses by each front."""

from collections.abc import Sequence


class EmbedError(Exception):
    """Base of every error embed knows how to explain in one line; `param` names the option or request field at
    fault, where there is one (the server's error body carries it, as OpenAI's does)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def advise(self, advice: str) -> None:
        """Add what to do next to the message, after a semicolon; the error keeps its type, field and place."""
        self.args = (f"{self}; {advice}",)


class InputError(EmbedError):
    """Bad input: unreadable file, invalid JSON at line N, missing or non-string field. `index`: the input of a
    list the message names as "input N", so a caller that knows where it came from can say so (`located`)."""

    def __init__(self, message: str, param: str | None = None, index: int | None = None) -> None:
        super().__init__(message, param)
        self.index = index

    def about(self, subject: str, index: int | None = None) -> "InputError":
        """This error about "input N", retold about `subject` (a file and line, or another input's number), with
        `index` for the input it now names; itself where its message names no input."""
        prefix = f"input {self.index}"
        message = str(self)
        if self.index is None or not message.startswith(prefix):
            return self
        return type(self)(subject + message[len(prefix):], self.param, index)


def located(error: InputError, where: Sequence[str]) -> InputError:
    """`error`, about "input N" of a list, retold about where[N] (a file and line) where it names one."""
    if error.index is None or not 0 <= error.index < len(where):
        return error
    return error.about(where[error.index])


def renumbered(error: InputError, positions: Sequence[int]) -> InputError:
    """`error`, about "input N" of a part of a list, retold about input positions[N] of the whole list."""
    if error.index is None or not 0 <= error.index < len(positions):
        return error
    return error.about(f"input {positions[error.index]}", positions[error.index])


def lone_surrogate(text: str) -> int | None:
    """Where `text` holds a lone UTF-16 surrogate (JSON may escape one: "\\ud800"), or None.

    Such a string is not Unicode text: it has no UTF-8 form, so no tokenizer can read it. embed refuses it, as it
    refuses invalid UTF-8 bytes in a file, rather than guess a replacement.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


class InputTooLong(InputError):
    """An input is longer than the model's max length and truncation is off: bad input, with its own code."""

    def __init__(self, message: str, param: str | None = "input", index: int | None = None) -> None:
        super().__init__(message, param, index)


class EmptyInput(InputError):
    """A request with nothing to embed: an empty list, or an empty input in one (TEI answers it apart, a 400)."""


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
