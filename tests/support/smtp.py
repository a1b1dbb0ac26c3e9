"""A tiny SMTP server on loopback for the alert tests: real sockets, real SMTP, no mocks.

It speaks enough of RFC 5321 for ``smtplib`` (EHLO/HELO, AUTH PLAIN and LOGIN, MAIL, RCPT, DATA,
RSET, NOOP, QUIT), requires authentication with the given login and password before MAIL, and
keeps each accepted message (parsed with :mod:`email`) with its envelope. Built on
:mod:`socketserver` (stdlib ``smtpd`` is deprecated, and has no AUTH; ``aiosmtpd`` is not a
dependency).
"""

from __future__ import annotations

import base64
import email
import email.policy
import socketserver
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Self


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage
    raw: str

    def body(self) -> str:
        """Every text part, decoded."""
        parts = self.message.walk() if self.message.is_multipart() else [self.message]
        return "\n".join(p.get_content() for p in parts if p.get_content_maintype() == "text")


@dataclass
class SmtpServer:
    """``with SmtpServer(login, password) as server:``; ``server.port``, ``server.messages``."""

    login: str
    password: str
    host: str = "127.0.0.1"
    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)

    def __enter__(self) -> Self:
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write((line + "\r\n").encode())

            def read(self) -> str | None:
                raw = self.rfile.readline(65536)
                return raw.decode("utf-8", "replace").rstrip("\r\n") if raw else None

            def check(self, user: str, secret: str) -> bool:
                ok = (user, secret) == (server.login, server.password)
                server.auth_attempts.append((user, ok))
                self.reply("235 2.7.0 Authentication successful" if ok else "535 5.7.8 Authentication failed")
                return ok

            def handle(self) -> None:
                self.reply("220 spindle-test ESMTP")
                authed, mail_from, rcpt = False, None, []
                while (line := self.read()) is not None:
                    verb, _, arg = line.partition(" ")
                    verb = verb.upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-spindle-test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
                    elif verb == "HELO":
                        self.reply("250 spindle-test")
                    elif verb == "AUTH":
                        mechanism, _, initial = arg.partition(" ")
                        if mechanism.upper() == "PLAIN":
                            if not initial:
                                self.reply("334 ")
                                initial = self.read() or ""
                            _, user, secret = base64.b64decode(initial).decode().split("\0")
                            authed = self.check(user, secret)
                        elif mechanism.upper() == "LOGIN":
                            user = base64.b64decode(initial).decode() if initial else None
                            if user is None:
                                self.reply("334 " + base64.b64encode(b"Username:").decode())
                                user = base64.b64decode(self.read() or "").decode()
                            self.reply("334 " + base64.b64encode(b"Password:").decode())
                            authed = self.check(user, base64.b64decode(self.read() or "").decode())
                        else:
                            self.reply("504 5.5.4 Unrecognized authentication type")
                    elif verb == "MAIL":
                        if not authed:
                            self.reply("530 5.7.0 Authentication required")
                            continue
                        mail_from, rcpt = arg.partition(":")[2].strip(" <>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        rcpt.append(arg.partition(":")[2].strip(" <>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        lines = []
                        while (data := self.read()) is not None and data != ".":
                            lines.append(data[1:] if data.startswith("..") else data)
                        raw = "\r\n".join(lines) + "\r\n"
                        message = email.message_from_string(raw, policy=email.policy.default)
                        server.messages.append(Received(mail_from or "", rcpt, message, raw))
                        self.reply("250 OK: queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:
                        self.reply("502 5.5.2 Command not recognized")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((self.host, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
