"""The fakes' well-known credentials and a Twilio magic test sender: they reach nobody.

The fake servers accept these by default; `notify dev`, the benchmarks and the tests give
them to the app. `app.config.PLACEHOLDER_SECRETS` refuses the secrets in production.
"""

from typing import Final

FAKE_IMO_USERNAME: Final = "fake-imo"
FAKE_IMO_PASSWORD: Final = "fake-imo-password"  # noqa: S105
FAKE_TWILIO_ACCOUNT_SID: Final = "ACfake00000000000000000000000000"
FAKE_TWILIO_AUTH_TOKEN: Final = "fake-twilio-token"  # noqa: S105
FAKE_TWILIO_SMS_FROM: Final = "+15005550006"
FAKE_WHATSAPP_PHONE_NUMBER_ID: Final = "100000000000001"
FAKE_WHATSAPP_ACCESS_TOKEN: Final = "fake-whatsapp-token"  # noqa: S105
FAKE_WHATSAPP_APP_SECRET: Final = "fake-whatsapp-app-secret"  # noqa: S105
FAKE_WHATSAPP_VERIFY_TOKEN: Final = "fake-whatsapp-verify-token"  # noqa: S105
