"""``python -m importer`` runs the fyno-import command line."""

from importer.cli import entry

entry()
