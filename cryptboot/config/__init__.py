"""Configuration: kernel command line and crypttab text in, one frozen :class:`Plan` out."""
