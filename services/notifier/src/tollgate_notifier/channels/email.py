"""Email over SMTP (aiosmtplib): plain text + HTML alternative, a Message-ID that is the same on
every retry (so a resend after a crash can be recognised), TLS and auth from settings."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from tollgate_notifier.channels.base import PermanentError, TransientError
from tollgate_notifier.render import Rendered
from tollgate_notifier.settings import NotifierSettings

# RFC 5322's hard line limit. The default (78) folds a long subject so that some parsers read
# it back with a leading space; 998 keeps subjects on one line and is still valid everywhere.
_POLICY = email.policy.SMTP.clone(max_line_length=998)

# An authentication failure is a configuration error an operator fixes; retrying until then
# delivers the backlog instead of dropping it.
_RETRYABLE_5XX = {530, 534, 535, 538}


class EmailSender:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    def build(self, to: str, rendered: Rendered, message_id: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.email_from
        msg["To"] = to
        msg["Subject"] = rendered.subject
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = message_id
        # Tells auto-responders and ticket systems not to answer an alert.
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        return msg

    async def send(self, to: str, rendered: Rendered, message_id: str) -> None:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        try:
            await aiosmtplib.send(
                # Flattened here: aiosmtplib would re-flatten with its own (folding) policy.
                self.build(to, rendered, message_id).as_bytes(policy=_POLICY),
                sender=parseaddr(s.email_from)[1],
                recipients=[to],
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=password,
                use_tls=s.smtp_tls == "implicit",
                start_tls=True if s.smtp_tls == "starttls" else False,
                validate_certs=s.smtp_validate_certs,
                timeout=s.smtp_timeout_s,
                # The default (socket.getfqdn) can block on reverse DNS for seconds.
                local_hostname=s.message_id_domain,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            if all(400 <= c < 500 for c in codes):
                raise TransientError(f"recipient deferred: {text}") from exc
            raise PermanentError(f"recipient refused: {text}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.code}: {exc.message}"
            if 500 <= exc.code < 600 and exc.code not in _RETRYABLE_5XX:
                raise PermanentError(detail) from exc
            raise TransientError(detail) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientError(f"SMTP {type(exc).__name__}: {exc}") from exc
