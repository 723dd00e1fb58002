"""Native CPU backend (being built): until its library loads, dropkit uses the reference backend."""


def load_error() -> str | None:
    return "the native CPU kernel is not built yet"
