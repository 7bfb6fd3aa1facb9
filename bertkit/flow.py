"""Where flow pipelines saved before bertkit's packages find their module: their ``modules.json``
names ``bertkit.flow.SentenceFlow``; the flow now lives in :mod:`bertkit.embed.flow`."""

from .embed.flow import SentenceFlow

__all__ = ["SentenceFlow"]
