"""The error the guided sampler raises for a configuration it refuses."""

from __future__ import annotations


class BindingGuidanceError(RuntimeError):
    """A configuration problem found before sampling starts; the message names the input and the fix."""
