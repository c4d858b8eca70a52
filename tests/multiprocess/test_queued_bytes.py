"""``Config.max_queued_bytes`` (env ``CRYPTEN_LITE_MAX_QUEUED_BYTES``): the per-peer inbox bound
of the ZeroMQ communicator, set apart from the largest message size."""

from __future__ import annotations

import re

import pytest
import torch

import crypten_lite
from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import ConfigurationError, PartyFailedError
from crypten_lite.launcher.api import launch

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.filterwarnings("ignore:launch\\(dealer=False\\):RuntimeWarning"),
]


def test_the_field_reads_its_variable_and_defaults_to_the_message_bound() -> None:
    assert Config().queued_bytes_bound == Config().max_message_bytes
    assert Config(max_message_bytes=4096).queued_bytes_bound == 4096
    env = {"CRYPTEN_LITE_MAX_QUEUED_BYTES": str(1 << 20)}
    cfg = config_from_env(env)
    assert cfg.max_queued_bytes == cfg.queued_bytes_bound == 1 << 20
    assert config_from_env(cfg.to_env()) == cfg
    with pytest.raises(ConfigurationError, match="max_queued_bytes"):
        Config(max_queued_bytes=100)
    with pytest.raises(ConfigurationError, match="CRYPTEN_LITE_MAX_QUEUED_BYTES"):
        config_from_env({"CRYPTEN_LITE_MAX_QUEUED_BYTES": "lots"})


def flood() -> None:
    """Party 1 sends 8 messages of 512 KiB that party 0 has not asked for (it waits for
    party 2, who waits too): party 0 may hold only ``max_queued_bytes`` of them."""
    party = crypten_lite.get_party()
    if party.rank == 1:
        for _ in range(8):
            party.comm.send(0, torch.zeros(1 << 16, dtype=torch.int64), "flood")
    party.comm.recv(2 if party.rank == 0 else 0, "never.sent")


def test_the_configured_bound_applies_with_the_default_message_size() -> None:
    with pytest.raises(PartyFailedError) as info:
        launch(
            flood,
            3,
            dealer=False,
            config=Config(timeout_s=60.0, max_queued_bytes=1 << 20),
            timeout_s=120.0,
            quiet=True,
        )
    message = str(info.value)
    assert re.search(r"party 0: party 1 sent \d+ bytes ahead of the protocol", message), message
    assert f"bound of {1 << 20} bytes queued per peer" in message
