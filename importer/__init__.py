"""fyno-import: bulk-load user attributes into Fyno user profiles."""

__version__ = "0.1.0"
