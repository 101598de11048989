"""The grid's one error: a spec that cannot run. Its own module because both the spec (:mod:`.spec`) and its
questions (:mod:`.questions`, which the spec reads) raise it."""


class GridError(ValueError):
    """A grid spec that cannot run; the message names the key and, where it applies, the cell."""
