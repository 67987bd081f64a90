"""Loaders: turn the ``(type, id)`` of a batch's records into the objects' documents.

A loader is a callable ``loader(keys) -> mapping``: it receives the ``(type, id)`` of every
``created``/``updated`` record of one batch and returns ``{(type, id): document}`` for the
objects that exist and the agent may see, loading them in one query per batch (or per
type). An object missing from the mapping, or mapped to ``None``, is uploaded as
``deleted`` (DESIGN.md, "Documents: loaders"). :mod:`livesync.loaders.sqlalchemy` is the
one for SQLAlchemy models.
"""
