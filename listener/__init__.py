"""fusionbrain-listener: a PostgreSQL table as the front door of an image generator."""

__version__ = "0.1.0"
