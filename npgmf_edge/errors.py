"""Our exception types. Messages name the bad file or value and say what to do; the CLI prints them on
one line and exits non-zero."""


class NpgmfError(Exception):
    """Base class for every error the toolkit raises on purpose."""


class DatasetError(NpgmfError):
    """A dataset layout, image or mask is missing, unreadable or inconsistent."""


class ConfigError(NpgmfError):
    """A configuration value is out of range or inconsistent with another one."""


class WeightsError(NpgmfError):
    """Pretrained weights could not be loaded from the hub or the given file."""


class CheckpointError(NpgmfError):
    """A training run directory or checkpoint is missing, incomplete or incompatible."""


class BundleError(NpgmfError):
    """A deployable bundle is missing, incomplete, tampered with or incompatible."""


class OutputError(NpgmfError):
    """An output folder cannot be written: it is a file, or another process is writing into it."""


class ServeError(NpgmfError):
    """A model server cannot start, or a request to one cannot be made or answered."""
