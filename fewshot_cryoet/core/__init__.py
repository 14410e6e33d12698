"""Foundations every layer may use and that know nothing of the domain: the one user-facing error,
safe output files, progress reporting, secret masking, hyper-parameter declarations, database URLs,
local helper processes, the version, and the few types shared across layers (``core.types``)."""
