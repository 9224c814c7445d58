"""Signed webhooks: the node POSTs room, participant, track and agent-job events to a shop's
backend (sender.py, events.py); verify.py checks them on the receiving side."""

from .signing import sign_webhook
from .verify import WebhookVerificationError, verify_webhook

__all__ = ["WebhookVerificationError", "sign_webhook", "verify_webhook"]
