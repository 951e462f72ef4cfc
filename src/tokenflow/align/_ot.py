"""Kept for importers of the block-layout log-domain Sinkhorn; the transport plans live in
:mod:`tokenflow.align.transport`."""

from .transport import log_sinkhorn

__all__ = ["log_sinkhorn"]
