"""The one family of errors a user can cause. The CLI prints them on one line and exits 2."""


class HwnasError(Exception):
    """A problem with the user's input: says what is wrong and what to do."""


class ConfigError(HwnasError):
    pass


class DataError(HwnasError):
    pass


class ArchitectureError(HwnasError):
    pass


class CheckpointError(HwnasError):
    pass


class LatencyError(HwnasError):
    pass
