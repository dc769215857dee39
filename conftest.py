"""Root conftest (loaded for ``pytest notebooks/`` as well as for ``tests/``): the lessons that nbmake
executes are kept for the book (:func:`unistad_edu.book.keep_nbmake_runs`)."""


def pytest_collection_modifyitems(items):
    if any(getattr(item, "nbmake", False) for item in items):
        from unistad_edu.book import keep_nbmake_runs

        keep_nbmake_runs()
