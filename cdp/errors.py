"""Errors a person can fix: one line naming the file, row or value."""


class CdpError(Exception):
    """An error caused by input or configuration, reported as one line without a stack trace."""


class SchemaError(CdpError):
    """An inbox file lacks a required column or cannot be read at all."""


class StoreBusyError(CdpError):
    """The DuckDB file is held by another process (a pipeline run or another command)."""
