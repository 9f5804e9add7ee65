"""Preference data: sources (hub, local files, the bundled toy set), per-dataset adapters, row validation.

`load_preference_data` is the one entry the trainer uses; the error types are what the CLI turns into clear messages.
Nothing here imports `datasets` at import time.
"""

from dpo_sweeps.data.prepare import PreferenceData, load_preference_data
from dpo_sweeps.data.sources import DataFileError, DatasetUnavailableError
from dpo_sweeps.data.validation import InvalidDataError

__all__ = [
    "DataFileError",
    "DatasetUnavailableError",
    "InvalidDataError",
    "PreferenceData",
    "load_preference_data",
]
