"""What the callers of an adapter (reminders, invitations) tell operators about a send
that failed: one home, so both report alike."""

from __future__ import annotations

import logging

import sentry_sdk

from app.channels.base import ChannelError, PermanentChannelError
from app.observability import report_template_rejected, report_unexpected

log = logging.getLogger(__name__)


def report_failure(provider: str, error: BaseException) -> None:
    """An answer outside the provider's vocabulary is counted, logged and sent to Sentry;
    an exception that is no ChannelError is a bug in our own code, logged with its
    traceback and sent to Sentry. Known refusals and transient failures are the caller's
    to record, not to report; but a template the provider refused (WhatsApp) fails every
    message of it, so Sentry hears of it once per template."""
    if isinstance(error, PermanentChannelError) and error.unexpected:
        report_unexpected(provider, error.message, error.detail)
    elif isinstance(error, PermanentChannelError) and error.template_rejected:
        report_template_rejected(provider, error.template_rejected, error.message)
    elif not isinstance(error, ChannelError):
        log.error("sending on %s raised %r", provider, type(error).__name__, exc_info=error)
        sentry_sdk.capture_exception(error)
