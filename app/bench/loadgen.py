"""A load generator in its own process: requests at the API, as fast as it can.

python -m app.bench.loadgen --mode MODE --api URL --first ID --count N [...]
- callbacks: attempts first..first+N-1; even ids get an Imo read receipt, odd ids a
  signed Twilio `delivered` (needs --secret, --twilio-token, --public-base).
- patients: N patients (ids first..) in `POST /v1/patients/batch` requests of --batch.
- notifications: one `POST /v1/notifications` for each of patients first..first+N-1.
Prints one JSON line: requests, items, seconds, rates, p50/p99 latency, non-2xx answers,
and the CPU seconds the generator itself used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

from app import callback_urls
from app.channels import twilio_signature
from app.config import Settings
from app.event_loop import new_event_loop
from app.security import TokenSigner

Request = tuple[str, bytes, dict[str, str]]


def build_requests(args: argparse.Namespace) -> list[Request]:
    """Every request, built (and signed) before the clock starts."""
    if args.mode == "patients":
        return patient_batches(args)
    if args.mode == "notifications":
        return notifications(args)
    return callbacks(args)


def _authorised(args: argparse.Namespace) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"}


def patient_batches(args: argparse.Namespace) -> list[Request]:
    requests = []
    for start in range(args.first, args.first + args.count, args.batch):
        stop = min(start + args.batch, args.first + args.count)
        patients = [
            {
                "id": f"s-{i}",
                "full_name": "Rahim Uddin",
                "country": "BD",
                "locale": "bn-BD",
                "phone_numbers": [{"number": f"+88017{i:07d}4", "type": "mobile"}],
                "facility": {"id": "f-12", "name": "Dhaka Medical"},
                "reminder_consent": "granted",
            }
            for i in range(start, stop)
        ]
        body = json.dumps({"patients": patients}).encode()
        requests.append((f"{args.api}/v1/patients/batch", body, _authorised(args)))
    return requests


def notifications(args: argparse.Namespace) -> list[Request]:
    return [
        (
            f"{args.api}/v1/notifications",
            json.dumps(
                {
                    "patient_id": f"s-{i}",
                    "purpose": "appointment_reminder",
                    "template": "appointment_reminder.basic",
                    "variables": {"appointment_date": "2026-12-01"},
                    "send_at": "2099-01-01T10:00:00+06:00",
                }
            ).encode(),
            _authorised(args),
        )
        for i in range(args.first, args.first + args.count)
    ]


def callbacks(args: argparse.Namespace) -> list[Request]:
    settings = Settings(public_base_url=args.public_base)
    signer = TokenSigner(args.secret)
    requests = []
    for attempt_id in range(args.first, args.first + args.count):
        if attempt_id % 2 == 0:
            url = callback_urls.imo_read_receipt_url(settings, signer, attempt_id)
            body = json.dumps({"event": "read_receipt", "post_id": f"post-{attempt_id}"})
            headers = {"Content-Type": "application/json"}
        else:
            url = callback_urls.twilio_status_url(settings, attempt_id)
            params = {
                "MessageSid": f"SM{attempt_id:032d}",
                "MessageStatus": "delivered",
                "AccountSid": "ACfake00000000000000000000000000",
            }
            body = "&".join(f"{k}={v}" for k, v in params.items())
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature.sign(args.twilio_token, url, params),
            }
        path = url.removeprefix(args.public_base)
        requests.append((args.api + path, body.encode(), headers))
    return requests


async def fire(requests: list[Request], concurrency: int, items: int) -> dict[str, object]:
    latencies: list[float] = []
    failures: dict[int, int] = {}
    position = 0

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal position
        while position < len(requests):
            url, body, headers = requests[position]
            position += 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status >= 300:
                    failures[response.status] = failures.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    return {
        "requests": len(requests),
        "items": items,
        "seconds": seconds,
        "rate": len(requests) / seconds,
        "items_rate": items / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "failures": failures,
        "cpu_seconds": cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--mode", choices=["callbacks", "patients", "notifications"], default="callbacks"
    )
    parser.add_argument("--api", required=True)
    for name in ("--secret", "--twilio-token", "--public-base", "--api-key"):
        parser.add_argument(name, default="")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    requests = build_requests(args)
    result = fire(requests, args.concurrency, args.count)
    print(json.dumps(new_event_loop().run_until_complete(result)))


if __name__ == "__main__":
    main()
