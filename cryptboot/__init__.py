"""cryptboot: unlock an encrypted root filesystem in early boot and hand off to the real init."""

__version__ = "0.1.0"
