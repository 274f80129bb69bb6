"""Each protocol's request: the parameters it allows and their types, checked before any work."""
