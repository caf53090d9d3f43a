"""The dashboard's pages: each module has ``render(url, ...)`` and nothing but layout."""
