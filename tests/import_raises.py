"""A module whose import raises in the app's own code, two calls deep."""

SETTINGS: dict[str, str] = {}


def setting(name: str) -> str:
    return SETTINGS[name]


DATABASE_URL = setting("DATABASE_URL")

app = None
