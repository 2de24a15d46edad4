"""The status page on the admin port, for people: ``snapshot`` gathers what every part
keeps into one plain dict (also the JSON answer), ``page`` renders it as HTML, and
``assets`` holds the page's style sheet, script and headers.
"""

from .assets import HEADERS
from .page import refresh_interval, render
from .snapshot import Status, Traffic, served_by

__all__ = ["HEADERS", "Status", "Traffic", "refresh_interval", "render", "served_by"]
