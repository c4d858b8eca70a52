"""Layer L1: the runtime, layers L1 and L2 of the architecture (docs/ARCHITECTURE.md).

Everything below the cryptography and above the settings: the ring Z_2^64 and fixed-point
encoding (:mod:`.ring`, :mod:`.encoding`), the AES-CTR PRG and key agreement (:mod:`.prg`) are
L1; the frame header (:mod:`.wire`), the ``Communicator`` interface (:mod:`.comm`), the dealer
package (:mod:`.dealer`), the ``Party`` (:mod:`.party`) and the helper-dealer view of a 3-party
session (:mod:`.helper`) are L2. This package imports none of them: a reader of
``crypten_lite/`` sees the tensor and the user API beside one folder of machinery.
"""
