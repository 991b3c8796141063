import shutil
import subprocess
from pathlib import Path

import pytest

from webmoe.engine.device import open_gpu

WEB = Path(__file__).resolve().parent.parent / "web"


def pytest_sessionstart(session):
    """The browser tests run the npm package's build (web/dist), which ./setup.sh makes: build it again from
    the sources as they are now, so an edit to web/*.js is what the tests see (esbuild, under a second)."""
    if shutil.which("npm") and (WEB / "node_modules" / "esbuild").is_dir():
        subprocess.run(["npm", "run", "--silent", "build"], cwd=WEB, check=True)


def pytest_terminal_summary(terminalreporter):
    """The largest error each numeric bound met in this run (tests/measured.py)."""
    from measured import summary
    lines = summary()
    if lines:
        terminalreporter.section("measured errors against their bounds")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def gpu():
    return open_gpu()
