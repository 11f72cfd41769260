"""A sample reader that kills its process on one sample, as a decoder crashing on a damaged file
would; kept free of heavy imports because every spawned reader process imports it."""

import os

CRASH_ID = "s13"


def load_or_die(samples):
    """`sources.load_samples`' contract: one result per sample (here, its id upper-cased)."""
    if any(sample.id == CRASH_ID for sample in samples):
        os._exit(3)
    return [sample.id.upper() for sample in samples]
