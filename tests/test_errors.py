import pytest

from clothret.errors import is_transient


class ClientError(Exception):
    """Shaped like botocore's: the error code sits in ``response``."""

    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class KilledWorker(Exception):
    pass


@pytest.mark.parametrize(
    "exc",
    [ConnectionResetError("reset by peer"), TimeoutError("read timed out"), OSError(5, "I/O error"),
     ClientError("SlowDown"), ClientError("ThrottlingException"), KilledWorker("worker died")],
)
def test_transient_errors_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [ValueError("manifest line 3: not a manifest entry"), FileNotFoundError("bundle.yaml"),
     PermissionError("access denied"), ClientError("AccessDenied"), KeyError("detectors")],
)
def test_bad_input_is_not_retried(exc):
    assert not is_transient(exc)


def test_cause_chain_is_followed():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("segment write failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(RuntimeError("plain"))


def test_bad_input_raised_from_an_io_error_is_still_bad_input():
    try:
        try:
            raise OSError("image file is truncated")
        except OSError as inner:
            raise ValueError("x.jpg: not a readable image") from inner
    except ValueError as outer:
        assert not is_transient(outer)
