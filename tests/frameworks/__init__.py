"""Real framework apps for ``sidecar run`` and uvicorn, one module per framework.

Each module imports only its own framework, so a server started on one of them does not
pay for importing the others. Apps that serve files read them from the directory named by
``FRAMEWORK_DATA_DIR`` (set by the test fixtures); they print a line to stdout when their
lifespan shutdown ran, which the fixtures check after SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "FRAMEWORK_DATA_DIR"
FILE_NAME = "report.csv"


def data_file() -> Path:
    return Path(os.environ[DATA_DIR_ENV]) / FILE_NAME
