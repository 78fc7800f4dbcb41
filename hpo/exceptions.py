"""Errors meant for users: one family, printed once by the CLI."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error that hpo reports to a user as one line."""

    exit_code = 1


class InputError(HpoError):
    """Bad input from the user: a file, column, value, option or config key.

    The CLI exits with code 2, and nothing is written to a study.
    """

    exit_code = 2


class StudyError(HpoError):
    """A study that is missing, unusable, or has no trial to work with."""


class StorageError(HpoError):
    """A storage that cannot be opened, read or written."""


class BundleError(InputError):
    """A model bundle that is missing, malformed, tampered with or inconsistent."""
