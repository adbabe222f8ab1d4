"""lazyfs: mount OCI images straight from a registry, fetching file contents on first read."""

__version__ = "0.1.0"
