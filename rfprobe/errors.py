"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits with 2."""


class RfprobeError(Exception):
    """Bad input (a checkpoint, a name, a path, an option); the message is shown to the user as is."""


class CheckpointError(RfprobeError):
    """A file that is not a usable checkpoint."""


class DataError(RfprobeError):
    """A dataset that cannot be found, read or downloaded."""


class ResultExistsError(RfprobeError):
    """An output path that exists already (and --overwrite was not given)."""
