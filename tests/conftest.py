import pytest

from webmoe.engine.device import open_gpu


@pytest.fixture(scope="session")
def gpu():
    return open_gpu()
