"""The physical limit to compare against: a bare aiohttp loop posting the same requests
to the same fake servers at the same concurrency. Run as its own process.

python -m app.bench.baseline --imo URL --twilio URL [--whatsapp URL --mix M] --requests N
--concurrency C prints one JSON line: {"requests": N, "seconds": s, "rate": r, "cpu_seconds": c}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import orjson

from app.channels.base import basic_auth
from app.event_loop import new_event_loop
from app.fakes.credentials import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_WHATSAPP_ACCESS_TOKEN,
    FAKE_WHATSAPP_PHONE_NUMBER_ID,
)


async def run(
    imo_url: str,
    twilio_url: str,
    requests: int,
    concurrency: int,
    whatsapp_url: str = "",
    mix: str = "imo-sms",
) -> dict[str, float]:
    imo_auth = basic_auth(FAKE_IMO_USERNAME, FAKE_IMO_PASSWORD)
    twilio_auth = basic_auth(FAKE_TWILIO_ACCOUNT_SID, FAKE_TWILIO_AUTH_TOKEN)
    messages_url = f"{twilio_url}/2010-04-01/Accounts/{FAKE_TWILIO_ACCOUNT_SID}/Messages.json"
    whatsapp_auth = f"Bearer {FAKE_WHATSAPP_ACCESS_TOKEN}"
    whatsapp_messages = f"{whatsapp_url}/v21.0/{FAKE_WHATSAPP_PHONE_NUMBER_ID}/messages"
    next_index = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        phone = f"+88017{i:07d}{3 if i % 2 == 0 else 4}"
        if mix == "whatsapp":
            values = [f"Patient {i}", "Dhaka Medical", "2026-12-01"]
            payload = {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": f"9198{i:07d}5",
                "biz_opaque_callback_data": str(i),
                "type": "template",
                "template": {
                    "name": "appointment_reminder",
                    "language": {"code": "en_US"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [{"type": "text", "text": v} for v in values],
                        }
                    ],
                },
            }
            headers = {"Authorization": whatsapp_auth, "Content-Type": "application/json"}
            async with session.post(
                whatsapp_messages, data=orjson.dumps(payload), headers=headers
            ) as r:
                await r.read()
        elif i % 2 == 0 and mix == "imo-sms":
            body = orjson.dumps(
                {
                    "phone": phone,
                    "msg": "Your next visit is on 2026-12-01.",
                    "title": "Reminder",
                    "contents": [{"key": "Message", "value": "Your next visit is on 2026-12-01."}],
                    "callback_url": "http://127.0.0.1:9/x",
                }
            )
            headers = {"Authorization": imo_auth, "Content-Type": "application/json"}
            async with session.post(
                f"{imo_url}/send_notification", data=body, headers=headers
            ) as r:
                await r.read()
        else:
            form = {
                "To": phone,
                "From": "+15005550006",
                "Body": "Your next visit is on 2026.",
                "StatusCallback": "http://127.0.0.1:9/x",
            }
            async with session.post(
                messages_url, data=form, headers={"Authorization": twilio_auth}
            ) as r:
                await r.read()

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            await one(session, i)

    # The adapters' own client settings: a connection limit and a per-request time-out.
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "cpu_seconds": cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imo", required=True)
    parser.add_argument("--twilio", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--whatsapp", default="")
    parser.add_argument("--mix", default="imo-sms", choices=["imo-sms", "sms", "whatsapp"])
    args = parser.parse_args()
    # The same event loop as the workers', so the ratio compares like with like.
    loop = new_event_loop()
    result = loop.run_until_complete(
        run(args.imo, args.twilio, args.requests, args.concurrency, args.whatsapp, args.mix)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
