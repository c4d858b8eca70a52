"""Unit tests: pure functions, property-based where it pays (hypothesis).

Deadlines are off: the machine is shared and a slow example is not a wrong one.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("crypten_lite_unit", deadline=None, max_examples=60)
settings.load_profile("crypten_lite_unit")
