"""fedora-messaging schemas of the messages Taskbot publishes."""

from .result import ResultV1

__all__ = ["ResultV1"]
