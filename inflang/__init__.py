"""inflang: a declarative language for studies of how far influence estimates can be trusted."""

__version__ = "0.1.0"
