"""dlion: decentralized peer-to-peer deep-learning training for heterogeneous micro-clouds."""

__version__ = "0.1.0"  # the one place the version is written: setup.cfg reads it (attr: dlion.__version__)
