"""socialhub: a social network backend in one asyncio process."""

__version__ = "0.1.0"
