"""Who a patient's own opt-outs keep from being messaged, and on which channels. Pure."""

from __future__ import annotations

from collections.abc import Collection

from app.models.patient import EVERY_CHANNEL

# The failure reason of a notification a patient's opt-out stopped.
OPTED_OUT = "opted out"


def opted_out_everywhere(opted_out_channels: Collection[str]) -> bool:
    return EVERY_CHANNEL in opted_out_channels


def opted_out_of(opted_out_channels: Collection[str], channel: str) -> bool:
    return EVERY_CHANNEL in opted_out_channels or channel in opted_out_channels
