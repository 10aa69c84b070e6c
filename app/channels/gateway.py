"""The gateway phones' channel: sending is queueing for a phone, not a request.

The dispatcher hands a message to this adapter as to any other; the adapter answers at
once with a fresh message id and the status `queued`, and the dispatcher records the
attempt `sent` (handed to the channel) as it does for every provider. The attempt, with
no `gateway_state` yet, is then in the gateway queue: a phone's poll of
/gateway/api/sms claims it for that phone (app/gateways), and the phone's statuses come
back as reports on the attempt, as a provider's callbacks do: DELIVERED raises it,
FAILED falls back to the next channel of the chain. A phone that stops polling has its
messages taken back and failed the same way (the `gateway_offline` cron job).
"""

from __future__ import annotations

import uuid

from app.channels.base import ChannelName, OutgoingMessage, SendResult

QUEUED = "queued"


class GatewayQueueChannel:
    name = ChannelName.GATEWAY
    # No URL: the phones come to us (/gateway/api/sms).
    base_url = "gateway:"

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Queue `message` for the phones: the id is the one the phone reports back."""
        return SendResult(provider_message_id=str(uuid.uuid4()), provider_status=QUEUED)
