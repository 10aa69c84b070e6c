"""Settings that keep a misconfigured service from starting, or from messaging anyone."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import FAKE_IDENTIFIERS, PLACEHOLDER_SECRETS, Settings
from app.devtools.environment import notify_command
from app.fakes.credentials import (
    FAKE_IMO_PASSWORD,
    FAKE_IMO_USERNAME,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_WHATSAPP_ACCESS_TOKEN,
    FAKE_WHATSAPP_APP_SECRET,
    FAKE_WHATSAPP_PHONE_NUMBER_ID,
    FAKE_WHATSAPP_VERIFY_TOKEN,
)

PRODUCTION: dict[str, Any] = {
    "app_env": "production",
    "database_url": "postgresql+asyncpg://notify:pw@db:5432/notify",
    "redis_url": "redis://redis:6379/0",
    "public_base_url": "https://notify.example.org",
    "secret_key": "q7Vh2mX9pL4sK8dN3rT6wY1zB5cF0gJe-production",
    "imo_base_url": "https://sgp.imo.im/api/simple",
    "imo_username": "clinic",
    "imo_password": "a-real-imo-password",
    "twilio_account_sid": "AC" + "1" * 32,
    "twilio_auth_token": "a-real-twilio-token",
    "twilio_sms_from": "+15005550006",
    "whatsapp_phone_number_id": "106540352242922",
    "whatsapp_access_token": "a-real-whatsapp-token",
    "whatsapp_app_secret": "a-real-app-secret",
    "whatsapp_verify_token": "a-real-verify-token",
    "fake_providers": False,  # the test session sets FAKE_PROVIDERS=true
}
WHATSAPP_CLOUD = (
    "whatsapp_phone_number_id",
    "whatsapp_access_token",
    "whatsapp_app_secret",
    "whatsapp_verify_token",
)


def production(**changes: Any) -> Settings:
    return Settings(_env_file=None, **{**PRODUCTION, **changes})  # type: ignore[call-arg]


class TestProductionStartUp:
    def test_complete_settings_start(self) -> None:
        assert production().is_production

    @pytest.mark.parametrize(
        ("field", "value", "complaint"),
        [
            ("public_base_url", "", "PUBLIC_BASE_URL must be set"),
            ("secret_key", "", "SECRET_KEY is missing or a placeholder"),
            ("secret_key", "change-me", "SECRET_KEY is missing or a placeholder"),
            ("secret_key", "short-but-real", "SECRET_KEY must be at least 32 characters"),
            ("imo_password", " Change-Me ", "IMO_PASSWORD is missing or a placeholder"),
            ("imo_password", FAKE_IMO_PASSWORD, "IMO_PASSWORD is missing or a placeholder"),
            (
                "twilio_auth_token",
                FAKE_TWILIO_AUTH_TOKEN,
                "TWILIO_AUTH_TOKEN is missing or a placeholder",
            ),
            ("imo_username", "", "IMO_USERNAME must be set"),
            ("database_url", "", "DATABASE_URL must be set"),
            ("public_base_url", "http://notify.example.org", "must be an https:// URL"),
            ("public_base_url", "notify.example.org", "must be an https:// URL"),
            ("public_base_url", "https://", "must be an https:// URL"),
            ("secret_key", "a" * 32, "SECRET_KEY is not random"),
            ("secret_key", "abab" * 10, "SECRET_KEY is not random"),
            ("imo_username", FAKE_IMO_USERNAME, "IMO_USERNAME is the fake provider's"),
            (
                "twilio_account_sid",
                FAKE_TWILIO_ACCOUNT_SID,
                "TWILIO_ACCOUNT_SID is the fake provider's",
            ),
        ],
    )
    def test_missing_or_placeholder_values_are_refused(
        self, field: str, value: str, complaint: str
    ) -> None:
        with pytest.raises(ValidationError, match=complaint):
            production(**{field: value})

    @pytest.mark.parametrize(
        ("field", "value", "complaint"),
        [
            ("whatsapp_phone_number_id", "", "WHATSAPP_PHONE_NUMBER_ID must be set"),
            ("whatsapp_access_token", "", "WHATSAPP_ACCESS_TOKEN is missing or a placeholder"),
            (
                "whatsapp_app_secret",
                FAKE_WHATSAPP_APP_SECRET,
                "WHATSAPP_APP_SECRET is missing or a placeholder",
            ),
            ("whatsapp_verify_token", "", "WHATSAPP_VERIFY_TOKEN is missing or a placeholder"),
        ],
    )
    def test_a_chain_with_whatsapp_needs_its_credentials(
        self, field: str, value: str, complaint: str
    ) -> None:
        with pytest.raises(ValidationError, match=complaint):
            production(**{field: value})

    def test_no_chain_with_whatsapp_needs_no_whatsapp_credentials(self) -> None:
        chains = {"BD": ["imo", "sms"], "*": ["sms"]}
        settings = production(channel_chains=chains, **dict.fromkeys(WHATSAPP_CLOUD, ""))
        assert not settings.chains_use("whatsapp")

    def test_whatsapp_through_twilio_needs_a_sender_not_cloud_credentials(self) -> None:
        cloudless = dict.fromkeys(WHATSAPP_CLOUD, "")
        with pytest.raises(ValidationError, match="WHATSAPP_TWILIO_FROM must be set"):
            production(whatsapp_provider="twilio", **cloudless)
        settings = production(
            whatsapp_provider="twilio", whatsapp_twilio_from="+15005550006", **cloudless
        )
        assert settings.whatsapp_configured

    def test_the_fakes_credentials_are_placeholders(self) -> None:
        assert {
            FAKE_IMO_PASSWORD,
            FAKE_TWILIO_AUTH_TOKEN,
            FAKE_WHATSAPP_ACCESS_TOKEN,
            FAKE_WHATSAPP_APP_SECRET,
            FAKE_WHATSAPP_VERIFY_TOKEN,
        } <= PLACEHOLDER_SECRETS
        assert {
            FAKE_IMO_USERNAME,
            FAKE_TWILIO_ACCOUNT_SID,
            FAKE_WHATSAPP_PHONE_NUMBER_ID,
        } <= FAKE_IDENTIFIERS

    @pytest.mark.parametrize("command", ["api", "worker"])
    def test_the_processes_refuse_to_start(self, tmp_path: Path, command: str) -> None:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            **{name.upper(): str(value) for name, value in PRODUCTION.items()},
            "PUBLIC_BASE_URL": "",
            "TWILIO_AUTH_TOKEN": "change-me",
        }
        done = subprocess.run(
            notify_command(command),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 1, output
        assert "refusing to start" in output
        assert "PUBLIC_BASE_URL must be set" in output
        assert "TWILIO_AUTH_TOKEN is missing or a placeholder" in output
        assert "Traceback" not in output


class TestAllowedRecipients:
    def test_outside_production_only_listed_numbers_reach_a_real_provider(self) -> None:
        staging = Settings(
            app_env="staging", allowed_recipients="+8801711000004", fake_providers=False
        )
        assert staging.recipient_allowed("+8801711000004")
        assert not staging.recipient_allowed("+8801711000005")

    def test_a_provider_on_loopback_is_no_exception(self) -> None:
        # A staging box may reach real Twilio through a local proxy or tunnel.
        development = Settings(app_env="development", fake_providers=False)
        assert not development.recipient_allowed("+8801711000005")

    def test_only_the_explicit_fake_providers_lets_anyone_through(self) -> None:
        assert Settings(app_env="development", fake_providers=True).recipient_allowed(
            "+8801711000005"
        )
        with pytest.raises(ValidationError, match="FAKE_PROVIDERS must not be set"):
            production(fake_providers=True)

    def test_production_messages_everyone(self) -> None:
        assert production().recipient_allowed("+8801711000005")
